/* NEON kernels (AArch64) for float weights: the same tiled spmv and dot products as simd_x86.c, 4
 * lanes wide. The quantized types run on integers (qmatvec_neon.c). */
#if defined(__aarch64__)
#include <arm_neon.h>

#include "kernels.h"

#define ROW_OF(j) (idx ? idx[j] : (j))

static inline float h2f(uint16_t h) { return fp16_to_fp32(h); }

static void spmv_f32_neon(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, float *y,
                          int32_t c0, int32_t c1) {
    int32_t c = c0;
    for (; c + 32 <= c1; c += 32) {
        float32x4_t acc[8];
        for (int t = 0; t < 8; t++) acc[t] = vdupq_n_f32(0.0f);
        for (int32_t j = 0; j < k; j++) {
            const int32_t i = ROW_OF(j);
            const float *row = (const float *)lr_row(w, i) + c;
            for (int t = 0; t < 8; t++) acc[t] = vfmaq_n_f32(acc[t], vld1q_f32(row + 4 * t), x[i]);
        }
        for (int t = 0; t < 8; t++) vst1q_f32(y + c + 4 * t, acc[t]);
    }
    for (; c < c1; c++) {
        float s = 0.0f;
        for (int32_t j = 0; j < k; j++) s += x[ROW_OF(j)] * ((const float *)lr_row(w, ROW_OF(j)))[c];
        y[c] = s;
    }
}

static void spmv_f16_neon(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, float *y,
                          int32_t c0, int32_t c1) {
    int32_t c = c0;
    for (; c + 32 <= c1; c += 32) {
        float32x4_t acc[8];
        for (int t = 0; t < 8; t++) acc[t] = vdupq_n_f32(0.0f);
        for (int32_t j = 0; j < k; j++) {
            const int32_t i = ROW_OF(j);
            const float16_t *row = (const float16_t *)lr_row(w, i) + c;
            for (int t = 0; t < 4; t++) {
                const float16x8_t h = vld1q_f16(row + 8 * t);
                acc[2 * t] = vfmaq_n_f32(acc[2 * t], vcvt_f32_f16(vget_low_f16(h)), x[i]);
                acc[2 * t + 1] = vfmaq_n_f32(acc[2 * t + 1], vcvt_f32_f16(vget_high_f16(h)), x[i]);
            }
        }
        for (int t = 0; t < 8; t++) vst1q_f32(y + c + 4 * t, acc[t]);
    }
    for (; c < c1; c++) {
        float s = 0.0f;
        for (int32_t j = 0; j < k; j++) s += x[ROW_OF(j)] * h2f(((const uint16_t *)lr_row(w, ROW_OF(j)))[c]);
        y[c] = s;
    }
}

static void dot_f32_neon(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1) {
    for (int32_t r = r0; r < r1; r++) {
        const float *row = (const float *)lr_row(w, r);
        float32x4_t acc = vdupq_n_f32(0.0f);
        int32_t c = 0;
        for (; c + 4 <= w->cols; c += 4) acc = vfmaq_f32(acc, vld1q_f32(row + c), vld1q_f32(x + c));
        float s = vaddvq_f32(acc);
        for (; c < w->cols; c++) s += row[c] * x[c];
        y[r] = s;
    }
}

static void dot_f16_neon(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1) {
    for (int32_t r = r0; r < r1; r++) {
        const float16_t *row = (const float16_t *)lr_row(w, r);
        float32x4_t acc = vdupq_n_f32(0.0f);
        int32_t c = 0;
        for (; c + 4 <= w->cols; c += 4) acc = vfmaq_f32(acc, vcvt_f32_f16(vld1_f16(row + c)), vld1q_f32(x + c));
        float s = vaddvq_f32(acc);
        for (; c < w->cols; c++) s += h2f(((const uint16_t *)row)[c]) * x[c];
        y[r] = s;
    }
}

/* batch x panel: 2 rows of X at a time against the 32 panel columns (16 accumulators) */
static void gemm32_neon(const float *X, int32_t ldx, const float *P, int32_t K, float *C, int32_t ldc, int32_t n) {
    int32_t t = 0;
    for (; t + 2 <= n; t += 2) {
        float32x4_t a0[8], a1[8];
        for (int v = 0; v < 8; v++) a0[v] = a1[v] = vdupq_n_f32(0.0f);
        const float *x0 = X + (int64_t)t * ldx, *x1 = x0 + ldx;
        for (int32_t k = 0; k < K; k++) {
            for (int v = 0; v < 8; v++) {
                const float32x4_t p = vld1q_f32(P + (int64_t)k * QK + 4 * v);
                a0[v] = vfmaq_n_f32(a0[v], p, x0[k]);
                a1[v] = vfmaq_n_f32(a1[v], p, x1[k]);
            }
        }
        for (int v = 0; v < 8; v++) {
            vst1q_f32(C + (int64_t)t * ldc + 4 * v, a0[v]);
            vst1q_f32(C + (int64_t)(t + 1) * ldc + 4 * v, a1[v]);
        }
    }
    for (; t < n; t++) {
        float32x4_t a[8];
        for (int v = 0; v < 8; v++) a[v] = vdupq_n_f32(0.0f);
        const float *x = X + (int64_t)t * ldx;
        for (int32_t k = 0; k < K; k++)
            for (int v = 0; v < 8; v++) a[v] = vfmaq_n_f32(a[v], vld1q_f32(P + (int64_t)k * QK + 4 * v), x[k]);
        for (int v = 0; v < 8; v++) vst1q_f32(C + (int64_t)t * ldc + 4 * v, a[v]);
    }
}

/* panels (prefill): P[k][0:32] = W[k][c0:c0+32] as floats */
static void panel_f32_neon(const lr_tensor *w, int32_t c0, float *P) {
    for (int32_t k = 0; k < w->rows; k++) memcpy(P + (int64_t)k * QK, (const float *)lr_row(w, k) + c0, QK * sizeof(float));
}

static void panel_f16_neon(const lr_tensor *w, int32_t c0, float *P) {
    for (int32_t k = 0; k < w->rows; k++) {
        const uint16_t *row = (const uint16_t *)lr_row(w, k) + c0;
        for (int j = 0; j < QK; j++) P[(int64_t)k * QK + j] = h2f(row[j]);
    }
}

const lr_kernel_table lr_kernels_neon = {
    {spmv_f32_neon, spmv_f16_neon},
    {dot_f32_neon, dot_f16_neon},
    gemm32_neon,
    {panel_f32_neon, panel_f16_neon},
};

#endif

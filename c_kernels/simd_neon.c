/* NEON kernels (AArch64): the same tiled spmv and dot products as simd_x86.c, 4 lanes wide. */
#if defined(__aarch64__)
#include <arm_neon.h>

#include "kernels.h"

#define ROW_OF(j) (idx ? idx[j] : (j))

static inline float h2f(uint16_t h) { return fp16_to_fp32(h); }

/* a 32-value block as eight 4-wide vectors */
static inline void q8_neon(const block_q8_0 *b, float32x4_t v[8]) {
    for (int t = 0; t < 2; t++) {
        const int8x16_t q = vld1q_s8(b->qs + 16 * t);
        const int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_s8(vget_high_s8(q));
        v[4 * t + 0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
        v[4 * t + 1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo)));
        v[4 * t + 2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
        v[4 * t + 3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi)));
    }
}

static inline void q4_neon(const block_q4_0 *b, float32x4_t v[8]) {
    const uint8x16_t q = vld1q_u8(b->qs);
    const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f))), vdupq_n_s8(8));
    const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), vdupq_n_s8(8));
    const int8x16_t parts[2] = {lo, hi};
    for (int t = 0; t < 2; t++) {
        const int16x8_t a = vmovl_s8(vget_low_s8(parts[t])), c = vmovl_s8(vget_high_s8(parts[t]));
        v[4 * t + 0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(a)));
        v[4 * t + 1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(a)));
        v[4 * t + 2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(c)));
        v[4 * t + 3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(c)));
    }
}

/* quantized spmv: one block (32 columns, 8 accumulators) per tile */
#define SPMV_Q_NEON(NAME, BLOCK, DECODE)                                                           \
    static void NAME(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, float *y,  \
                     int32_t c0, int32_t c1) {                                                     \
        for (int32_t b = c0 / QK; b < c1 / QK; b++) {                                              \
            float32x4_t acc[8];                                                                    \
            for (int t = 0; t < 8; t++) acc[t] = vdupq_n_f32(0.0f);                                \
            for (int32_t j = 0; j < k; j++) {                                                      \
                const int32_t i = ROW_OF(j);                                                       \
                const BLOCK *bl = (const BLOCK *)lr_row(w, i) + b;                                 \
                const float s = x[i] * h2f(bl->d);                                                 \
                float32x4_t v[8];                                                                  \
                DECODE(bl, v);                                                                     \
                for (int t = 0; t < 8; t++) acc[t] = vfmaq_n_f32(acc[t], v[t], s);                 \
            }                                                                                      \
            for (int t = 0; t < 8; t++) vst1q_f32(y + (int64_t)b * QK + 4 * t, acc[t]);            \
        }                                                                                          \
    }
SPMV_Q_NEON(spmv_q8_0_neon, block_q8_0, q8_neon)
SPMV_Q_NEON(spmv_q4_0_neon, block_q4_0, q4_neon)

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

#define DOT_Q_NEON(NAME, BLOCK, DECODE)                                                            \
    static void NAME(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1) {       \
        for (int32_t r = r0; r < r1; r++) {                                                        \
            const BLOCK *b = (const BLOCK *)lr_row(w, r);                                          \
            float32x4_t acc = vdupq_n_f32(0.0f);                                                   \
            for (int32_t blk = 0; blk < w->cols / QK; blk++) {                                     \
                float32x4_t v[8], s = vdupq_n_f32(0.0f);                                           \
                DECODE(&b[blk], v);                                                                \
                for (int t = 0; t < 8; t++) s = vfmaq_f32(s, v[t], vld1q_f32(x + blk * QK + 4 * t)); \
                acc = vfmaq_n_f32(acc, s, h2f(b[blk].d));                                          \
            }                                                                                      \
            y[r] = vaddvq_f32(acc);                                                                \
        }                                                                                          \
    }
DOT_Q_NEON(dot_q8_0_neon, block_q8_0, q8_neon)
DOT_Q_NEON(dot_q4_0_neon, block_q4_0, q4_neon)

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
#define PANEL_Q_NEON(NAME, BLOCK, DECODE)                                                          \
    static void NAME(const lr_tensor *w, int32_t c0, float *P) {                                   \
        for (int32_t k = 0; k < w->rows; k++) {                                                    \
            const BLOCK *b = (const BLOCK *)lr_row(w, k) + c0 / QK;                                \
            const float d = h2f(b->d);                                                             \
            float32x4_t v[8];                                                                      \
            DECODE(b, v);                                                                          \
            for (int t = 0; t < 8; t++) vst1q_f32(P + (int64_t)k * QK + 4 * t, vmulq_n_f32(v[t], d)); \
        }                                                                                          \
    }
PANEL_Q_NEON(panel_q8_0_neon, block_q8_0, q8_neon)
PANEL_Q_NEON(panel_q4_0_neon, block_q4_0, q4_neon)

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
    {spmv_f32_neon, spmv_f16_neon, spmv_q8_0_neon, spmv_q4_0_neon},
    {dot_f32_neon, dot_f16_neon, dot_q8_0_neon, dot_q4_0_neon},
    gemm32_neon,
    {panel_f32_neon, panel_f16_neon, panel_q8_0_neon, panel_q4_0_neon},
};

#endif

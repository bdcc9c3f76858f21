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

const lr_kernel_table lr_kernels_neon = {
    {spmv_f32_neon, spmv_f16_neon, spmv_q8_0_neon, spmv_q4_0_neon},
    {dot_f32_neon, dot_f16_neon, dot_q8_0_neon, dot_q4_0_neon},
};

#endif

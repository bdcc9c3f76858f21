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

/* ---- attention (kernels.h's order: the 16 lanes as four vectors of 4) ------------------------ */

static inline float32x4_t kv4_f32_neon(const uint8_t *row, int32_t i) { return vld1q_f32((const float *)row + i); }
static inline float32x4_t kv4_f16_neon(const uint8_t *row, int32_t i) {
    return vcvt_f32_f16(vld1_f16((const float16_t *)row + i));
}
static inline float kv1_f32_neon(const uint8_t *row, int32_t i) { return ((const float *)row)[i]; }
static inline float kv1_f16_neon(const uint8_t *row, int32_t i) { return h2f(((const uint16_t *)row)[i]); }

/* lanes 0-3, 4-7, 8-11, 12-15 -> one float: 16 -> 8 -> 4 -> 2 -> 1 */
static inline float hsum16_neon(const float32x4_t *a) {
    const float32x4_t b0 = vaddq_f32(a[0], a[2]), b1 = vaddq_f32(a[1], a[3]);   /* s[j] += s[j + 8] */
    const float32x4_t c = vaddq_f32(b0, b1);                                     /* s[j] += s[j + 4] */
    const float32x2_t d = vadd_f32(vget_low_f32(c), vget_high_f32(c));           /* s[j] += s[j + 2] */
    return vget_lane_f32(d, 0) + vget_lane_f32(d, 1);
}

#define ATTN_SCORES_NEON(NAME, LD4, LD1)                                                           \
    static void NAME(const void *qv, const uint8_t *k, size_t stride, int32_t n, int32_t hd, float scale, float *att) { \
        const float *q = qv;                                                                       \
        const int32_t hd16 = hd & ~15;                                                             \
        int32_t t = 0;                                                                             \
        for (; t + 2 <= n; t += 2) {   /* 2 positions per pass (8 accumulators) */                 \
            const uint8_t *r0 = k + (size_t)t * stride, *r1 = r0 + stride;                         \
            float32x4_t a0[4], a1[4];                                                              \
            for (int j = 0; j < 4; j++) a0[j] = a1[j] = vdupq_n_f32(0.0f);                         \
            for (int32_t i = 0; i < hd16; i += 16)                                                 \
                for (int j = 0; j < 4; j++) {                                                      \
                    const float32x4_t qj = vld1q_f32(q + i + 4 * j);                               \
                    a0[j] = vfmaq_f32(a0[j], qj, LD4(r0, i + 4 * j));                              \
                    a1[j] = vfmaq_f32(a1[j], qj, LD4(r1, i + 4 * j));                              \
                }                                                                                  \
            float s0 = hsum16_neon(a0), s1 = hsum16_neon(a1);                                      \
            for (int32_t i = hd16; i < hd; i++) s0 = fmaf(q[i], LD1(r0, i), s0), s1 = fmaf(q[i], LD1(r1, i), s1); \
            att[t] = s0 * scale, att[t + 1] = s1 * scale;                                          \
        }                                                                                          \
        for (; t < n; t++) {                                                                       \
            const uint8_t *r = k + (size_t)t * stride;                                             \
            float32x4_t a[4];                                                                      \
            for (int j = 0; j < 4; j++) a[j] = vdupq_n_f32(0.0f);                                  \
            for (int32_t i = 0; i < hd16; i += 16)                                                 \
                for (int j = 0; j < 4; j++) a[j] = vfmaq_f32(a[j], vld1q_f32(q + i + 4 * j), LD4(r, i + 4 * j)); \
            float s = hsum16_neon(a);                                                              \
            for (int32_t i = hd16; i < hd; i++) s = fmaf(q[i], LD1(r, i), s);                      \
            att[t] = s * scale;                                                                    \
        }                                                                                          \
    }
ATTN_SCORES_NEON(attn_scores_f32_neon, kv4_f32_neon, kv1_f32_neon)
ATTN_SCORES_NEON(attn_scores_f16_neon, kv4_f16_neon, kv1_f16_neon)

/* the exact int32 sum of one Q8_0 block's 32 products (int16 products, pairwise into int32) */
static inline int32_t dot32_i8_neon(const int8_t *a, const int8_t *b) {
    const int8x16_t x0 = vld1q_s8(a), x1 = vld1q_s8(a + 16), y0 = vld1q_s8(b), y1 = vld1q_s8(b + 16);
    int32x4_t s = vpaddlq_s16(vmull_s8(vget_low_s8(x0), vget_low_s8(y0)));
    s = vpadalq_s16(s, vmull_s8(vget_high_s8(x0), vget_high_s8(y0)));
    s = vpadalq_s16(s, vmull_s8(vget_low_s8(x1), vget_low_s8(y1)));
    s = vpadalq_s16(s, vmull_s8(vget_high_s8(x1), vget_high_s8(y1)));
    return vaddvq_s32(s);
}

static void attn_scores_q8_0_neon(const void *qv, const uint8_t *k, size_t stride, int32_t n, int32_t hd,
                                  float scale, float *att) {
    const block_q8_0 *qb = qv;
    for (int32_t t = 0; t < n; t++) {
        const block_q8_0 *kb = (const block_q8_0 *)(k + (size_t)t * stride);
        float s = 0.0f;
        for (int32_t b = 0; b < hd / QK; b++)
            s = fmaf(h2f(qb[b].d) * h2f(kb[b].d), (float)dot32_i8_neon(qb[b].qs, kb[b].qs), s);
        att[t] = s * scale;
    }
}

static inline float32x4_t vsum4_neon(float32x4_t o, const float *w, const float32x4_t *v) {
    return vaddq_f32(o, vaddq_f32(vfmaq_n_f32(vmulq_n_f32(v[0], w[0]), v[1], w[1]),
                                  vfmaq_n_f32(vmulq_n_f32(v[2], w[2]), v[3], w[3])));
}

#define ATTN_VALUES_NEON(NAME, LD4, LD1)                                                           \
    static void NAME(const float *w, const uint8_t *v, size_t stride, int32_t n, int32_t hd, float *out) { \
        const int32_t hd4 = hd & ~3;                                                               \
        for (int32_t i = 0; i < hd; i++) out[i] = 0.0f;                                            \
        int32_t t = 0;                                                                             \
        for (; t + 4 <= n; t += 4) {                                                               \
            const uint8_t *r[4];                                                                   \
            for (int u = 0; u < 4; u++) r[u] = v + (size_t)(t + u) * stride;                       \
            for (int32_t i = 0; i < hd4; i += 4) {                                                 \
                float32x4_t x[4];                                                                  \
                for (int u = 0; u < 4; u++) x[u] = LD4(r[u], i);                                   \
                vst1q_f32(out + i, vsum4_neon(vld1q_f32(out + i), w + t, x));                      \
            }                                                                                      \
            for (int32_t i = hd4; i < hd; i++)                                                     \
                out[i] += fmaf(w[t + 1], LD1(r[1], i), w[t] * LD1(r[0], i)) +                      \
                          fmaf(w[t + 3], LD1(r[3], i), w[t + 2] * LD1(r[2], i));                   \
        }                                                                                          \
        for (; t < n; t++) {                                                                       \
            const uint8_t *r = v + (size_t)t * stride;                                             \
            for (int32_t i = 0; i < hd4; i += 4) vst1q_f32(out + i, vfmaq_n_f32(vld1q_f32(out + i), LD4(r, i), w[t])); \
            for (int32_t i = hd4; i < hd; i++) out[i] = fmaf(w[t], LD1(r, i), out[i]);             \
        }                                                                                          \
    }
ATTN_VALUES_NEON(attn_values_f32_neon, kv4_f32_neon, kv1_f32_neon)
ATTN_VALUES_NEON(attn_values_f16_neon, kv4_f16_neon, kv1_f16_neon)

/* 16 codes as four float vectors */
static inline void codes16_neon(const int8_t *c, float32x4_t *x) {
    const int8x16_t b = vld1q_s8(c);
    const int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_s8(vget_high_s8(b));
    x[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
    x[1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo)));
    x[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
    x[3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi)));
}

static void attn_values_q8_0_neon(const float *w, const uint8_t *v, size_t stride, int32_t n, int32_t hd, float *out) {
    for (int32_t i = 0; i < hd; i++) out[i] = 0.0f;
    int32_t t = 0;
    for (; t + 4 <= n; t += 4) {
        const block_q8_0 *r[4];
        for (int u = 0; u < 4; u++) r[u] = (const block_q8_0 *)(v + (size_t)(t + u) * stride);
        for (int32_t b = 0; b < hd / QK; b++) {
            float wb[4];
            for (int u = 0; u < 4; u++) wb[u] = w[t + u] * h2f(r[u][b].d);
            for (int j = 0; j < QK; j += 16) {
                float32x4_t x[4][4];   /* [position][4 lanes of 16 codes] */
                for (int u = 0; u < 4; u++) codes16_neon(r[u][b].qs + j, x[u]);
                float *o = out + (size_t)b * QK + j;
                for (int l = 0; l < 4; l++) {
                    const float32x4_t xl[4] = {x[0][l], x[1][l], x[2][l], x[3][l]};
                    vst1q_f32(o + 4 * l, vsum4_neon(vld1q_f32(o + 4 * l), wb, xl));
                }
            }
        }
    }
    for (; t < n; t++) {
        const block_q8_0 *r = (const block_q8_0 *)(v + (size_t)t * stride);
        for (int32_t b = 0; b < hd / QK; b++) {
            const float wt = w[t] * h2f(r[b].d);
            for (int j = 0; j < QK; j += 16) {
                float32x4_t x[4];
                codes16_neon(r[b].qs + j, x);
                float *o = out + (size_t)b * QK + j;
                for (int l = 0; l < 4; l++) vst1q_f32(o + 4 * l, vfmaq_n_f32(vld1q_f32(o + 4 * l), x[l], wt));
            }
        }
    }
}

/* Top-K passes (topk.c) on 4 keys at a time; NEON has no compress: a mask's kept lanes come from a
 * table of byte shuffles (vqtbl1q_u8), one per 4-bit mask */
static const uint8_t lanes_of_mask[16][16] = {
#define L(a, b, c, d) {4 * a, 4 * a + 1, 4 * a + 2, 4 * a + 3, 4 * b, 4 * b + 1, 4 * b + 2, 4 * b + 3,   \
                       4 * c, 4 * c + 1, 4 * c + 2, 4 * c + 3, 4 * d, 4 * d + 1, 4 * d + 2, 4 * d + 3}
    L(0, 0, 0, 0), L(0, 0, 0, 0), L(1, 0, 0, 0), L(0, 1, 0, 0), L(2, 0, 0, 0), L(0, 2, 0, 0), L(1, 2, 0, 0),
    L(0, 1, 2, 0), L(3, 0, 0, 0), L(0, 3, 0, 0), L(1, 3, 0, 0), L(0, 1, 3, 0), L(2, 3, 0, 0), L(0, 2, 3, 0),
    L(1, 2, 3, 0), L(0, 1, 2, 3),
#undef L
};

static inline uint32_t mask_of(uint32x4_t m) {   /* lane i's compare result -> bit i */
    static const uint32_t bit[4] = {1, 2, 4, 8};
    return vaddvq_u32(vandq_u32(m, vld1q_u32(bit)));
}

static inline uint32x4_t compress_neon(uint32x4_t v, uint32_t m) {
    return vreinterpretq_u32_u8(vqtbl1q_u8(vreinterpretq_u8_u32(v), vld1q_u8(lanes_of_mask[m])));
}

static uint32_t keys_neon(const float *x, int32_t n, uint32_t *u) {
    const uint32x4_t abs = vdupq_n_u32(0x7fffffffu);
    uint32x4_t mx = vdupq_n_u32(0);
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint32x4_t v = vandq_u32(vreinterpretq_u32_f32(vld1q_f32(x + i)), abs);
        vst1q_u32(u + i, v);
        mx = vmaxq_u32(mx, v);
    }
    uint32_t m = vmaxvq_u32(mx);
    return lr_topk_keys_tail(x, i, n, u, m);
}

static int32_t count_gt_neon(const uint32_t *u, int32_t n, uint32_t t) {
    const uint32x4_t tv = vdupq_n_u32(t);
    uint32x4_t a0 = vdupq_n_u32(0), a1 = a0;   /* a true compare is all ones: subtract it */
    int32_t i = 0, c = 0;
    for (; i + 8 <= n; i += 8) {
        a0 = vsubq_u32(a0, vcgtq_u32(vld1q_u32(u + i), tv));
        a1 = vsubq_u32(a1, vcgtq_u32(vld1q_u32(u + i + 4), tv));
    }
    for (; i < n; i++) c += u[i] > t;
    return c + (int32_t)vaddvq_u32(vaddq_u32(a0, a1));
}

static int32_t gather_neon(const uint32_t *u, int32_t n, uint32_t lo, uint32_t hi, uint32_t *cand) {
    const uint32x4_t lov = vdupq_n_u32(lo), hiv = vdupq_n_u32(hi);
    int32_t m = 0, i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint32x4_t v = vld1q_u32(u + i);
        const uint32_t k = mask_of(vandq_u32(vcgtq_u32(v, lov), vcleq_u32(v, hiv)));
        vst1q_u32(cand + m, compress_neon(v, k));
        m += __builtin_popcount(k);
    }
    return lr_topk_gather_tail(u, i, n, lo, hi, cand, m);
}

static int32_t take_neon(const uint32_t *u, int32_t n, uint32_t t, int32_t *idx) {
    const uint32x4_t tv = vdupq_n_u32(t), step = vdupq_n_u32(4);
    static const uint32_t first[4] = {0, 1, 2, 3};
    uint32x4_t iv = vld1q_u32(first);
    int32_t out = 0, i = 0;
    for (; i + 4 <= n; i += 4, iv = vaddq_u32(iv, step)) {
        const uint32_t k = mask_of(vcgeq_u32(vld1q_u32(u + i), tv));
        vst1q_u32((uint32_t *)idx + out, compress_neon(iv, k));
        out += __builtin_popcount(k);
    }
    return lr_topk_take_tail(u, i, n, t, idx, out);
}

static const lr_topk_ops topk_ops_neon = {keys_neon, count_gt_neon, gather_neon, take_neon};

static int32_t topk_neon(const float *x, int32_t n, int32_t k, int32_t *idx, uint32_t *scratch) {
    return lr_topk_bracket(x, n, k, idx, scratch, &topk_ops_neon);
}

const lr_kernel_table lr_kernels_neon = {
    {spmv_f32_neon, spmv_f16_neon},
    {dot_f32_neon, dot_f16_neon},
    {attn_scores_f32_neon, attn_scores_f16_neon, attn_scores_q8_0_neon},
    {attn_values_f32_neon, attn_values_f16_neon, attn_values_q8_0_neon},
    topk_neon,
};

#endif

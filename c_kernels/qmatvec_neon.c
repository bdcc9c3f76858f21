/* Integer kernels for AArch64: SDOT (FEAT_DotProd: 4 s8 x s8 products per int32 lane) where the CPU
 * has it, else baseline NEON (SMULL / SMLAL into int16, widened into int32). Each mirrors a
 * reference in qmatvec.c and gives bit-identical results: the integer sums are exact and the float
 * steps run in the reference's order (the scale product d * dx is rounded before the fma).
 *
 * Input-major matvec (qspmv): the selected inputs of a group are taken 4 rows at a time (8 per pass
 * while 8 are left); for SDOT the 4 rows' codes are interleaved byte-wise (zip 8, then 16 bits), so
 * that each int32 lane holds one output's 4 products. NEON's zips work across the whole register,
 * so the lanes come out in column order and need no unshuffle. The int32 accumulators of the
 * thread's columns stay in L1 (acc) until the group is flushed into y. Software prefetch brings
 * the next pass's rows into L2 (each selected row starts a new stream).
 * Q8 codes are signed bytes as SDOT wants them; Q4 codes are taken as stored (q + 8, 0..15) and
 * 8 sum(xq) is taken off after. The fallback's int16 partial sums hold two products:
 * |q x| <= 128 * 127, so two fit in 2 * 16256 < 32768.
 *
 * The SDOT functions are compiled for armv8.2-a+dotprod through a target attribute, so the file
 * still builds for plain armv8-a; lr_neon_dotprod() picks the path at run time (HWCAP_ASIMDDP on
 * Linux, every arm64 Mac has it), and LAROSA_NO_DOTPROD=1 forces the fallback (tests).
 */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <stdlib.h>
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

#include "kernels.h"

/* GCC's arch= replaces the build's extensions: the helpers (and kernels.h's) are inlined into the
 * SDOT kernels only when their target is a subset, so fp16 is kept where the build has it */
#if defined(__ARM_FEATURE_DOTPROD)
#define DOTPROD                 /* the whole build targets it */
#elif defined(__clang__)
#define DOTPROD __attribute__((target("dotprod")))
#elif defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
#define DOTPROD __attribute__((target("arch=armv8.2-a+fp16+dotprod")))
#else
#define DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
#define BASE
#define PREFETCH(p) __builtin_prefetch((p), 0, 2)   /* into L2 */

/* 1 when the integer kernels use SDOT: the CPU has it and LAROSA_NO_DOTPROD is not set (read once) */
int lr_neon_dotprod(void);
int lr_neon_dotprod(void) {
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v >= 0) return v;
    const char *env = getenv("LAROSA_NO_DOTPROD");
    if (env && *env && strcmp(env, "0")) v = 0;
#if defined(__APPLE__)
    else v = 1;
#elif defined(__linux__)
    else v = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__ARM_FEATURE_DOTPROD)
    else v = 1;
#else
    else v = 0;
#endif
    __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    return v;
}

/* ---- shared pieces ----------------------------------------------------------------------------- */

/* codes of a row: v[0] = columns c + 16 h .. +15, v[1] = columns c + 32 + 16 h .. +15 (h = 0, 1).
 * Q4 stores column c + i (i < 32) in the low nibble of byte i of the chunk, c + 32 + i in its high one. */
static inline void ld_q8(const uint8_t *row, int32_t c, int h, int8x16_t v[2]) {
    v[0] = vld1q_s8((const int8_t *)row + c + 16 * h);
    v[1] = vld1q_s8((const int8_t *)row + c + 32 + 16 * h);
}
static inline void ld_q4(const uint8_t *row, int32_t c, int h, int8x16_t v[2]) {
    const uint8x16_t b = vld1q_u8(row + c / 2 + 16 * h);
    v[0] = vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0f)));
    v[1] = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
}

/* y[0..15] = fma(float(a), d * dx, y), a[t] = exact sums of columns 4 t .. 4 t + 3 */
static inline void flush16(const int32x4_t a[4], const uint16_t *d, float32x4_t dxv, float *y) {
    for (int t = 0; t < 4; t++) {
        const float32x4_t s = vmulq_f32(vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(d + 4 * t))), dxv);
        vst1q_f32(y + 4 * t, vfmaq_f32(vld1q_f32(y + 4 * t), vcvtq_f32_s32(a[t]), s));
    }
}

/* Four rows a, b, c, d of 16 columns against xv (their 4 codes in every int32 lane), in two steps
 * so that the prompt path can prepare the rows once per batch: prep_* puts the rows in the form
 * mac_* takes, mac_* adds the products into acc[t] = columns 4 t .. 4 t + 3. */

/* SDOT: bytes a_i b_i c_i d_i of column i in int32 lane i (v[t] = columns 4 t .. 4 t + 3) */
DOTPROD static inline void prep_dot(int8x16_t a, int8x16_t b, int8x16_t c, int8x16_t d, int8x16_t v[4]) {
    const int16x8_t ab_lo = vreinterpretq_s16_s8(vzip1q_s8(a, b)), ab_hi = vreinterpretq_s16_s8(vzip2q_s8(a, b));
    const int16x8_t cd_lo = vreinterpretq_s16_s8(vzip1q_s8(c, d)), cd_hi = vreinterpretq_s16_s8(vzip2q_s8(c, d));
    v[0] = vreinterpretq_s8_s16(vzip1q_s16(ab_lo, cd_lo));
    v[1] = vreinterpretq_s8_s16(vzip2q_s16(ab_lo, cd_lo));
    v[2] = vreinterpretq_s8_s16(vzip1q_s16(ab_hi, cd_hi));
    v[3] = vreinterpretq_s8_s16(vzip2q_s16(ab_hi, cd_hi));
}
DOTPROD static inline void mac_dot(const int8x16_t v[4], int8x16_t xv, int32x4_t acc[4]) {
    for (int t = 0; t < 4; t++) acc[t] = vdotq_s32(acc[t], v[t], xv);
}

/* baseline: the rows as they are; a x0 + b x1 and c x2 + d x3 in int16, widened into acc */
static inline void prep_raw(int8x16_t a, int8x16_t b, int8x16_t c, int8x16_t d, int8x16_t v[4]) {
    v[0] = a, v[1] = b, v[2] = c, v[3] = d;
}
static inline void mac_mull(const int8x16_t v[4], int8x16_t xv, int32x4_t acc[4]) {
    const int8x16_t x0 = vdupq_laneq_s8(xv, 0), x1 = vdupq_laneq_s8(xv, 1);
    const int8x16_t x2 = vdupq_laneq_s8(xv, 2), x3 = vdupq_laneq_s8(xv, 3);
    const int16x8_t ab_lo = vmlal_s8(vmull_s8(vget_low_s8(v[0]), vget_low_s8(x0)), vget_low_s8(v[1]), vget_low_s8(x1));
    const int16x8_t cd_lo = vmlal_s8(vmull_s8(vget_low_s8(v[2]), vget_low_s8(x2)), vget_low_s8(v[3]), vget_low_s8(x3));
    const int16x8_t ab_hi = vmlal_high_s8(vmull_high_s8(v[0], x0), v[1], x1);
    const int16x8_t cd_hi = vmlal_high_s8(vmull_high_s8(v[2], x2), v[3], x3);
    acc[0] = vaddw_s16(vaddw_s16(acc[0], vget_low_s16(ab_lo)), vget_low_s16(cd_lo));
    acc[1] = vaddw_high_s16(vaddw_high_s16(acc[1], ab_lo), cd_lo);
    acc[2] = vaddw_s16(vaddw_s16(acc[2], vget_low_s16(ab_hi)), vget_low_s16(cd_hi));
    acc[3] = vaddw_high_s16(vaddw_high_s16(acc[3], ab_hi), cd_hi);
}

/* ---- input-major matvec: y[c0:c1] for one token ------------------------------------------------ */

#define QSPMV(ATTR, NAME, LOAD, PREP, MAC, RB, OFF)                                                \
    ATTR static void NAME(const lr_tensor *w, const lr_qsel *s, float *y, int32_t c0, int32_t c1,  \
                          int32_t *acc) {                                                          \
        const uint8_t *codes = w->data;                                                            \
        const int64_t ld = (int64_t)w->cols * RB / 2;   /* bytes per row */                       \
        const int32_t nch = (c1 - c0) / 64, end = s->start[s->n_groups];                           \
        for (int32_t c = c0; c < c1; c += 4) vst1q_f32(y + c, vdupq_n_f32(0.0f));                  \
        for (int32_t gi = 0; gi < s->n_groups; gi++) {                                             \
            const int32_t j0 = s->start[gi], j1 = s->start[gi + 1];                                \
            const uint16_t *dg = (const uint16_t *)w->scale + (int64_t)s->group[gi] * w->cols;     \
            /* accumulators start at -OFF sum(xq), the code offset's share (exact in int32) */     \
            const int32x4_t ncorr = vdupq_n_s32(-OFF * s->sx[gi]);                                 \
            const float32x4_t dxv = vdupq_n_f32(s->dx[gi]);                                        \
            for (int32_t j = j0; j < j1;) {                                                        \
                const int32_t nr = j1 - j >= 8 ? 8 : 4;   /* rows this pass */                     \
                /* the next pass's rows (the groups' entries follow each other, whole quads) */    \
                const int32_t jn = j + nr, np = end - jn < 8 ? end - jn : 8;                       \
                const uint8_t *r[8], *p[8];                                                        \
                for (int u = 0; u < nr; u++) r[u] = codes + s->row[j + u] * ld;                    \
                for (int u = 0; u < np; u++) p[u] = codes + s->row[jn + u] * ld;                   \
                int32_t xw[2] = {0, 0};                                                            \
                memcpy(&xw[0], s->xq + j, 4);                                                      \
                if (nr == 8) memcpy(&xw[1], s->xq + j + 4, 4);                                     \
                const int8x16_t xv0 = vreinterpretq_s8_s32(vdupq_n_s32(xw[0]));                    \
                const int8x16_t xv1 = vreinterpretq_s8_s32(vdupq_n_s32(xw[1]));                    \
                const int first = j == j0, last = j + nr == j1;                                    \
                for (int32_t ch = 0; ch < nch; ch++) {                                             \
                    const int32_t c = c0 + 64 * ch;                                                \
                    if (RB == 2 || !(ch & 1))                                                      \
                        for (int u = 0; u < np; u++) PREFETCH(p[u] + c * RB / 2);                  \
                    if (first) PREFETCH(dg + c), PREFETCH(dg + c + 32);   /* the flush's scales */ \
                    for (int h = 0; h < 2; h++) {   /* columns 16 h .. and 32 + 16 h .. */          \
                        int32_t *A[2] = {acc + 64 * ch + 16 * h, acc + 64 * ch + 32 + 16 * h};     \
                        int32x4_t a[2][4];                                                         \
                        for (int e = 0; e < 2; e++)                                                \
                            for (int t = 0; t < 4; t++)                                            \
                                a[e][t] = first ? ncorr : vld1q_s32(A[e] + 4 * t);                 \
                        for (int q = 0; q < nr; q += 4) {                                          \
                            int8x16_t v[4][2], m[4];                                               \
                            for (int u = 0; u < 4; u++) LOAD(r[q + u], c, h, v[u]);                \
                            for (int e = 0; e < 2; e++) {                                          \
                                PREP(v[0][e], v[1][e], v[2][e], v[3][e], m);                       \
                                MAC(m, q ? xv1 : xv0, a[e]);                                       \
                            }                                                                      \
                        }                                                                          \
                        for (int e = 0; e < 2; e++)   /* the last pass flushes from the registers */ \
                            if (last) flush16(a[e], dg + c + 16 * h + 32 * e, dxv, y + c + 16 * h + 32 * e); \
                            else for (int t = 0; t < 4; t++) vst1q_s32(A[e] + 4 * t, a[e][t]);     \
                    }                                                                              \
                }                                                                                  \
                j += nr;                                                                           \
            }                                                                                      \
        }                                                                                          \
    }
QSPMV(DOTPROD, qspmv_q8_dot, ld_q8, prep_dot, mac_dot, 2, 0)
QSPMV(DOTPROD, qspmv_q4_dot, ld_q4, prep_dot, mac_dot, 1, 8)
QSPMV(BASE, qspmv_q8_base, ld_q8, prep_raw, mac_mull, 2, 0)
QSPMV(BASE, qspmv_q4_base, ld_q4, prep_raw, mac_mull, 1, 8)

/* ---- batched (prompt): Y[t][c0:c1] for the tokens of b --------------------------------------------
 * Per 64-column chunk, each group's 32 rows are prepared once into a panel (8 quads x 4 sixteens of
 * columns x 4 vectors, 2 KiB of scratch) and every token that selected any input of the group
 * multiplies it (the weights are read once per batch); flushed per token straight into Y. */
#define QGEMM(ATTR, NAME, LOAD, PREP, MAC, RB, OFF)                                                \
    ATTR static void NAME(const lr_tensor *w, const lr_qbatch *b, float *Y, int32_t ldy, int32_t c0, \
                          int32_t c1, void *scratch) {                                             \
        const uint8_t *codes = w->data;                                                            \
        const int64_t ld = (int64_t)w->cols * RB / 2;                                              \
        const int32_t G = w->rows / QK, n = b->n;                                                  \
        int8x16_t(*panel)[4][4] = scratch;           /* [8 quads][4 sixteens][4] */                \
        for (int32_t c = c0; c < c1; c += 64) {                                                    \
            for (int32_t tk = 0; tk < n; tk++)                                                     \
                for (int t = 0; t < 16; t++) vst1q_f32(Y + (int64_t)tk * ldy + c + 4 * t, vdupq_n_f32(0.0f)); \
            for (int32_t g = b->g0; g < b->g1; g++) {                                              \
                const uint8_t *r = codes + (int64_t)g * QK * ld;                                   \
                for (int q = 0; q < 8; q++)                                                        \
                    for (int h = 0; h < 2; h++) {                                                  \
                        int8x16_t v[4][2];                                                         \
                        for (int u = 0; u < 4; u++) LOAD(r + (4 * q + u) * ld, c, h, v[u]);        \
                        PREP(v[0][0], v[1][0], v[2][0], v[3][0], panel[q][h]);                     \
                        PREP(v[0][1], v[1][1], v[2][1], v[3][1], panel[q][h + 2]);                 \
                    }                                                                              \
                if (g + 1 < b->g1)                                                                 \
                    for (int i = 0; i < QK; i++) PREFETCH(r + (QK + i) * ld + c * RB / 2);         \
                const uint16_t *dg = (const uint16_t *)w->scale + (int64_t)g * w->cols + c;        \
                for (int32_t tk = 0; tk < n; tk++) {                                               \
                    if (!b->has[(int64_t)tk * G + g]) continue;                                    \
                    const int8_t *xq = b->xq + (int64_t)tk * w->rows + g * QK;                     \
                    int32x4_t a[4][4];   /* [sixteen][4 columns] */                                \
                    const int32x4_t ncorr = vdupq_n_s32(-OFF * b->sx[(int64_t)tk * G + g]);        \
                    for (int h = 0; h < 4; h++)                                                    \
                        for (int t = 0; t < 4; t++) a[h][t] = ncorr;                               \
                    for (int q = 0; q < 8; q++) {                                                  \
                        int32_t xw;                                                                \
                        memcpy(&xw, xq + 4 * q, 4);                                                \
                        const int8x16_t xv = vreinterpretq_s8_s32(vdupq_n_s32(xw));                \
                        for (int h = 0; h < 4; h++) MAC(panel[q][h], xv, a[h]);                    \
                    }                                                                              \
                    const float32x4_t dxv = vdupq_n_f32(b->dx[(int64_t)tk * G + g]);               \
                    for (int h = 0; h < 4; h++)                                                    \
                        flush16(a[h], dg + 16 * h, dxv, Y + (int64_t)tk * ldy + c + 16 * h); \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }
QGEMM(DOTPROD, qgemm_q8_dot, ld_q8, prep_dot, mac_dot, 2, 0)
QGEMM(DOTPROD, qgemm_q4_dot, ld_q4, prep_dot, mac_dot, 1, 8)
QGEMM(BASE, qgemm_q8_base, ld_q8, prep_raw, mac_mull, 2, 0)
QGEMM(BASE, qgemm_q4_base, ld_q4, prep_raw, mac_mull, 1, 8)

/* ---- output-major rows (the head): the reference's eight lanes as two float32x4 ---------------- */

/* the 32 signed codes of a block: q[0] = codes 0..15, q[1] = 16..31 (x->sx may be NULL: no offset) */
static inline void blk_q8(const void *b, int8x16_t q[2]) {
    q[0] = vld1q_s8(((const block_q8_0 *)b)->qs);
    q[1] = vld1q_s8(((const block_q8_0 *)b)->qs + 16);
}
static inline void blk_q4(const void *b, int8x16_t q[2]) {
    const uint8x16_t v = vld1q_u8(((const block_q4_0 *)b)->qs);
    q[0] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))), vdupq_n_s8(8));
    q[1] = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), vdupq_n_s8(8));
}

/* int32 lane l = the 4 products of bytes 4 l .. 4 l + 3 */
DOTPROD static inline int32x4_t dot4_dot(int8x16_t q, int8x16_t x) { return vdotq_s32(vdupq_n_s32(0), q, x); }
static inline int32x4_t dot4_mull(int8x16_t q, int8x16_t x) {
    const int16x8_t lo = vmull_s8(vget_low_s8(q), vget_low_s8(x)), hi = vmull_high_s8(q, x);
    return vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi));
}

/* y[r]: per block the exact integer sum, then one fma per block (the reference's order, qmatvec.c) */
#define QDOT(ATTR, NAME, BLOCK, DECODE, DOT4)                                                      \
    ATTR static void NAME(const lr_tensor *w, const lr_qx *x, float *y, int32_t r0, int32_t r1) {  \
        const int32_t nb = w->cols / QK;                                                           \
        for (int32_t r = r0; r < r1; r++) {                                                        \
            const BLOCK *b = (const BLOCK *)lr_row(w, r);                                          \
            float acc = 0.0f;                                                                      \
            for (int32_t blk = 0; blk < nb; blk++) {                                               \
                int8x16_t q[2];                                                                    \
                DECODE(&b[blk], q);                                                                \
                const int8_t *xq = x->xq + (int64_t)blk * QK;                                      \
                const int32_t isum = vaddvq_s32(vaddq_s32(DOT4(q[0], vld1q_s8(xq)), DOT4(q[1], vld1q_s8(xq + 16)))); \
                acc = fmaf((float)isum, fp16_to_fp32(b[blk].d) * x->dx[blk], acc);                 \
            }                                                                                      \
            y[r] = acc;                                                                            \
        }                                                                                          \
    }
QDOT(DOTPROD, qdot_q8_dot, block_q8_0, blk_q8, dot4_dot)
QDOT(DOTPROD, qdot_q4_dot, block_q4_0, blk_q4, dot4_dot)
QDOT(BASE, qdot_q8_base, block_q8_0, blk_q8, dot4_mull)
QDOT(BASE, qdot_q4_base, block_q4_0, blk_q4, dot4_mull)

/* ---- the table: each entry takes the SDOT kernel or the baseline one ------------------------------ */

static void qspmv_q8(const lr_tensor *w, const lr_qsel *s, float *y, int32_t c0, int32_t c1, int32_t *acc) {
    (lr_neon_dotprod() ? qspmv_q8_dot : qspmv_q8_base)(w, s, y, c0, c1, acc);
}
static void qspmv_q4(const lr_tensor *w, const lr_qsel *s, float *y, int32_t c0, int32_t c1, int32_t *acc) {
    (lr_neon_dotprod() ? qspmv_q4_dot : qspmv_q4_base)(w, s, y, c0, c1, acc);
}
static void qgemm_q8(const lr_tensor *w, const lr_qbatch *b, float *Y, int32_t ldy, int32_t c0, int32_t c1,
                     void *scratch) {
    (lr_neon_dotprod() ? qgemm_q8_dot : qgemm_q8_base)(w, b, Y, ldy, c0, c1, scratch);
}
static void qgemm_q4(const lr_tensor *w, const lr_qbatch *b, float *Y, int32_t ldy, int32_t c0, int32_t c1,
                     void *scratch) {
    (lr_neon_dotprod() ? qgemm_q4_dot : qgemm_q4_base)(w, b, Y, ldy, c0, c1, scratch);
}
static void qdot_q8(const lr_tensor *w, const lr_qx *x, float *y, int32_t r0, int32_t r1) {
    (lr_neon_dotprod() ? qdot_q8_dot : qdot_q8_base)(w, x, y, r0, r1);
}
static void qdot_q4(const lr_tensor *w, const lr_qx *x, float *y, int32_t r0, int32_t r1) {
    (lr_neon_dotprod() ? qdot_q4_dot : qdot_q4_base)(w, x, y, r0, r1);
}

const lr_qkernel_table lr_qkernels_neon = {
    {qspmv_q8, qspmv_q4},
    {qgemm_q8, qgemm_q4},
    {qdot_q8, qdot_q4},
    {NULL, NULL},   /* the head as stored (not measured on ARM: no machine here) */
};

#endif

/* Internal kernel interface: the scalar reference kernels and the SIMD tables that mirror them. */
#ifndef LAROSA_KERNELS_H
#define LAROSA_KERNELS_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "larosa.h"

#define QK 32                      /* ggml's block size for Q8_0 and Q4_0 */
#define LR_QGEMM_TOKENS 64         /* most tokens of one lr_qbatch (model.h's LR_BATCH) */
typedef struct { uint16_t d; int8_t qs[QK]; } block_q8_0;        /* 34 bytes */
typedef struct { uint16_t d; uint8_t qs[QK / 2]; } block_q4_0;   /* 18 bytes: lo nibbles 0..15, hi 16..31 */

static inline float fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {                       /* subnormal: normalize */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* bytes of one row of n values (the _IM types: codes only, their scales are apart) */
static inline uint64_t lr_row_bytes(int32_t type, int64_t n) {
    switch (type) {
    case LR_F32: return (uint64_t)n * 4;
    case LR_F16: return (uint64_t)n * 2;
    case LR_Q8_0: return (uint64_t)(n / QK) * sizeof(block_q8_0);
    case LR_Q4_0: return (uint64_t)(n / QK) * sizeof(block_q4_0);
    case LR_Q8_0_IM: return (uint64_t)n;
    case LR_Q4_0_IM: return (uint64_t)n / 2;
    default: return 0;
    }
}

/* e^x in plain float steps that vectorize (libm's expf does not; it was most of the attention's
 * time): Cephes' expf, x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for e^r, times 2^n;
 * about 1 ulp. x is clamped to [-87, 88]: e^-87 ~ 1.6e-38 (negligible next to the softmax maximum's
 * e^0 = 1), e^88 ~ 1.7e38. NaN stays NaN. */
static inline float lr_expf(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    const float n = nearbyintf(x * 1.44269504088896341f);
    float r = fmaf(n, -0.693359375f, x);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r) + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* SiLU (SwiGLU's gate) g sigma(g) = g / (1 + e^-g), one definition for the decode step and the
 * prompt path (their products must round alike). libm's correctly rounded expf, not lr_expf: with
 * lr_expf's 1 ulp the CATS keys (|silu(gate)| against a threshold) flipped enough selections
 * against the torch reference to move SmolLM2's perplexity at s = 0.6 by 6 % (test_quality) */
static inline float lr_silu(float g) { return g / (1.0f + expf(-g)); }


static inline int lr_is_im(int32_t type) { return type == LR_Q8_0_IM || type == LR_Q4_0_IM; }

static inline const uint8_t *lr_row(const lr_tensor *w, int64_t r) {
    return (const uint8_t *)w->data + (uint64_t)r * lr_row_bytes(w->type, w->cols);
}

/* q[i][c] of an _IM weight (FORMAT.md): Q8_0 the int8 code; Q4_0 the nibble of output c of its
 * 64-output run (low: c % 64 < 32), minus 8 */
static inline int32_t lr_im_code(const lr_tensor *w, int64_t i, int32_t c) {
    const uint8_t *row = lr_row(w, i);
    if (w->type == LR_Q8_0_IM) return ((const int8_t *)row)[c];
    const uint8_t b = row[c / 64 * 32 + c % 32];
    return (int32_t)(c % 64 < 32 ? b & 0x0f : b >> 4) - 8;
}

/* y[c0:c1] = sum_j x[idx[j]] * W[idx[j], c0:c1] over j < k (idx NULL: all rows, x dense).
 * c0, c1 multiples of 32 (or c1 = cols). */
typedef void (*spmv_fn)(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k,
                        float *y, int32_t c0, int32_t c1);
/* y[r] = W[r, :] . x for r in [r0, r1) */
typedef void (*dot_rows_fn)(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1);


/* ---- attention over the KV cache (forward.c's lr_attend_head) ------------------------------ *
 * One kv head's n cached positions, each row hd values of the cache type (F32, F16, Q8_0: hd / 32
 * ggml blocks along the head dimension), rows `stride` bytes apart. Every level adds in the order
 * written here, so a score or output has the same bits at every SIMD level:
 * - scores, F32 / F16: s[j] = sum over i = j (mod 16), i < hd16 = hd & ~15, ascending, of
 *   fma(q[i], k[i], s[j]); then s[j] += s[j + 8], s[j] += s[j + 4], s[j] += s[j + 2] (j below the
 *   step), s = s[0] + s[1]; then s = fma(q[i], k[i], s) for the tail i >= hd16; att = s * scale.
 * - scores, Q8_0: q as Q8_0 blocks (lr_kv_quantize); per block b in order, s = fma(dq_b dk_b,
 *   (float) sum of the 32 int8 products, s) from s = 0 (the sums are exact); att = s * scale.
 * - values: out[i] = 0, then per 4 positions t..t+3 (t = 0, 4, ...; while t + 4 <= n)
 *   out[i] += fma(w1, v1[i], w0 v0[i]) + fma(w3, v3[i], w2 v2[i]), then out[i] = fma(w_t, v_t[i],
 *   out[i]) for the last n % 4. Q8_0: w_t is w[t] times the block's scale and v_t[i] the code. */
typedef void (*attn_scores_fn)(const void *q, const uint8_t *k, size_t stride, int32_t n, int32_t hd, float scale,
                               float *att);
typedef void (*attn_values_fn)(const float *w, const uint8_t *v, size_t stride, int32_t n, int32_t hd, float *out);

/* KV cache types: slot 0 (F32), 1 (F16), 2 (Q8_0); -1 for any other type */
static inline int lr_kv_slot(int32_t type) {
    return type == LR_F32 ? 0 : type == LR_F16 ? 1 : type == LR_Q8_0 ? 2 : -1;
}

/* f32 -> f16, rounded to nearest even (F16C's rule): overflow to inf, NaN stays NaN (quiet) */
static inline uint16_t fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));   /* NaN */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);   /* >= 65520: inf (and inf itself) */
    if (ax < 0x38800000u) {                                    /* below 2^-14: subnormal or zero */
        if (ax < 0x33000000u) return (uint16_t)sign;           /* <= 2^-25: rounds to zero */
        const uint32_t e = ax >> 23, mant = (ax & 0x7fffff) | 0x800000, shift = 126 - e;   /* 14..24 */
        uint32_t h = mant >> shift;
        const uint32_t rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        h += rest > half || (rest == half && (h & 1));
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((ax >> 13) - (112u << 10)), rest = ax & 0x1fff;   /* rebias 127 -> 15 */
    h += rest > 0x1000 || (rest == 0x1000 && (h & 1));           /* a carry into the exponent is right */
    return (uint16_t)(sign | h);
}

/* ggml's CPU GELU (ggml-cpu vec.h with GGML_GELU_FP16, which llama.cpp's GeGLU uses): a table over
 * the 65536 half-precision inputs of 0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))) in float
 * with libm's tanhf, each rounded to half; 0 for x <= -10, x for x >= 10. lr_gelu_table() builds it
 * on first use (the torch reference builds the same table: converter/model.py gelu_tanh_ggml). */
const float *lr_gelu_table(void);
static inline float lr_gelu_tanh(const float *table, float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return table[fp32_to_fp16(x)];
}

/* Exact Top-K of |x[0..n)| (k of them, ties to the lower index), indices ascending into idx
 * (room for n); scratch: LR_TOPK_SCRATCH(n) uint32. Returns how many were taken (k, or n when
 * k >= n). The scalar table's is the reference lr_topk_impl, the others lr_topk_bracket (topk.c)
 * with their own vector passes. */
typedef int32_t (*topk_fn)(const float *x, int32_t n, int32_t k, int32_t *idx, uint32_t *scratch);
#define LR_TOPK_SCRATCH(n) (2 * (size_t)(n) + 16)

/* the passes of lr_topk_bracket: keys (|x| as bit patterns into u, returns the largest), the
 * count of keys above t, the keys in (lo, hi] gathered into cand (returns how many), the indices
 * of the keys >= t (ascending; returns how many). Each writes within n entries of its output
 * (a vector form stores whole vectors past the last entry it counts). */
typedef struct {
    uint32_t (*keys)(const float *x, int32_t n, uint32_t *u);
    int32_t (*count_gt)(const uint32_t *u, int32_t n, uint32_t t);
    int32_t (*gather)(const uint32_t *u, int32_t n, uint32_t lo, uint32_t hi, uint32_t *cand);
    int32_t (*take)(const uint32_t *u, int32_t n, uint32_t t, int32_t *idx);
} lr_topk_ops;
int32_t lr_topk_bracket(const float *x, int32_t n, int32_t k, int32_t *idx, uint32_t *scratch,
                        const lr_topk_ops *ops);
/* the passes' scalar tails, from key i to n (after the whole vectors) */
static inline uint32_t lr_topk_keys_tail(const float *x, int32_t i, int32_t n, uint32_t *u, uint32_t mx) {
    for (; i < n; i++) {
        uint32_t v;
        memcpy(&v, x + i, 4);
        u[i] = v & 0x7fffffffu;
        mx = u[i] > mx ? u[i] : mx;
    }
    return mx;
}
static inline int32_t lr_topk_gather_tail(const uint32_t *u, int32_t i, int32_t n, uint32_t lo, uint32_t hi,
                                          uint32_t *cand, int32_t m) {
    for (; i < n; i++) {
        cand[m] = u[i];
        m += (u[i] > lo) & (u[i] <= hi);
    }
    return m;
}
static inline int32_t lr_topk_take_tail(const uint32_t *u, int32_t i, int32_t n, uint32_t t, int32_t *idx,
                                        int32_t out) {
    for (; i < n; i++) {
        idx[out] = i;
        out += u[i] >= t;
    }
    return out;
}

typedef struct {
    spmv_fn spmv[2];          /* by lr_type_slot(): float weights */
    dot_rows_fn dot_rows[2];
    attn_scores_fn attn_scores[3];   /* by lr_kv_slot() */
    attn_values_fn attn_values[3];
    topk_fn topk;
} lr_kernel_table;

/* float types: slot 0 (F32), 1 (F16); integer kernels: slot 0 (Q8_0, Q8_0_IM), 1 (Q4_0, Q4_0_IM) */
static inline int lr_type_slot(int32_t type) {
    switch (type) {
    case LR_F32: case LR_Q8_0: case LR_Q8_0_IM: return 0;
    case LR_F16: case LR_Q4_0: case LR_Q4_0_IM: return 1;
    default: return -1;
    }
}

/* ---- integer kernels (qmatvec.c): 8-bit activations ------------------------------------------ */

/* x of one matvec over an input-major _IM weight, quantized (lr_qsel_build): the selected inputs
 * grouped by group of 32 inputs g (inputs 32 g .. 32 g + 31), ascending, each group's entries
 * padded with zero codes to a multiple of 4. dx[g] = max |x_i| over the group's selected inputs
 * / 127 (NaN when one is not finite), xq = round-half-even(x_i / dx). Capacity: n + 3 n / 32 + 4
 * entries, n / 32 + 1 groups (lr_qsel_entries). */
typedef struct {
    int32_t n_groups;
    int32_t *group;   /* [n_groups] g */
    int32_t *start;   /* [n_groups + 1] offsets into row, xq */
    float *dx;        /* [n_groups] */
    int32_t *sx;      /* [n_groups] sum of the group's xq */
    int32_t *row;     /* input index (padding repeats the group's last one) */
    int8_t *xq;
} lr_qsel;
/* one allocation holding s's arrays for up to n inputs (free() it); NULL when out of memory */
void *lr_qsel_new(int32_t n, lr_qsel *s);
/* s = the k inputs idx (ascending; NULL: all k = n) of x; returns the number of groups */
int32_t lr_qsel_build(const float *x, const int32_t *idx, int32_t k, lr_qsel *s);

/* a batch of tokens over an _IM weight of `rows` inputs (the prompt path): token t's xq[t][rows]
 * (zero at the inputs it did not select) and, per group, dx[t][g], sx[t][g] and has[t][g] (1 where
 * it selected any input of g), each group quantized as lr_qsel_build does; a product adds the
 * groups g0 <= g < g1 (all: 0, rows / 32) */
typedef struct {
    int32_t n, g0, g1;
    int8_t *xq;
    float *dx;
    int32_t *sx;
    uint8_t *has;
} lr_qbatch;
/* one allocation for a batch of up to n tokens over `rows` inputs (free() it); b->n = n */
void *lr_qbatch_new(int32_t n, int32_t rows, lr_qbatch *b);
/* token t of b: x (rows values) over the inputs with mask[i] != 0 */
void lr_qbatch_row(lr_qbatch *b, int32_t t, int32_t rows, const float *x, const uint8_t *mask);

/* x of an output-major Q8_0 / Q4_0 product (the head): blocks of 32 along the columns; sx (the
 * blocks' sums of codes) is required by the x86 qdot / qdot8 kernels (Q4_0's code offset, Q8_0's
 * flipped codes in qdot8), which lr_head_rows and lr_dot_rows pass */
typedef struct { const int8_t *xq; const float *dx; const int32_t *sx; } lr_qx;
/* xq, dx (and sx, if not NULL) of n / 32 blocks of 32 values */
void lr_quantize_blocks(const float *x, int32_t n, int8_t *xq, float *dx, int32_t *sx);

/* y[c0:c1] (multiples of 64) for one token; acc: c1 - c0 int32 of 64-byte aligned scratch */
typedef void (*qspmv_fn)(const lr_tensor *w, const lr_qsel *s, float *y, int32_t c0, int32_t c1, int32_t *acc);
/* Y[t][c0:c1] for the tokens of b; scratch: lr_qgemm_scratch(w) bytes, 64-byte aligned */
typedef void (*qgemm_fn)(const lr_tensor *w, const lr_qbatch *b, float *Y, int32_t ldy, int32_t c0, int32_t c1,
                         void *scratch);
/* y[r] = W[r, :] . x for r in [r0, r1) */
typedef void (*qdot_fn)(const lr_tensor *w, const lr_qx *x, float *y, int32_t r0, int32_t r1);
/* the same sums for rows [8 g0, 8 g1) of w read from w8, its rows repacked 8 at a time (lr_repack_x8) */
typedef void (*qdot8_fn)(const lr_tensor *w, const void *w8, const lr_qx *x, float *y, int32_t g0, int32_t g1);
static inline int64_t lr_qgemm_scratch(int32_t cols) { return (int64_t)LR_QGEMM_TOKENS * cols * 4 + 4096 * 4; }

typedef struct {
    qspmv_fn qspmv[2];        /* by lr_type_slot() */
    qgemm_fn qgemm[2];
    qdot_fn qdot[2];
    qdot8_fn qdot8[2];        /* NULL: the level reads the head as stored */
} lr_qkernel_table;

/* The first rows / 8 * 8 rows of an output-major Q8_0 / Q4_0 w, 8 rows side by side: for group g
 * of 8 rows and block b, at ((g nb + b) 8) block bytes of dst, the 8 rows' fp16 scales (16 bytes),
 * then the 8 rows' codes as stored (16 bytes each for Q4_0, 32 for Q8_0); lr_x8_bytes(w) in all.
 * The head read this way is one stream whose 8 rows' integer sums reduce into one vector, scaled by
 * the 8 scales in one load and one fma (one row at a time waits on its chain of fma, and two rows
 * as two streams starved the hardware prefetchers). */
void lr_repack_x8(const lr_tensor *w, void *dst);
static inline uint64_t lr_x8_bytes(const lr_tensor *w) {
    return (uint64_t)(w->rows / 8 * 8) * lr_row_bytes(w->type, w->cols);
}

extern const lr_kernel_table lr_kernels_scalar;
extern const lr_qkernel_table lr_qkernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const lr_kernel_table lr_kernels_avx2;
extern const lr_kernel_table lr_kernels_avx512;
#endif
#if defined(__aarch64__)
extern const lr_kernel_table lr_kernels_neon;
#endif
#if defined(__x86_64__) || defined(_M_X64)
extern const lr_qkernel_table lr_qkernels_avx2;
extern const lr_qkernel_table lr_qkernels_avx512vnni;
int lr_cpu_has_vnni(void);
#endif
#if defined(__aarch64__)
extern const lr_qkernel_table lr_qkernels_neon;
int lr_neon_dotprod(void);   /* the SDOT kernels run (FEAT_DotProd, unless LAROSA_NO_DOTPROD=1) */
#endif
const lr_kernel_table *lr_kernels(void);   /* the table of the current SIMD level */
const lr_qkernel_table *lr_qkernels(void);

int32_t lr_tensor_check(const lr_tensor *w, int32_t rows, int32_t cols, int f32_only);
void lr_dequant_row(const lr_tensor *w, int64_t r, float *out);
int32_t lr_topk_impl(const float *x, int32_t n, int32_t k, int32_t *idx, uint32_t *scratch);
/* n values (n % 32 == 0 for Q8_0) as one row of the KV cache type: F32 copied, F16 rounded to
 * nearest even, Q8_0 as ggml quantizes (per block d = max |x| / 127 stored as f16, codes
 * round(x / d) half away from zero, in [-127, 127]; a non-finite value gives a non-finite d) */
void lr_kv_quantize(int32_t type, const float *x, int32_t n, void *out);

#endif

/* Scalar reference kernels (always compiled: the portable path and the oracle of the SIMD ones),
 * the SIMD dispatch, Top-K, and the checked public kernel entry points. */
#include <stdlib.h>

#include "kernels.h"

/* ---- input-major sparse matvec: y[c0:c1] = sum_j x[i_j] W[i_j, c0:c1] ------------------------ */

#define ROW_OF(j) (idx ? idx[j] : (j))

static void spmv_f32(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, float *y,
                     int32_t c0, int32_t c1) {
    for (int32_t c = c0; c < c1; c++) y[c] = 0.0f;
    for (int32_t j = 0; j < k; j++) {
        const int32_t i = ROW_OF(j);
        const float a = x[i], *row = (const float *)lr_row(w, i);
        for (int32_t c = c0; c < c1; c++) y[c] += a * row[c];
    }
}

static void spmv_f16(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, float *y,
                     int32_t c0, int32_t c1) {
    for (int32_t c = c0; c < c1; c++) y[c] = 0.0f;
    for (int32_t j = 0; j < k; j++) {
        const int32_t i = ROW_OF(j);
        const float a = x[i];
        const uint16_t *row = (const uint16_t *)lr_row(w, i);
        for (int32_t c = c0; c < c1; c++) y[c] += a * fp16_to_fp32(row[c]);
    }
}

/* ---- output-major dot products: y[r] = W[r, :] . x ------------------------------------------ */

static void dot_f32(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1) {
    for (int32_t r = r0; r < r1; r++) {
        const float *row = (const float *)lr_row(w, r);
        float s = 0.0f;
        for (int32_t c = 0; c < w->cols; c++) s += row[c] * x[c];
        y[r] = s;
    }
}

static void dot_f16(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1) {
    for (int32_t r = r0; r < r1; r++) {
        const uint16_t *row = (const uint16_t *)lr_row(w, r);
        float s = 0.0f;
        for (int32_t c = 0; c < w->cols; c++) s += fp16_to_fp32(row[c]) * x[c];
        y[r] = s;
    }
}

/* ---- attention over the KV cache, in the order kernels.h defines --------------------------- */

static inline float kv_f32(const uint8_t *row, int32_t i) {
    float f;
    memcpy(&f, row + 4 * (size_t)i, 4);
    return f;
}
static inline float kv_f16(const uint8_t *row, int32_t i) {
    uint16_t h;
    memcpy(&h, row + 2 * (size_t)i, 2);
    return fp16_to_fp32(h);
}

/* q . k over hd values in the 16-lane order (ld: one k value as a float) */
#define ATTN_DOT(NAME, LD)                                                                         \
    static float NAME(const float *q, const uint8_t *k, int32_t hd) {                              \
        float s[16] = {0};                                                                         \
        const int32_t hd16 = hd & ~15;                                                             \
        for (int32_t i = 0; i < hd16; i++) s[i % 16] = fmaf(q[i], LD(k, i), s[i % 16]);            \
        for (int step = 8; step >= 2; step /= 2)                                                   \
            for (int j = 0; j < step; j++) s[j] += s[j + step];                                    \
        float r = s[0] + s[1];                                                                     \
        for (int32_t i = hd16; i < hd; i++) r = fmaf(q[i], LD(k, i), r);                           \
        return r;                                                                                  \
    }
ATTN_DOT(attn_dot_f32, kv_f32)
ATTN_DOT(attn_dot_f16, kv_f16)

static void attn_scores_f32(const void *q, const uint8_t *k, size_t stride, int32_t n, int32_t hd, float scale,
                            float *att) {
    for (int32_t t = 0; t < n; t++) att[t] = attn_dot_f32(q, k + (size_t)t * stride, hd) * scale;
}

static void attn_scores_f16(const void *q, const uint8_t *k, size_t stride, int32_t n, int32_t hd, float scale,
                            float *att) {
    for (int32_t t = 0; t < n; t++) att[t] = attn_dot_f16(q, k + (size_t)t * stride, hd) * scale;
}

static void attn_scores_q8_0(const void *q, const uint8_t *k, size_t stride, int32_t n, int32_t hd, float scale,
                             float *att) {
    const block_q8_0 *qb = q;
    for (int32_t t = 0; t < n; t++) {
        const block_q8_0 *kb = (const block_q8_0 *)(k + (size_t)t * stride);
        float s = 0.0f;
        for (int32_t b = 0; b < hd / QK; b++) {
            int32_t sum = 0;
            for (int i = 0; i < QK; i++) sum += (int32_t)qb[b].qs[i] * kb[b].qs[i];
            s = fmaf(fp16_to_fp32(qb[b].d) * fp16_to_fp32(kb[b].d), (float)sum, s);
        }
        att[t] = s * scale;
    }
}

/* the value sum; W(t, i): position t's weight for value i, V(t, i): the value as a float */
#define ATTN_VALUES(NAME, W, V)                                                                    \
    static void NAME(const float *w, const uint8_t *v, size_t stride, int32_t n, int32_t hd, float *out) { \
        for (int32_t i = 0; i < hd; i++) out[i] = 0.0f;                                            \
        int32_t t = 0;                                                                             \
        for (; t + 4 <= n; t += 4) {                                                               \
            const uint8_t *v0 = v + (size_t)t * stride, *v1 = v0 + stride, *v2 = v1 + stride, *v3 = v2 + stride; \
            for (int32_t i = 0; i < hd; i++)                                                       \
                out[i] += fmaf(W(t + 1, v1, i), V(v1, i), W(t, v0, i) * V(v0, i)) +                \
                          fmaf(W(t + 3, v3, i), V(v3, i), W(t + 2, v2, i) * V(v2, i));             \
        }                                                                                          \
        for (; t < n; t++) {                                                                       \
            const uint8_t *vt = v + (size_t)t * stride;                                            \
            for (int32_t i = 0; i < hd; i++) out[i] = fmaf(W(t, vt, i), V(vt, i), out[i]);         \
        }                                                                                          \
    }
#define W_PLAIN(t, row, i) w[t]
#define W_Q8_0(t, row, i) (w[t] * fp16_to_fp32(((const block_q8_0 *)(row))[(i) / QK].d))
#define V_Q8_0(row, i) ((float)((const block_q8_0 *)(row))[(i) / QK].qs[(i) % QK])
ATTN_VALUES(attn_values_f32, W_PLAIN, kv_f32)
ATTN_VALUES(attn_values_f16, W_PLAIN, kv_f16)
ATTN_VALUES(attn_values_q8_0, W_Q8_0, V_Q8_0)

/* ggml's Q8_0 rule; codes of non-finite or out-of-range products are clamped (a float -> int8
 * conversion out of range is undefined), the scale then carries the NaN / Inf */
static void quantize_q8_0(const float *x, int32_t n, block_q8_0 *out) {
    for (int32_t b = 0; b < n / QK; b++) {
        const float *xb = x + (size_t)b * QK;
        float amax = 0.0f;
        for (int i = 0; i < QK; i++) {
            const float a = fabsf(xb[i]);
            amax = a > amax || a != a ? a : amax;   /* NaN wins */
        }
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = fp32_to_fp16(d);
        for (int i = 0; i < QK; i++) {
            const float v = xb[i] * id;
            out[b].qs[i] = (int8_t)(v >= -127.0f && v <= 127.0f ? roundf(v) : v > 0.0f ? 127.0f : v < 0.0f ? -127.0f : 0.0f);
        }
    }
}

void lr_kv_quantize(int32_t type, const float *x, int32_t n, void *out) {
    switch (type) {
    case LR_F32: memcpy(out, x, (size_t)n * sizeof(float)); break;
    case LR_F16:
        for (int32_t i = 0; i < n; i++) ((uint16_t *)out)[i] = fp32_to_fp16(x[i]);
        break;
    case LR_Q8_0: quantize_q8_0(x, n, out); break;
    }
}

const lr_kernel_table lr_kernels_scalar = {
    {spmv_f32, spmv_f16},
    {dot_f32, dot_f16},
    {attn_scores_f32, attn_scores_f16, attn_scores_q8_0},
    {attn_values_f32, attn_values_f16, attn_values_q8_0},
    lr_topk_impl,
};

/* ---- SIMD dispatch -------------------------------------------------------------------------- */

static int32_t g_simd = -1;   /* -1: not chosen yet */

int32_t lr_simd_available(int32_t level) {
    switch (level) {
    case LR_SIMD_SCALAR: return 1;
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
    case LR_SIMD_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                              __builtin_cpu_supports("f16c");
    case LR_SIMD_AVX512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#endif
#if defined(__aarch64__)
    case LR_SIMD_NEON: return 1;
#endif
    default: return 0;
    }
}

static int32_t best_simd(void) {
    const char *env = getenv("LAROSA_SIMD");   /* scalar | avx2 | avx512 | neon: force a level */
    if (env) {
        static const char *names[] = {"scalar", "avx2", "avx512", "neon"};
        for (int32_t l = 0; l < 4; l++)
            if (!strcmp(env, names[l]) && lr_simd_available(l)) return l;
    }
    for (int32_t l = LR_SIMD_NEON; l > LR_SIMD_SCALAR; l--)
        if (lr_simd_available(l)) return l;
    return LR_SIMD_SCALAR;
}

int32_t lr_set_simd(int32_t level) {
    if (level < 0 || level > LR_SIMD_NEON || !lr_simd_available(level)) return LR_ERANGE;
    g_simd = level;
    return LR_OK;
}

int32_t lr_get_simd(void) {
    if (g_simd < 0) g_simd = best_simd();
    return g_simd;
}

/* The integer kernels of the current level: AVX-512 without VNNI (Skylake-X) takes the AVX2 ones. */
const lr_qkernel_table *lr_qkernels(void) {
    switch (lr_get_simd()) {
#if defined(__x86_64__) || defined(_M_X64)
    case LR_SIMD_AVX2: return &lr_qkernels_avx2;
    case LR_SIMD_AVX512: return lr_cpu_has_vnni() ? &lr_qkernels_avx512vnni : &lr_qkernels_avx2;
#endif
#if defined(__aarch64__)
    case LR_SIMD_NEON: return &lr_qkernels_neon;
#endif
    default: return &lr_qkernels_scalar;
    }
}

const lr_kernel_table *lr_kernels(void) {
    switch (lr_get_simd()) {
#if defined(__x86_64__) || defined(_M_X64)
    case LR_SIMD_AVX2: return &lr_kernels_avx2;
    case LR_SIMD_AVX512: return &lr_kernels_avx512;
#endif
#if defined(__aarch64__)
    case LR_SIMD_NEON: return &lr_kernels_neon;
#endif
    default: return &lr_kernels_scalar;
    }
}

/* ---- Top-K: exact, by |x|, ties to the lower index; idx comes out in ascending order --------- */

/* |x| as an order-preserving unsigned key (NaN sorts above +inf) */
static inline uint32_t abs_key(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return u & 0x7fffffffu;
}

/* The need-th largest (1-based) of a[0 .. m), reordering a: quickselect, Hoare partition around a
 * median of three (expected ~3 m compares: a bucket of a wide block input holds 50-200 keys). */
static uint32_t kth_largest(uint32_t *a, int32_t m, int32_t need) {
    int32_t lo = 0, hi = m - 1;
    const int32_t want = need - 1;   /* its position in descending order */
    while (hi > lo) {
        const uint32_t p0 = a[lo], p1 = a[lo + (hi - lo) / 2], p2 = a[hi];
        const uint32_t piv = p0 > p1 ? (p1 > p2 ? p1 : p0 > p2 ? p2 : p0) : (p0 > p2 ? p0 : p1 > p2 ? p2 : p1);
        int32_t i = lo, j = hi;
        while (i <= j) {   /* a[lo .. i) >= piv, a(j .. hi] <= piv */
            while (a[i] > piv) i++;
            while (a[j] < piv) j--;
            if (i <= j) {
                const uint32_t t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return a[want];   /* between the two parts: equal to the pivot */
    }
    return a[lo];
}

/* Radix select of the k-th largest key: a histogram of the top 10 bits (sign-free exponent and two
 * mantissa bits), walked down from the largest key's bucket to the bucket holding the k-th; its
 * keys (a few dozen to a few hundred) are sorted (up to 48) or quickselected. A last pass in index
 * order takes the keys above the threshold and the first (k - above) keys equal to it; when every
 * key equal to it is taken (no tie at the cut, the usual case) that is one compare per key. */
int32_t lr_topk_impl(const float *x, int32_t n, int32_t k, int32_t *idx, uint32_t *cand) {
    if (k >= n) {
        for (int32_t i = 0; i < n; i++) idx[i] = i;
        return n;
    }
    uint32_t hist[1024] = {0}, kmax = 0;
    for (int32_t i = 0; i < n; i++) {
        const uint32_t key = abs_key(x[i]);
        hist[key >> 21]++;
        kmax = key > kmax ? key : kmax;
    }
    int32_t need = k;   /* how many of the keys inside the current bucket must still be taken */
    int32_t top = (int32_t)(kmax >> 21);
    for (; top > 0; top--) {
        if ((int32_t)hist[top] >= need) break;
        need -= (int32_t)hist[top];
    }
    int32_t m = 0;      /* the keys of that bucket (branch-free: the test is a coin flip) */
    for (int32_t i = 0; i < n; i++) {
        const uint32_t key = abs_key(x[i]);
        cand[m] = key;
        m += (int32_t)(key >> 21) == top;
    }
    uint32_t thr;
    if (m <= 48) {   /* few candidates: an insertion sort, descending */
        for (int32_t i = 1; i < m; i++) {
            const uint32_t v = cand[i];
            int32_t j = i;
            for (; j > 0 && cand[j - 1] < v; j--) cand[j] = cand[j - 1];
            cand[j] = v;
        }
        thr = cand[need - 1];
    } else {
        thr = kth_largest(cand, m, need);
    }
    int32_t above = 0, equal = 0;
    for (int32_t i = 0; i < m; i++) above += cand[i] > thr, equal += cand[i] == thr;
    need -= above;      /* thr is the k-th largest key; `need` of the keys equal to it are taken */
    int32_t out = 0;
    if (need == equal) {
        for (int32_t i = 0; i < n && out < k; i++) {   /* idx has room for k only */
            idx[out] = i;
            out += abs_key(x[i]) >= thr;
        }
        return out;
    }
    int32_t eq_left = need;   /* a tie at the cut: the lowest indices first */
    for (int32_t i = 0; i < n && out < k; i++) {
        const uint32_t key = abs_key(x[i]);
        const int32_t eq = key == thr, take = (key > thr) | (eq & (eq_left > 0));
        eq_left -= eq & take;
        idx[out] = i;
        out += take;
    }
    return out;
}

/* ---- checked entry points ------------------------------------------------------------------- */

int32_t lr_tensor_check(const lr_tensor *w, int32_t rows, int32_t cols, int f32_only) {
    if (!w || !w->data) return LR_EARG;
    if (w->rows != rows || w->cols != cols || rows <= 0 || cols <= 0) return LR_ESHAPE;
    if (lr_type_slot(w->type) < 0 || (f32_only && w->type != LR_F32)) return LR_ETYPE;
    if ((w->type == LR_Q8_0 || w->type == LR_Q4_0) && cols % QK) return LR_ESHAPE;
    if (w->nbytes != lr_row_bytes(w->type, cols) * (uint64_t)rows) return LR_ESHAPE;
    if (lr_is_im(w->type)) {   /* groups of 32 inputs, outputs in chunks of 64, the scale table */
        if (rows % QK || cols % 64) return LR_ESHAPE;
        if (!w->scale || w->scale_nbytes != (uint64_t)(rows / QK) * (uint64_t)cols * 2) return LR_ESHAPE;
    }
    return LR_OK;
}

void lr_dequant_row(const lr_tensor *w, int64_t r, float *out) {
    const uint8_t *row = lr_row(w, r);
    switch (w->type) {
    case LR_F32: memcpy(out, row, (size_t)w->cols * 4); break;
    case LR_F16:
        for (int32_t c = 0; c < w->cols; c++) out[c] = fp16_to_fp32(((const uint16_t *)row)[c]);
        break;
    case LR_Q8_0:
        for (int32_t blk = 0; blk < w->cols / QK; blk++) {
            const block_q8_0 *b = (const block_q8_0 *)row + blk;
            const float d = fp16_to_fp32(b->d);
            for (int t = 0; t < QK; t++) out[blk * QK + t] = d * (float)b->qs[t];
        }
        break;
    case LR_Q4_0:
        for (int32_t blk = 0; blk < w->cols / QK; blk++) {
            const block_q4_0 *b = (const block_q4_0 *)row + blk;
            const float d = fp16_to_fp32(b->d);
            for (int t = 0; t < QK / 2; t++) {
                out[blk * QK + t] = d * (float)((int)(b->qs[t] & 0x0f) - 8);
                out[blk * QK + t + QK / 2] = d * (float)((int)(b->qs[t] >> 4) - 8);
            }
        }
        break;
    case LR_Q8_0_IM:
    case LR_Q4_0_IM: {
        const uint16_t *d = (const uint16_t *)w->scale + r / QK * w->cols;
        for (int32_t c = 0; c < w->cols; c++) out[c] = fp16_to_fp32(d[c]) * (float)lr_im_code(w, r, c);
        break;
    }
    }
}

int32_t lr_topk(const float *x, int32_t n, int32_t k, int32_t *idx) {
    if (!x || !idx || n <= 0 || k < 1 || k > n) return LR_EARG;
    /* the table's Top-K writes into room for n indices: idx here has room for k */
    uint32_t *scratch = malloc(LR_TOPK_SCRATCH(n) * sizeof(uint32_t));
    int32_t *all = malloc((size_t)n * sizeof(int32_t));
    int32_t got = LR_ENOMEM;
    if (scratch && all) {
        got = lr_kernels()->topk(x, n, k, all, scratch);
        memcpy(idx, all, (size_t)got * sizeof(int32_t));
    }
    free(scratch);
    free(all);
    return got;
}

int32_t lr_spmv(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, float *y) {
    if (!w || !x || !y) return LR_EARG;
    int32_t rc = lr_tensor_check(w, w->rows, w->cols, 0);
    if (rc) return rc;
    if (w->type == LR_Q8_0 || w->type == LR_Q4_0) return LR_ETYPE;   /* input-major: the _IM types */
    if (k < 0 || k > w->rows || (!idx && k != w->rows)) return LR_ERANGE;
    for (int32_t j = 0; idx && j < k; j++)
        if (idx[j] < 0 || idx[j] >= w->rows || (j > 0 && idx[j] <= idx[j - 1])) return LR_ERANGE;
    if (!lr_is_im(w->type)) {
        lr_kernels()->spmv[lr_type_slot(w->type)](w, x, idx, k, y, 0, w->cols);
        return LR_OK;
    }
    lr_qsel s;
    void *sbuf = lr_qsel_new(w->rows, &s);
    int32_t *acc = aligned_alloc(64, ((size_t)w->cols * sizeof(int32_t) + 63) / 64 * 64);
    if (sbuf && acc) {
        lr_qsel_build(x, idx, k, &s);
        lr_qkernels()->qspmv[lr_type_slot(w->type)](w, &s, y, 0, w->cols, acc);
    }
    free(sbuf);
    free(acc);
    return sbuf && acc ? LR_OK : LR_ENOMEM;
}

int32_t lr_dot_rows(const lr_tensor *w, const float *x, float *y) {
    if (!w || !x || !y) return LR_EARG;
    int32_t rc = lr_tensor_check(w, w->rows, w->cols, 0);
    if (rc) return rc;
    if (lr_is_im(w->type)) return LR_ETYPE;
    if (w->type == LR_F32 || w->type == LR_F16) {
        lr_kernels()->dot_rows[lr_type_slot(w->type)](w, x, y, 0, w->rows);
        return LR_OK;
    }
    const int32_t nb = w->cols / QK;
    int8_t *xq = malloc((size_t)w->cols + (size_t)nb * 8);
    if (!xq) return LR_ENOMEM;
    lr_qx q = {xq, (float *)(xq + w->cols), (int32_t *)(xq + w->cols) + nb};
    lr_quantize_blocks(x, w->cols, xq, (float *)q.dx, (int32_t *)q.sx);
    lr_qkernels()->qdot[lr_type_slot(w->type)](w, &q, y, 0, w->rows);
    free(xq);
    return LR_OK;
}

int32_t lr_spmm(const lr_tensor *w, const float *X, const uint8_t *mask, int32_t n, float *Y) {
    if (!w || !X || !mask || !Y) return LR_EARG;
    int32_t rc = lr_tensor_check(w, w->rows, w->cols, 0);
    if (rc) return rc;
    if (!lr_is_im(w->type)) return LR_ETYPE;
    if (n < 1 || n > LR_QGEMM_TOKENS) return LR_ERANGE;
    lr_qbatch b;
    void *bbuf = lr_qbatch_new(n, w->rows, &b);
    void *scratch = aligned_alloc(64, (size_t)lr_qgemm_scratch(w->cols));
    if (bbuf && scratch) {
        for (int32_t t = 0; t < n; t++)
            lr_qbatch_row(&b, t, w->rows, X + (int64_t)t * w->rows, mask + (int64_t)t * w->rows);
        lr_qkernels()->qgemm[lr_type_slot(w->type)](w, &b, Y, w->cols, 0, w->cols, scratch);
    }
    free(bbuf);
    free(scratch);
    return bbuf && scratch ? LR_OK : LR_ENOMEM;
}

int32_t lr_get_row(const lr_tensor *w, int32_t row, float *out) {
    if (!w || !out) return LR_EARG;
    int32_t rc = lr_tensor_check(w, w->rows, w->cols, 0);
    if (rc) return rc;
    if (row < 0 || row >= w->rows) return LR_ERANGE;
    lr_dequant_row(w, row, out);
    return LR_OK;
}

/* ---- attention kernels, checked entry points for tests ---------------------------------------- */

int64_t lr_kv_row_bytes(int32_t type, int32_t n) {
    if (n < 1 || lr_kv_slot(type) < 0 || (type == LR_Q8_0 && n % QK)) return LR_EARG;
    return (int64_t)lr_row_bytes(type, n);
}

int32_t lr_kv_store(int32_t type, const float *x, int32_t n, void *out) {
    if (!x || !out) return LR_EARG;
    if (lr_kv_row_bytes(type, n) < 0) return lr_kv_slot(type) < 0 ? LR_ETYPE : LR_ESHAPE;
    lr_kv_quantize(type, x, n, out);
    return LR_OK;
}

static int32_t attn_check(int32_t type, const void *a, const void *kv, int64_t stride, int32_t n, int32_t hd,
                          const void *out) {
    if (!a || !kv || !out) return LR_EARG;
    if (lr_kv_slot(type) < 0) return LR_ETYPE;
    if (n < 1 || lr_kv_row_bytes(type, hd) < 0 || stride < lr_kv_row_bytes(type, hd)) return LR_ESHAPE;
    return LR_OK;
}

int32_t lr_attn_scores(int32_t type_k, const float *q, const void *k, int64_t stride, int32_t n, int32_t hd,
                       float scale, float *att) {
    const int32_t rc = attn_check(type_k, q, k, stride, n, hd, att);
    if (rc) return rc;
    const attn_scores_fn fn = lr_kernels()->attn_scores[lr_kv_slot(type_k)];
    if (type_k != LR_Q8_0) {
        fn(q, k, (size_t)stride, n, hd, scale, att);
        return LR_OK;
    }
    block_q8_0 *qb = malloc((size_t)(hd / QK) * sizeof(block_q8_0));   /* q as the keys' blocks */
    if (!qb) return LR_ENOMEM;
    quantize_q8_0(q, hd, qb);
    fn(qb, k, (size_t)stride, n, hd, scale, att);
    free(qb);
    return LR_OK;
}

int32_t lr_attn_values(int32_t type_v, const float *w, const void *v, int64_t stride, int32_t n, int32_t hd,
                       float *out) {
    const int32_t rc = attn_check(type_v, w, v, stride, n, hd, out);
    if (rc) return rc;
    lr_kernels()->attn_values[lr_kv_slot(type_v)](w, v, (size_t)stride, n, hd, out);
    return LR_OK;
}

/* AVX2 and AVX-512 kernels. Compiled on any x86-64 through per-function target attributes and
 * chosen at run time (kernels.c), so one build runs everywhere; each mirrors a scalar kernel.
 *
 * These are the float-weight kernels (F32, F16: adapters, --type f16/f32 files); the quantized
 * types run on integers (qmatvec_x86.c).
 * spmv walks the selected rows in their (ascending) order, four at a time, each over the thread's
 * whole column range: every row segment is one contiguous read that the prefetchers follow, and y
 * (a few KiB per thread) stays in L1, loaded and stored once per four rows. The two ISAs share the
 * kernel bodies below; only the vector type differs.
 */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "kernels.h"

#define ROW_OF(j) (idx ? idx[j] : (j))
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

/* ---- shared kernel bodies ------------------------------------------------------------------ */

/* float weights: LDW(row, col) loads V weights as floats, LD1(row, col) one */
#define SPMV_F(ATTR, NAME, VEC, V, LOAD, STORE, SET1, ZERO, FMA, LDW, LD1)                         \
    ATTR static void NAME(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k,       \
                          float *y, int32_t c0, int32_t c1) {                                      \
        const int32_t cv = c0 + (c1 - c0) / V * V;   /* vector part [c0, cv), scalar tail */       \
        for (int32_t c = c0; c < cv; c += V) STORE(y + c, ZERO());                                 \
        for (int32_t c = cv; c < c1; c++) y[c] = 0.0f;                                             \
        int32_t j = 0;                                                                             \
        for (; j + 4 <= k; j += 4) {                                                               \
            const void *r[4];                                                                      \
            float a[4];                                                                            \
            VEC av[4];                                                                             \
            for (int u = 0; u < 4; u++) {                                                          \
                const int32_t i = ROW_OF(j + u);                                                   \
                r[u] = lr_row(w, i);                                                               \
                a[u] = x[i];                                                                       \
                av[u] = SET1(a[u]);                                                                \
            }                                                                                      \
            for (int32_t c = c0; c < cv; c += V) {                                                 \
                VEC acc = LOAD(y + c);                                                             \
                _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) acc = FMA(av[u], LDW(r[u], c), acc); \
                STORE(y + c, acc);                                                                 \
            }                                                                                      \
            for (int32_t c = cv; c < c1; c++)                                                      \
                for (int u = 0; u < 4; u++) y[c] += a[u] * LD1(r[u], c);                           \
        }                                                                                          \
        for (; j < k; j++) {                                                                       \
            const int32_t i = ROW_OF(j);                                                           \
            const void *r = lr_row(w, i);                                                          \
            const VEC av = SET1(x[i]);                                                             \
            for (int32_t c = c0; c < cv; c += V) STORE(y + c, FMA(av, LDW(r, c), LOAD(y + c)));    \
            for (int32_t c = cv; c < c1; c++) y[c] += x[i] * LD1(r, c);                            \
        }                                                                                          \
    }

/* ================================ AVX-512 ================================================== */

AVX512 static inline __m512 ldw_f32_512(const void *row, int64_t c) { return _mm512_loadu_ps((const float *)row + c); }
AVX512 static inline __m512 ldw_f16_512(const void *row, int64_t c) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + c)));
}
AVX512 static inline float ld1_f32_512(const void *row, int64_t c) { return ((const float *)row)[c]; }
AVX512 static inline float ld1_f16_512(const void *row, int64_t c) { return _cvtsh_ss(((const uint16_t *)row)[c]); }

SPMV_F(AVX512, spmv_f32_512, __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps,
       _mm512_setzero_ps, _mm512_fmadd_ps, ldw_f32_512, ld1_f32_512)
SPMV_F(AVX512, spmv_f16_512, __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps,
       _mm512_setzero_ps, _mm512_fmadd_ps, ldw_f16_512, ld1_f16_512)

/* dot products over rows (the output-major head) */
#define DOT_F_512(NAME, LDW, LD1)                                                                  \
    AVX512 static void NAME(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1) { \
        for (int32_t r = r0; r < r1; r++) {                                                        \
            const void *row = lr_row(w, r);                                                        \
            __m512 acc = _mm512_setzero_ps();                                                      \
            int32_t c = 0;                                                                         \
            for (; c + 16 <= w->cols; c += 16) acc = _mm512_fmadd_ps(LDW(row, c), _mm512_loadu_ps(x + c), acc); \
            float s = _mm512_reduce_add_ps(acc);                                                   \
            for (; c < w->cols; c++) s += LD1(row, c) * x[c];                                      \
            y[r] = s;                                                                              \
        }                                                                                          \
    }
DOT_F_512(dot_f32_512, ldw_f32_512, ld1_f32_512)
DOT_F_512(dot_f16_512, ldw_f16_512, ld1_f16_512)

/* ---- attention (kernels.h's order: 16 lanes per score, reduced 16 -> 8 -> 4 -> 2 -> 1) ----------- */

AVX512 static inline float hsum_512(__m512 v) {   /* 16 -> 8, then hsum_8 */
    const __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(v),
                                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
AVX512 static inline __m512 kv16_f32_512(const uint8_t *row, int32_t i) { return _mm512_loadu_ps((const float *)row + i); }
AVX512 static inline __m512 kv16_f16_512(const uint8_t *row, int32_t i) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)));
}
AVX512 static inline float kv1_f32_512(const uint8_t *row, int32_t i) { return ((const float *)row)[i]; }
AVX512 static inline float kv1_f16_512(const uint8_t *row, int32_t i) { return _cvtsh_ss(((const uint16_t *)row)[i]); }

#define ATTN_SCORES_512(NAME, LD16, LD1)                                                           \
    AVX512 static void NAME(const void *qv, const uint8_t *k, size_t stride, int32_t n, int32_t hd, float scale, \
                            float *att) {                                                          \
        const float *q = qv;                                                                       \
        const int32_t hd16 = hd & ~15;                                                             \
        int32_t t = 0;                                                                             \
        for (; t + 4 <= n; t += 4) {   /* 4 positions per pass: 4 independent sums */              \
            const uint8_t *r[4];                                                                   \
            __m512 a[4];                                                                           \
            for (int u = 0; u < 4; u++) r[u] = k + (size_t)(t + u) * stride, a[u] = _mm512_setzero_ps(); \
            for (int32_t i = 0; i < hd16; i += 16) {                                               \
                const __m512 qi = _mm512_loadu_ps(q + i);                                          \
                _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) a[u] = _mm512_fmadd_ps(qi, LD16(r[u], i), a[u]); \
            }                                                                                      \
            for (int u = 0; u < 4; u++) {                                                          \
                float s = hsum_512(a[u]);                                                          \
                for (int32_t i = hd16; i < hd; i++) s = fmaf(q[i], LD1(r[u], i), s);               \
                att[t + u] = s * scale;                                                            \
            }                                                                                      \
        }                                                                                          \
        for (; t < n; t++) {                                                                       \
            const uint8_t *r = k + (size_t)t * stride;                                             \
            __m512 a = _mm512_setzero_ps();                                                        \
            for (int32_t i = 0; i < hd16; i += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), LD16(r, i), a); \
            float s = hsum_512(a);                                                                 \
            for (int32_t i = hd16; i < hd; i++) s = fmaf(q[i], LD1(r, i), s);                      \
            att[t] = s * scale;                                                                    \
        }                                                                                          \
    }
ATTN_SCORES_512(attn_scores_f32_512, kv16_f32_512, kv1_f32_512)
ATTN_SCORES_512(attn_scores_f16_512, kv16_f16_512, kv1_f16_512)

/* the exact int32 sum of one Q8_0 block's 32 products */
AVX512 static inline int32_t dot32_i8_512(const int8_t *a, const int8_t *b) {
    const __m512i x = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)a));
    const __m512i y = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)b));
    return _mm512_reduce_add_epi32(_mm512_madd_epi16(x, y));
}

AVX512 static void attn_scores_q8_0_512(const void *qv, const uint8_t *k, size_t stride, int32_t n, int32_t hd,
                                        float scale, float *att) {
    const block_q8_0 *qb = qv;
    for (int32_t t = 0; t < n; t++) {
        const block_q8_0 *kb = (const block_q8_0 *)(k + (size_t)t * stride);
        float s = 0.0f;
        for (int32_t b = 0; b < hd / QK; b++)
            s = fmaf(_cvtsh_ss(qb[b].d) * _cvtsh_ss(kb[b].d), (float)dot32_i8_512(qb[b].qs, kb[b].qs), s);
        att[t] = s * scale;
    }
}

/* out[i] += fma(w1, v1, w0 v0) + fma(w3, v3, w2 v2) on 16 lanes */
AVX512 static inline __m512 vsum4_512(__m512 o, const __m512 *w, const __m512 *v) {
    return _mm512_add_ps(o, _mm512_add_ps(_mm512_fmadd_ps(w[1], v[1], _mm512_mul_ps(w[0], v[0])),
                                          _mm512_fmadd_ps(w[3], v[3], _mm512_mul_ps(w[2], v[2]))));
}

#define ATTN_VALUES_512(NAME, LD16, LD1)                                                           \
    AVX512 static void NAME(const float *w, const uint8_t *v, size_t stride, int32_t n, int32_t hd, float *out) { \
        const int32_t hd16 = hd & ~15;                                                             \
        for (int32_t i = 0; i < hd; i++) out[i] = 0.0f;                                            \
        int32_t t = 0;                                                                             \
        for (; t + 4 <= n; t += 4) {                                                               \
            const uint8_t *r[4];                                                                   \
            __m512 wv[4];                                                                          \
            for (int u = 0; u < 4; u++) r[u] = v + (size_t)(t + u) * stride, wv[u] = _mm512_set1_ps(w[t + u]); \
            for (int32_t i = 0; i < hd16; i += 16) {                                               \
                __m512 x[4];                                                                       \
                for (int u = 0; u < 4; u++) x[u] = LD16(r[u], i);                                  \
                _mm512_storeu_ps(out + i, vsum4_512(_mm512_loadu_ps(out + i), wv, x));             \
            }                                                                                      \
            for (int32_t i = hd16; i < hd; i++)                                                    \
                out[i] += fmaf(w[t + 1], LD1(r[1], i), w[t] * LD1(r[0], i)) +                      \
                          fmaf(w[t + 3], LD1(r[3], i), w[t + 2] * LD1(r[2], i));                   \
        }                                                                                          \
        for (; t < n; t++) {                                                                       \
            const uint8_t *r = v + (size_t)t * stride;                                             \
            const __m512 wt = _mm512_set1_ps(w[t]);                                                \
            for (int32_t i = 0; i < hd16; i += 16)                                                 \
                _mm512_storeu_ps(out + i, _mm512_fmadd_ps(wt, LD16(r, i), _mm512_loadu_ps(out + i))); \
            for (int32_t i = hd16; i < hd; i++) out[i] = fmaf(w[t], LD1(r, i), out[i]);            \
        }                                                                                          \
    }
ATTN_VALUES_512(attn_values_f32_512, kv16_f32_512, kv1_f32_512)
ATTN_VALUES_512(attn_values_f16_512, kv16_f16_512, kv1_f16_512)

/* Q8_0 values: codes as floats, w[t] times the block's scale as the weight (hd % 32 == 0) */
AVX512 static inline __m512 codes16_512(const int8_t *c) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)c)));
}

AVX512 static void attn_values_q8_0_512(const float *w, const uint8_t *v, size_t stride, int32_t n, int32_t hd,
                                        float *out) {
    for (int32_t i = 0; i < hd; i++) out[i] = 0.0f;
    int32_t t = 0;
    for (; t + 4 <= n; t += 4) {
        const block_q8_0 *r[4];
        for (int u = 0; u < 4; u++) r[u] = (const block_q8_0 *)(v + (size_t)(t + u) * stride);
        for (int32_t b = 0; b < hd / QK; b++) {
            __m512 wv[4], lo[4], hi[4];
            for (int u = 0; u < 4; u++) {
                wv[u] = _mm512_set1_ps(w[t + u] * _cvtsh_ss(r[u][b].d));
                lo[u] = codes16_512(r[u][b].qs);
                hi[u] = codes16_512(r[u][b].qs + 16);
            }
            float *o = out + (size_t)b * QK;
            _mm512_storeu_ps(o, vsum4_512(_mm512_loadu_ps(o), wv, lo));
            _mm512_storeu_ps(o + 16, vsum4_512(_mm512_loadu_ps(o + 16), wv, hi));
        }
    }
    for (; t < n; t++) {
        const block_q8_0 *r = (const block_q8_0 *)(v + (size_t)t * stride);
        for (int32_t b = 0; b < hd / QK; b++) {
            const __m512 wt = _mm512_set1_ps(w[t] * _cvtsh_ss(r[b].d));
            float *o = out + (size_t)b * QK;
            _mm512_storeu_ps(o, _mm512_fmadd_ps(wt, codes16_512(r[b].qs), _mm512_loadu_ps(o)));
            _mm512_storeu_ps(o + 16, _mm512_fmadd_ps(wt, codes16_512(r[b].qs + 16), _mm512_loadu_ps(o + 16)));
        }
    }
}

/* Top-K passes (topk.c) on 16 keys at a time: compare to a mask, popcount, compress */
AVX512 static uint32_t keys_512(const float *x, int32_t n, uint32_t *u) {
    const __m512i abs = _mm512_set1_epi32(0x7fffffff);
    __m512i mx = _mm512_setzero_si512();
    int32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i v = _mm512_and_si512(_mm512_loadu_si512(x + i), abs);
        _mm512_storeu_si512(u + i, v);
        mx = _mm512_max_epu32(mx, v);
    }
    uint32_t m = _mm512_reduce_max_epu32(mx);
    return lr_topk_keys_tail(x, i, n, u, m);
}

AVX512 static int32_t count_gt_512(const uint32_t *u, int32_t n, uint32_t t) {
    /* four accumulators, each lane adds 1 where its key is above t: one masked add per 16 keys */
    const __m512i tv = _mm512_set1_epi32((int32_t)t), one = _mm512_set1_epi32(1);
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    int32_t i = 0, c = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_mask_add_epi32(a0, _mm512_cmpgt_epu32_mask(_mm512_loadu_si512(u + i), tv), a0, one);
        a1 = _mm512_mask_add_epi32(a1, _mm512_cmpgt_epu32_mask(_mm512_loadu_si512(u + i + 16), tv), a1, one);
        a2 = _mm512_mask_add_epi32(a2, _mm512_cmpgt_epu32_mask(_mm512_loadu_si512(u + i + 32), tv), a2, one);
        a3 = _mm512_mask_add_epi32(a3, _mm512_cmpgt_epu32_mask(_mm512_loadu_si512(u + i + 48), tv), a3, one);
    }
    for (; i + 16 <= n; i += 16)
        a0 = _mm512_mask_add_epi32(a0, _mm512_cmpgt_epu32_mask(_mm512_loadu_si512(u + i), tv), a0, one);
    for (; i < n; i++) c += u[i] > t;
    return c + _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
}

/* compress in a register, then a full store (Zen 4 runs the compressing store from microcode) */
AVX512 static int32_t gather_512(const uint32_t *u, int32_t n, uint32_t lo, uint32_t hi, uint32_t *cand) {
    const __m512i lov = _mm512_set1_epi32((int32_t)lo), hiv = _mm512_set1_epi32((int32_t)hi);
    int32_t m = 0, i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i v = _mm512_loadu_si512(u + i);
        const __mmask16 k = _mm512_cmpgt_epu32_mask(v, lov) & _mm512_cmple_epu32_mask(v, hiv);
        _mm512_storeu_si512(cand + m, _mm512_maskz_compress_epi32(k, v));
        m += __builtin_popcount(k);
    }
    return lr_topk_gather_tail(u, i, n, lo, hi, cand, m);
}

AVX512 static int32_t take_512(const uint32_t *u, int32_t n, uint32_t t, int32_t *idx) {
    const __m512i tv = _mm512_set1_epi32((int32_t)t), step = _mm512_set1_epi32(16);
    __m512i iv = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int32_t out = 0, i = 0;
    for (; i + 16 <= n; i += 16, iv = _mm512_add_epi32(iv, step)) {
        const __mmask16 k = _mm512_cmpge_epu32_mask(_mm512_loadu_si512(u + i), tv);
        _mm512_storeu_si512(idx + out, _mm512_maskz_compress_epi32(k, iv));
        out += __builtin_popcount(k);
    }
    return lr_topk_take_tail(u, i, n, t, idx, out);
}

static const lr_topk_ops topk_ops_512 = {keys_512, count_gt_512, gather_512, take_512};

static int32_t topk_512(const float *x, int32_t n, int32_t k, int32_t *idx, uint32_t *scratch) {
    return lr_topk_bracket(x, n, k, idx, scratch, &topk_ops_512);
}

const lr_kernel_table lr_kernels_avx512 = {
    {spmv_f32_512, spmv_f16_512},
    {dot_f32_512, dot_f16_512},
    {attn_scores_f32_512, attn_scores_f16_512, attn_scores_q8_0_512},
    {attn_values_f32_512, attn_values_f16_512, attn_values_q8_0_512},
    topk_512,
};

/* ================================ AVX2 ===================================================== */

AVX2 static inline __m256 ldw_f32_256(const void *row, int64_t c) { return _mm256_loadu_ps((const float *)row + c); }
AVX2 static inline __m256 ldw_f16_256(const void *row, int64_t c) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + c)));
}
AVX2 static inline float ld1_f32_256(const void *row, int64_t c) { return ((const float *)row)[c]; }
AVX2 static inline float ld1_f16_256(const void *row, int64_t c) { return _cvtsh_ss(((const uint16_t *)row)[c]); }

SPMV_F(AVX2, spmv_f32_256, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps,
       _mm256_setzero_ps, _mm256_fmadd_ps, ldw_f32_256, ld1_f32_256)
SPMV_F(AVX2, spmv_f16_256, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps,
       _mm256_setzero_ps, _mm256_fmadd_ps, ldw_f16_256, ld1_f16_256)

AVX2 static inline float hsum_256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define DOT_F_256(NAME, LDW, LD1)                                                                  \
    AVX2 static void NAME(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1) {  \
        for (int32_t r = r0; r < r1; r++) {                                                        \
            const void *row = lr_row(w, r);                                                        \
            __m256 acc = _mm256_setzero_ps();                                                      \
            int32_t c = 0;                                                                         \
            for (; c + 8 <= w->cols; c += 8) acc = _mm256_fmadd_ps(LDW(row, c), _mm256_loadu_ps(x + c), acc); \
            float s = hsum_256(acc);                                                               \
            for (; c < w->cols; c++) s += LD1(row, c) * x[c];                                      \
            y[r] = s;                                                                              \
        }                                                                                          \
    }
DOT_F_256(dot_f32_256, ldw_f32_256, ld1_f32_256)
DOT_F_256(dot_f16_256, ldw_f16_256, ld1_f16_256)


/* ---- attention (kernels.h's order: the 16 lanes as two vectors, lanes 0-7 and 8-15) ------------ */

AVX2 static inline __m256 kv8_f32_256(const uint8_t *row, int32_t i) { return _mm256_loadu_ps((const float *)row + i); }
AVX2 static inline __m256 kv8_f16_256(const uint8_t *row, int32_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)));
}
AVX2 static inline float kv1_f32_256(const uint8_t *row, int32_t i) { return ((const float *)row)[i]; }
AVX2 static inline float kv1_f16_256(const uint8_t *row, int32_t i) { return _cvtsh_ss(((const uint16_t *)row)[i]); }

#define ATTN_SCORES_256(NAME, LD8, LD1)                                                            \
    AVX2 static void NAME(const void *qv, const uint8_t *k, size_t stride, int32_t n, int32_t hd, float scale, \
                          float *att) {                                                            \
        const float *q = qv;                                                                       \
        const int32_t hd16 = hd & ~15;                                                             \
        int32_t t = 0;                                                                             \
        for (; t + 2 <= n; t += 2) {   /* 2 positions per pass (4 accumulators) */                 \
            const uint8_t *r0 = k + (size_t)t * stride, *r1 = r0 + stride;                         \
            __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0;                            \
            for (int32_t i = 0; i < hd16; i += 16) {                                               \
                const __m256 qa = _mm256_loadu_ps(q + i), qb = _mm256_loadu_ps(q + i + 8);         \
                a0 = _mm256_fmadd_ps(qa, LD8(r0, i), a0);                                          \
                b0 = _mm256_fmadd_ps(qb, LD8(r0, i + 8), b0);                                      \
                a1 = _mm256_fmadd_ps(qa, LD8(r1, i), a1);                                          \
                b1 = _mm256_fmadd_ps(qb, LD8(r1, i + 8), b1);                                      \
            }                                                                                      \
            float s0 = hsum_256(_mm256_add_ps(a0, b0)), s1 = hsum_256(_mm256_add_ps(a1, b1));      \
            for (int32_t i = hd16; i < hd; i++) s0 = fmaf(q[i], LD1(r0, i), s0), s1 = fmaf(q[i], LD1(r1, i), s1); \
            att[t] = s0 * scale, att[t + 1] = s1 * scale;                                          \
        }                                                                                          \
        for (; t < n; t++) {                                                                       \
            const uint8_t *r = k + (size_t)t * stride;                                             \
            __m256 a = _mm256_setzero_ps(), b = a;                                                 \
            for (int32_t i = 0; i < hd16; i += 16) {                                               \
                a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), LD8(r, i), a);                         \
                b = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), LD8(r, i + 8), b);                 \
            }                                                                                      \
            float s = hsum_256(_mm256_add_ps(a, b));                                               \
            for (int32_t i = hd16; i < hd; i++) s = fmaf(q[i], LD1(r, i), s);                      \
            att[t] = s * scale;                                                                    \
        }                                                                                          \
    }
ATTN_SCORES_256(attn_scores_f32_256, kv8_f32_256, kv1_f32_256)
ATTN_SCORES_256(attn_scores_f16_256, kv8_f16_256, kv1_f16_256)

/* the exact int32 sum of one Q8_0 block's 32 products: |k| times q with k's sign (q in [-127, 127],
 * so no pair of products saturates the int16 sums) */
AVX2 static inline int32_t dot32_i8_256(const int8_t *q, const int8_t *k) {
    const __m256i x = _mm256_loadu_si256((const __m256i *)q), y = _mm256_loadu_si256((const __m256i *)k);
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(y), _mm256_sign_epi8(x, y));
    const __m256i p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(p32), _mm256_extracti128_si256(p32, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

AVX2 static void attn_scores_q8_0_256(const void *qv, const uint8_t *k, size_t stride, int32_t n, int32_t hd,
                                      float scale, float *att) {
    const block_q8_0 *qb = qv;
    for (int32_t t = 0; t < n; t++) {
        const block_q8_0 *kb = (const block_q8_0 *)(k + (size_t)t * stride);
        float s = 0.0f;
        for (int32_t b = 0; b < hd / QK; b++)
            s = fmaf(_cvtsh_ss(qb[b].d) * _cvtsh_ss(kb[b].d), (float)dot32_i8_256(qb[b].qs, kb[b].qs), s);
        att[t] = s * scale;
    }
}

AVX2 static inline __m256 vsum4_256(__m256 o, const __m256 *w, const __m256 *v) {
    return _mm256_add_ps(o, _mm256_add_ps(_mm256_fmadd_ps(w[1], v[1], _mm256_mul_ps(w[0], v[0])),
                                          _mm256_fmadd_ps(w[3], v[3], _mm256_mul_ps(w[2], v[2]))));
}

#define ATTN_VALUES_256(NAME, LD8, LD1)                                                            \
    AVX2 static void NAME(const float *w, const uint8_t *v, size_t stride, int32_t n, int32_t hd, float *out) { \
        const int32_t hd8 = hd & ~7;                                                               \
        for (int32_t i = 0; i < hd; i++) out[i] = 0.0f;                                            \
        int32_t t = 0;                                                                             \
        for (; t + 4 <= n; t += 4) {                                                               \
            const uint8_t *r[4];                                                                   \
            __m256 wv[4];                                                                          \
            for (int u = 0; u < 4; u++) r[u] = v + (size_t)(t + u) * stride, wv[u] = _mm256_set1_ps(w[t + u]); \
            for (int32_t i = 0; i < hd8; i += 8) {                                                 \
                __m256 x[4];                                                                       \
                for (int u = 0; u < 4; u++) x[u] = LD8(r[u], i);                                   \
                _mm256_storeu_ps(out + i, vsum4_256(_mm256_loadu_ps(out + i), wv, x));             \
            }                                                                                      \
            for (int32_t i = hd8; i < hd; i++)                                                     \
                out[i] += fmaf(w[t + 1], LD1(r[1], i), w[t] * LD1(r[0], i)) +                      \
                          fmaf(w[t + 3], LD1(r[3], i), w[t + 2] * LD1(r[2], i));                   \
        }                                                                                          \
        for (; t < n; t++) {                                                                       \
            const uint8_t *r = v + (size_t)t * stride;                                             \
            const __m256 wt = _mm256_set1_ps(w[t]);                                                \
            for (int32_t i = 0; i < hd8; i += 8)                                                   \
                _mm256_storeu_ps(out + i, _mm256_fmadd_ps(wt, LD8(r, i), _mm256_loadu_ps(out + i))); \
            for (int32_t i = hd8; i < hd; i++) out[i] = fmaf(w[t], LD1(r, i), out[i]);             \
        }                                                                                          \
    }
ATTN_VALUES_256(attn_values_f32_256, kv8_f32_256, kv1_f32_256)
ATTN_VALUES_256(attn_values_f16_256, kv8_f16_256, kv1_f16_256)

AVX2 static inline __m256 codes8_256(const int8_t *c) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)c)));
}

AVX2 static void attn_values_q8_0_256(const float *w, const uint8_t *v, size_t stride, int32_t n, int32_t hd,
                                      float *out) {
    for (int32_t i = 0; i < hd; i++) out[i] = 0.0f;
    int32_t t = 0;
    for (; t + 4 <= n; t += 4) {
        const block_q8_0 *r[4];
        for (int u = 0; u < 4; u++) r[u] = (const block_q8_0 *)(v + (size_t)(t + u) * stride);
        for (int32_t b = 0; b < hd / QK; b++) {
            __m256 wv[4];
            for (int u = 0; u < 4; u++) wv[u] = _mm256_set1_ps(w[t + u] * _cvtsh_ss(r[u][b].d));
            for (int j = 0; j < QK; j += 8) {
                __m256 x[4];
                for (int u = 0; u < 4; u++) x[u] = codes8_256(r[u][b].qs + j);
                float *o = out + (size_t)b * QK + j;
                _mm256_storeu_ps(o, vsum4_256(_mm256_loadu_ps(o), wv, x));
            }
        }
    }
    for (; t < n; t++) {
        const block_q8_0 *r = (const block_q8_0 *)(v + (size_t)t * stride);
        for (int32_t b = 0; b < hd / QK; b++) {
            const __m256 wt = _mm256_set1_ps(w[t] * _cvtsh_ss(r[b].d));
            for (int j = 0; j < QK; j += 8) {
                float *o = out + (size_t)b * QK + j;
                _mm256_storeu_ps(o, _mm256_fmadd_ps(wt, codes8_256(r[b].qs + j), _mm256_loadu_ps(o)));
            }
        }
    }
}

/* Top-K passes (topk.c) on 8 keys at a time. The keys are below 2^31, so a signed compare orders
 * them; AVX2 has no compress: a mask's kept lanes come from a table of 256 packed index lists. */
static uint32_t lanes_of_mask[256];   /* the indices of mask m's set bits, 4 bits each, in order */

__attribute__((constructor)) static void build_lanes_of_mask(void) {
    for (uint32_t m = 0; m < 256; m++) {
        uint32_t packed = 0, j = 0;
        for (uint32_t b = 0; b < 8; b++)
            if (m >> b & 1) packed |= b << (4 * j++);
        lanes_of_mask[m] = packed;
    }
}

AVX2 static inline __m256i compress_256(__m256i v, uint32_t m) {
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256i perm = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int32_t)lanes_of_mask[m]), shifts),
                                          _mm256_set1_epi32(7));
    return _mm256_permutevar8x32_epi32(v, perm);
}

AVX2 static uint32_t keys_256(const float *x, int32_t n, uint32_t *u) {
    const __m256i abs = _mm256_set1_epi32(0x7fffffff);
    __m256i mx = _mm256_setzero_si256();
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i v = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), abs);
        _mm256_storeu_si256((__m256i *)(u + i), v);
        mx = _mm256_max_epu32(mx, v);
    }
    uint32_t lanes[8], m = 0;
    _mm256_storeu_si256((__m256i *)lanes, mx);
    for (int j = 0; j < 8; j++) m = lanes[j] > m ? lanes[j] : m;
    return lr_topk_keys_tail(x, i, n, u, m);
}

AVX2 static int32_t count_gt_256(const uint32_t *u, int32_t n, uint32_t t) {
    const __m256i tv = _mm256_set1_epi32((int32_t)t);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0;   /* lanes count down: a true compare is -1 */
    int32_t i = 0, c = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_epi32(a0, _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i *)(u + i)), tv));
        a1 = _mm256_add_epi32(a1, _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i *)(u + i + 8)), tv));
    }
    int32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, _mm256_add_epi32(a0, a1));
    for (int j = 0; j < 8; j++) c -= lanes[j];
    for (; i < n; i++) c += u[i] > t;
    return c;
}

AVX2 static int32_t gather_256(const uint32_t *u, int32_t n, uint32_t lo, uint32_t hi, uint32_t *cand) {
    const __m256i lov = _mm256_set1_epi32((int32_t)lo), hiv = _mm256_set1_epi32((int32_t)hi);
    int32_t m = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(u + i));
        const __m256i in = _mm256_andnot_si256(_mm256_cmpgt_epi32(v, hiv), _mm256_cmpgt_epi32(v, lov));
        const uint32_t k = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(in));
        _mm256_storeu_si256((__m256i *)(cand + m), compress_256(v, k));
        m += __builtin_popcount(k);
    }
    return lr_topk_gather_tail(u, i, n, lo, hi, cand, m);
}

AVX2 static int32_t take_256(const uint32_t *u, int32_t n, uint32_t t, int32_t *idx) {
    const __m256i tv = _mm256_set1_epi32((int32_t)t - 1), step = _mm256_set1_epi32(8);   /* >= t: > t - 1 */
    __m256i iv = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    int32_t out = 0, i = 0;
    if (t == 0) {   /* every key */
        for (; i < n; i++) idx[i] = i;
        return n;
    }
    for (; i + 8 <= n; i += 8, iv = _mm256_add_epi32(iv, step)) {
        const __m256i ge = _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i *)(u + i)), tv);
        const uint32_t k = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(ge));
        _mm256_storeu_si256((__m256i *)(idx + out), compress_256(iv, k));
        out += __builtin_popcount(k);
    }
    return lr_topk_take_tail(u, i, n, t, idx, out);
}

static const lr_topk_ops topk_ops_256 = {keys_256, count_gt_256, gather_256, take_256};

static int32_t topk_256(const float *x, int32_t n, int32_t k, int32_t *idx, uint32_t *scratch) {
    return lr_topk_bracket(x, n, k, idx, scratch, &topk_ops_256);
}

const lr_kernel_table lr_kernels_avx2 = {
    {spmv_f32_256, spmv_f16_256},
    {dot_f32_256, dot_f16_256},
    {attn_scores_f32_256, attn_scores_f16_256, attn_scores_q8_0_256},
    {attn_values_f32_256, attn_values_f16_256, attn_values_q8_0_256},
    topk_256,
};

#endif

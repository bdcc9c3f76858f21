/* AVX2 and AVX-512 kernels. Compiled on any x86-64 through per-function target attributes and
 * chosen at run time (kernels.c), so one build runs everywhere; each mirrors a scalar kernel.
 *
 * spmv walks the selected rows in their (ascending) order, four at a time, each over the thread's
 * whole column range: every row segment is one contiguous read that the prefetchers follow, and y
 * (a few KiB per thread) stays in L1, loaded and stored once per four rows. The two ISAs share the
 * kernel bodies below; only the vector type and the block decoders differ.
 */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "kernels.h"

#define ROW_OF(j) (idx ? idx[j] : (j))
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

/* ---- shared kernel bodies ------------------------------------------------------------------ */

/* quantized: QV vectors of V floats per 32-value block; DECODE(block, VEC v[QV]) gives q as floats */
#define SPMV_Q(ATTR, NAME, BLOCK, VEC, QV, LOAD, STORE, SET1, ZERO, FMA, DECODE)                   \
    ATTR static void NAME(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k,       \
                          float *y, int32_t c0, int32_t c1) {                                      \
        const int32_t b0 = c0 / QK, nb = c1 / QK - b0, V = QK / QV;                                \
        float *yb = y + (int64_t)b0 * QK;                                                          \
        for (int32_t t = 0; t < nb * QV; t++) STORE(yb + V * t, ZERO());                           \
        int32_t j = 0;                                                                             \
        for (; j + 4 <= k; j += 4) {                                                               \
            const BLOCK *r[4];                                                                     \
            float a[4];                                                                            \
            for (int u = 0; u < 4; u++) {                                                          \
                const int32_t i = ROW_OF(j + u);                                                   \
                r[u] = (const BLOCK *)lr_row(w, i) + b0;                                           \
                a[u] = x[i];                                                                       \
            }                                                                                      \
            for (int32_t b = 0; b < nb; b++) {                                                     \
                VEC acc[QV], q[QV];                                                                \
                for (int t = 0; t < QV; t++) acc[t] = LOAD(yb + b * QK + V * t);                   \
                _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) {                              \
                    const VEC s = SET1(a[u] * _cvtsh_ss(r[u][b].d));                               \
                    DECODE(&r[u][b], q);                                                           \
                    for (int t = 0; t < QV; t++) acc[t] = FMA(s, q[t], acc[t]);                    \
                }                                                                                  \
                for (int t = 0; t < QV; t++) STORE(yb + b * QK + V * t, acc[t]);                   \
            }                                                                                      \
        }                                                                                          \
        for (; j < k; j++) {                                                                       \
            const int32_t i = ROW_OF(j);                                                           \
            const BLOCK *r = (const BLOCK *)lr_row(w, i) + b0;                                     \
            for (int32_t b = 0; b < nb; b++) {                                                     \
                const VEC s = SET1(x[i] * _cvtsh_ss(r[b].d));                                      \
                VEC q[QV];                                                                         \
                DECODE(&r[b], q);                                                                  \
                for (int t = 0; t < QV; t++)                                                       \
                    STORE(yb + b * QK + V * t, FMA(s, q[t], LOAD(yb + b * QK + V * t)));          \
            }                                                                                      \
        }                                                                                          \
    }

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

/* panels (prefill): P[k][0:32] = W[k][c0:c0+32] as floats */
#define PANEL_Q(ATTR, NAME, BLOCK, VEC, QV, STORE, SET1, MUL, DECODE)                              \
    ATTR static void NAME(const lr_tensor *w, int32_t c0, float *P) {                              \
        for (int32_t k = 0; k < w->rows; k++) {                                                    \
            const BLOCK *b = (const BLOCK *)lr_row(w, k) + c0 / QK;                                \
            const VEC d = SET1(_cvtsh_ss(b->d));                                                   \
            VEC q[QV];                                                                             \
            DECODE(b, q);                                                                          \
            for (int t = 0; t < QV; t++) STORE(P + (int64_t)k * QK + t * (QK / QV), MUL(d, q[t])); \
        }                                                                                          \
    }
#define PANEL_F(ATTR, NAME, V, STORE, LDW)                                                         \
    ATTR static void NAME(const lr_tensor *w, int32_t c0, float *P) {                              \
        for (int32_t k = 0; k < w->rows; k++)                                                      \
            for (int t = 0; t < QK / V; t++) STORE(P + (int64_t)k * QK + t * V, LDW(lr_row(w, k), c0 + t * V)); \
    }

/* ================================ AVX-512 ================================================== */

AVX512 static inline void q8_512(const block_q8_0 *b, __m512 v[2]) {
    v[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b->qs)));
    v[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b->qs + 16))));
}
AVX512 static inline void q4_512(const block_q4_0 *b, __m512 v[2]) {
    const __m128i q = _mm_loadu_si128((const __m128i *)b->qs), m = _mm_set1_epi8(0x0f), e = _mm_set1_epi8(8);
    v[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_sub_epi8(_mm_and_si128(q, m), e)));
    v[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m), e)));
}
AVX512 static inline __m512 ldw_f32_512(const void *row, int64_t c) { return _mm512_loadu_ps((const float *)row + c); }
AVX512 static inline __m512 ldw_f16_512(const void *row, int64_t c) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + c)));
}
AVX512 static inline float ld1_f32_512(const void *row, int64_t c) { return ((const float *)row)[c]; }
AVX512 static inline float ld1_f16_512(const void *row, int64_t c) { return _cvtsh_ss(((const uint16_t *)row)[c]); }

/* a * d for `count` (<= 16) consecutive blocks of a row, by one gather of the fp16 scales */
#define SCALES_512(NAME, BLOCK)                                                                    \
    AVX512 static inline void NAME(const BLOCK *r, int32_t count, float a, float *out) {           \
        const __mmask16 live = (__mmask16)((1u << count) - 1);                                     \
        const __m512i off = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), \
                                               _mm512_set1_epi32((int)sizeof(BLOCK)));             \
        const __m512i raw = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, off, r, 1);  \
        const __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(raw));                             \
        _mm512_storeu_ps(out, _mm512_mul_ps(d, _mm512_set1_ps(a)));                                \
    }
SCALES_512(scales_q8_512, block_q8_0)
SCALES_512(scales_q4_512, block_q4_0)

/* AVX-512 quantized spmv: as SPMV_Q, with the scales of 16 blocks of each row gathered at once */
#define SPMV_QG_512(NAME, BLOCK, DECODE, SCALES)                                                   \
    AVX512 static void NAME(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k,     \
                            float *y, int32_t c0, int32_t c1) {                                    \
        const int32_t b0 = c0 / QK, nb = c1 / QK - b0;                                             \
        float *yb = y + (int64_t)b0 * QK;                                                          \
        for (int32_t t = 0; t < nb * 2; t++) _mm512_storeu_ps(yb + 16 * t, _mm512_setzero_ps());   \
        float sc[4][16];                                                                           \
        for (int32_t j = 0; j < k; j += 4) {                                                       \
            const int rows = k - j < 4 ? k - j : 4;                                                \
            const BLOCK *r[4];                                                                     \
            float a[4];                                                                            \
            for (int u = 0; u < 4; u++) {                                                          \
                const int32_t i = ROW_OF(j + (u < rows ? u : 0));                                  \
                r[u] = (const BLOCK *)lr_row(w, i) + b0;                                           \
                a[u] = u < rows ? x[i] : 0.0f;   /* missing rows: weight 0 on a real row */        \
            }                                                                                      \
            /* missing rows: scale 0 (not 0 * d: an inf scale would make NaN) */                   \
            for (int u = rows; u < 4; u++) memset(sc[u], 0, sizeof sc[u]);                         \
            for (int32_t c = 0; c < nb; c += 16) {                                                 \
                const int32_t count = nb - c < 16 ? nb - c : 16;                                   \
                for (int u = 0; u < rows; u++) SCALES(r[u] + c, count, a[u], sc[u]);              \
                for (int32_t b = c; b < c + count; b++) {                                          \
                    __m512 lo = _mm512_loadu_ps(yb + b * QK), hi = _mm512_loadu_ps(yb + b * QK + 16), q[2]; \
                    _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) {                          \
                        const __m512 s = _mm512_set1_ps(sc[u][b - c]);                             \
                        DECODE(&r[u][b], q);                                                       \
                        lo = _mm512_fmadd_ps(s, q[0], lo);                                         \
                        hi = _mm512_fmadd_ps(s, q[1], hi);                                         \
                    }                                                                              \
                    _mm512_storeu_ps(yb + b * QK, lo);                                             \
                    _mm512_storeu_ps(yb + b * QK + 16, hi);                                        \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }
SPMV_QG_512(spmv_q8_0_512, block_q8_0, q8_512, scales_q8_512)
SPMV_QG_512(spmv_q4_0_512, block_q4_0, q4_512, scales_q4_512)
SPMV_F(AVX512, spmv_f32_512, __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps,
       _mm512_setzero_ps, _mm512_fmadd_ps, ldw_f32_512, ld1_f32_512)
SPMV_F(AVX512, spmv_f16_512, __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps,
       _mm512_setzero_ps, _mm512_fmadd_ps, ldw_f16_512, ld1_f16_512)

/* dot products over rows (the output-major head): one row at a time, two accumulators */
#define DOT_Q_512(NAME, BLOCK, DECODE)                                                             \
    AVX512 static void NAME(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1) { \
        const int32_t nb = w->cols / QK;                                                           \
        for (int32_t r = r0; r < r1; r++) {                                                        \
            const BLOCK *b = (const BLOCK *)lr_row(w, r);                                          \
            __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), v[2];                   \
            for (int32_t blk = 0; blk < nb; blk++) {                                               \
                const __m512 d = _mm512_set1_ps(_cvtsh_ss(b[blk].d));                              \
                DECODE(&b[blk], v);                                                                \
                acc0 = _mm512_fmadd_ps(_mm512_mul_ps(d, v[0]), _mm512_loadu_ps(x + blk * QK), acc0); \
                acc1 = _mm512_fmadd_ps(_mm512_mul_ps(d, v[1]), _mm512_loadu_ps(x + blk * QK + 16), acc1); \
            }                                                                                      \
            y[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));                                \
        }                                                                                          \
    }
DOT_Q_512(dot_q8_0_512, block_q8_0, q8_512)
DOT_Q_512(dot_q4_0_512, block_q4_0, q4_512)

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

/* batch x panel: 6 rows of X at a time against the 32 panel columns (12 accumulators) */
AVX512 static void gemm32_512(const float *X, int32_t ldx, const float *P, int32_t K, float *C, int32_t ldc, int32_t n) {
    int32_t t = 0;
    for (; t + 6 <= n; t += 6) {
        __m512 acc[6][2];
        for (int u = 0; u < 6; u++) acc[u][0] = acc[u][1] = _mm512_setzero_ps();
        const float *x = X + (int64_t)t * ldx;
        for (int32_t k = 0; k < K; k++) {
            const __m512 p0 = _mm512_loadu_ps(P + (int64_t)k * QK), p1 = _mm512_loadu_ps(P + (int64_t)k * QK + 16);
            _Pragma("GCC unroll 6") for (int u = 0; u < 6; u++) {
                const __m512 xb = _mm512_set1_ps(x[(int64_t)u * ldx + k]);
                acc[u][0] = _mm512_fmadd_ps(xb, p0, acc[u][0]);
                acc[u][1] = _mm512_fmadd_ps(xb, p1, acc[u][1]);
            }
        }
        for (int u = 0; u < 6; u++) {
            _mm512_storeu_ps(C + (int64_t)(t + u) * ldc, acc[u][0]);
            _mm512_storeu_ps(C + (int64_t)(t + u) * ldc + 16, acc[u][1]);
        }
    }
    for (; t < n; t++) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        const float *x = X + (int64_t)t * ldx;
        for (int32_t k = 0; k < K; k++) {
            const __m512 xb = _mm512_set1_ps(x[k]);
            a0 = _mm512_fmadd_ps(xb, _mm512_loadu_ps(P + (int64_t)k * QK), a0);
            a1 = _mm512_fmadd_ps(xb, _mm512_loadu_ps(P + (int64_t)k * QK + 16), a1);
        }
        _mm512_storeu_ps(C + (int64_t)t * ldc, a0);
        _mm512_storeu_ps(C + (int64_t)t * ldc + 16, a1);
    }
}

PANEL_Q(AVX512, panel_q8_0_512, block_q8_0, __m512, 2, _mm512_storeu_ps, _mm512_set1_ps, _mm512_mul_ps, q8_512)
PANEL_Q(AVX512, panel_q4_0_512, block_q4_0, __m512, 2, _mm512_storeu_ps, _mm512_set1_ps, _mm512_mul_ps, q4_512)
PANEL_F(AVX512, panel_f32_512, 16, _mm512_storeu_ps, ldw_f32_512)
PANEL_F(AVX512, panel_f16_512, 16, _mm512_storeu_ps, ldw_f16_512)

const lr_kernel_table lr_kernels_avx512 = {
    {spmv_f32_512, spmv_f16_512, spmv_q8_0_512, spmv_q4_0_512},
    {dot_f32_512, dot_f16_512, dot_q8_0_512, dot_q4_0_512},
    gemm32_512,
    {panel_f32_512, panel_f16_512, panel_q8_0_512, panel_q4_0_512},
};

/* ================================ AVX2 ===================================================== */

AVX2 static inline void q8_256(const block_q8_0 *b, __m256 v[4]) {
    for (int t = 0; t < 4; t++)
        v[t] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + 8 * t))));
}
AVX2 static inline void q4_256(const block_q4_0 *b, __m256 v[4]) {
    const __m128i q = _mm_loadu_si128((const __m128i *)b->qs), m = _mm_set1_epi8(0x0f), e = _mm_set1_epi8(8);
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m), e);
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m), e);
    v[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    v[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
    v[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    v[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}
AVX2 static inline __m256 ldw_f32_256(const void *row, int64_t c) { return _mm256_loadu_ps((const float *)row + c); }
AVX2 static inline __m256 ldw_f16_256(const void *row, int64_t c) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + c)));
}
AVX2 static inline float ld1_f32_256(const void *row, int64_t c) { return ((const float *)row)[c]; }
AVX2 static inline float ld1_f16_256(const void *row, int64_t c) { return _cvtsh_ss(((const uint16_t *)row)[c]); }

SPMV_Q(AVX2, spmv_q8_0_256, block_q8_0, __m256, 4, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps,
       _mm256_setzero_ps, _mm256_fmadd_ps, q8_256)
SPMV_Q(AVX2, spmv_q4_0_256, block_q4_0, __m256, 4, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps,
       _mm256_setzero_ps, _mm256_fmadd_ps, q4_256)
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

#define DOT_Q_256(NAME, BLOCK, DECODE)                                                             \
    AVX2 static void NAME(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1) {  \
        const int32_t nb = w->cols / QK;                                                           \
        for (int32_t r = r0; r < r1; r++) {                                                        \
            const BLOCK *b = (const BLOCK *)lr_row(w, r);                                          \
            __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                         \
            for (int32_t blk = 0; blk < nb; blk++) {                                               \
                const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[blk].d));                              \
                const float *xb = x + blk * QK;                                                    \
                __m256 v[4];                                                                       \
                DECODE(&b[blk], v);                                                                \
                __m256 s = _mm256_mul_ps(v[0], _mm256_loadu_ps(xb));                               \
                s = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(xb + 8), s);                             \
                __m256 s2 = _mm256_mul_ps(v[2], _mm256_loadu_ps(xb + 16));                         \
                s2 = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xb + 24), s2);                          \
                acc0 = _mm256_fmadd_ps(d, s, acc0);                                                \
                acc1 = _mm256_fmadd_ps(d, s2, acc1);                                               \
            }                                                                                      \
            y[r] = hsum_256(_mm256_add_ps(acc0, acc1));                                            \
        }                                                                                          \
    }
DOT_Q_256(dot_q8_0_256, block_q8_0, q8_256)
DOT_Q_256(dot_q4_0_256, block_q4_0, q4_256)

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

/* batch x panel: 3 rows of X at a time against the 32 panel columns (12 accumulators) */
AVX2 static void gemm32_256(const float *X, int32_t ldx, const float *P, int32_t K, float *C, int32_t ldc, int32_t n) {
    int32_t t = 0;
    for (; t + 3 <= n; t += 3) {
        __m256 acc[3][4];
        for (int u = 0; u < 3; u++)
            for (int v = 0; v < 4; v++) acc[u][v] = _mm256_setzero_ps();
        const float *x = X + (int64_t)t * ldx;
        for (int32_t k = 0; k < K; k++) {
            __m256 p[4];
            for (int v = 0; v < 4; v++) p[v] = _mm256_loadu_ps(P + (int64_t)k * QK + 8 * v);
            _Pragma("GCC unroll 3") for (int u = 0; u < 3; u++) {
                const __m256 xb = _mm256_set1_ps(x[(int64_t)u * ldx + k]);
                for (int v = 0; v < 4; v++) acc[u][v] = _mm256_fmadd_ps(xb, p[v], acc[u][v]);
            }
        }
        for (int u = 0; u < 3; u++)
            for (int v = 0; v < 4; v++) _mm256_storeu_ps(C + (int64_t)(t + u) * ldc + 8 * v, acc[u][v]);
    }
    for (; t < n; t++) {
        __m256 acc[4];
        for (int v = 0; v < 4; v++) acc[v] = _mm256_setzero_ps();
        const float *x = X + (int64_t)t * ldx;
        for (int32_t k = 0; k < K; k++) {
            const __m256 xb = _mm256_set1_ps(x[k]);
            for (int v = 0; v < 4; v++) acc[v] = _mm256_fmadd_ps(xb, _mm256_loadu_ps(P + (int64_t)k * QK + 8 * v), acc[v]);
        }
        for (int v = 0; v < 4; v++) _mm256_storeu_ps(C + (int64_t)t * ldc + 8 * v, acc[v]);
    }
}

PANEL_Q(AVX2, panel_q8_0_256, block_q8_0, __m256, 4, _mm256_storeu_ps, _mm256_set1_ps, _mm256_mul_ps, q8_256)
PANEL_Q(AVX2, panel_q4_0_256, block_q4_0, __m256, 4, _mm256_storeu_ps, _mm256_set1_ps, _mm256_mul_ps, q4_256)
PANEL_F(AVX2, panel_f32_256, 8, _mm256_storeu_ps, ldw_f32_256)
PANEL_F(AVX2, panel_f16_256, 8, _mm256_storeu_ps, ldw_f16_256)

const lr_kernel_table lr_kernels_avx2 = {
    {spmv_f32_256, spmv_f16_256, spmv_q8_0_256, spmv_q4_0_256},
    {dot_f32_256, dot_f16_256, dot_q8_0_256, dot_q4_0_256},
    gemm32_256,
    {panel_f32_256, panel_f16_256, panel_q8_0_256, panel_q4_0_256},
};

#endif

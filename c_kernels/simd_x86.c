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

/* panels (prefill): P[k][0:32] = W[k][c0:c0+32] as floats */
#define PANEL_F(ATTR, NAME, V, STORE, LDW)                                                         \
    ATTR static void NAME(const lr_tensor *w, int32_t c0, float *P) {                              \
        for (int32_t k = 0; k < w->rows; k++)                                                      \
            for (int t = 0; t < QK / V; t++) STORE(P + (int64_t)k * QK + t * V, LDW(lr_row(w, k), c0 + t * V)); \
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

PANEL_F(AVX512, panel_f32_512, 16, _mm512_storeu_ps, ldw_f32_512)
PANEL_F(AVX512, panel_f16_512, 16, _mm512_storeu_ps, ldw_f16_512)

const lr_kernel_table lr_kernels_avx512 = {
    {spmv_f32_512, spmv_f16_512},
    {dot_f32_512, dot_f16_512},
    gemm32_512,
    {panel_f32_512, panel_f16_512},
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

PANEL_F(AVX2, panel_f32_256, 8, _mm256_storeu_ps, ldw_f32_256)
PANEL_F(AVX2, panel_f16_256, 8, _mm256_storeu_ps, ldw_f16_256)

const lr_kernel_table lr_kernels_avx2 = {
    {spmv_f32_256, spmv_f16_256},
    {dot_f32_256, dot_f16_256},
    gemm32_256,
    {panel_f32_256, panel_f16_256},
};

#endif

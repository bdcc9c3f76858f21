/* AVX2 and AVX-512 kernels. Compiled on any x86-64 through per-function target attributes and
 * chosen at run time (kernels.c), so one build runs everywhere; each mirrors a scalar kernel.
 *
 * spmv keeps a tile of output columns in registers while it walks the selected rows: each weight
 * row segment is read once and y is written once per tile.
 */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "kernels.h"

#define ROW_OF(j) (idx ? idx[j] : (j))
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

/* ================================ AVX-512 ================================================== */

AVX512 static inline __m512 q8_lo_512(const block_q8_0 *b) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b->qs)));
}
AVX512 static inline __m512 q8_hi_512(const block_q8_0 *b) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b->qs + 16))));
}
AVX512 static inline void q4_512(const block_q4_0 *b, __m512 *lo, __m512 *hi) {
    const __m128i q = _mm_loadu_si128((const __m128i *)b->qs), m = _mm_set1_epi8(0x0f), e = _mm_set1_epi8(8);
    *lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_sub_epi8(_mm_and_si128(q, m), e)));
    *hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m), e)));
}

/* quantized spmv, 8 blocks (256 columns, 16 accumulators) per tile */
#define SPMV_Q_512(NAME, BLOCK, DECODE)                                                            \
    AVX512 static void NAME(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k,     \
                            float *y, int32_t c0, int32_t c1) {                                    \
        int32_t b = c0 / QK;                                                                       \
        const int32_t bend = c1 / QK;                                                              \
        for (; b + 8 <= bend; b += 8) {                                                            \
            __m512 acc[16];                                                                        \
            for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();                             \
            for (int32_t j = 0; j < k; j++) {                                                      \
                const int32_t i = ROW_OF(j);                                                       \
                const BLOCK *bl = (const BLOCK *)lr_row(w, i) + b;                                 \
                if (j + 1 < k) _mm_prefetch((const char *)((const BLOCK *)lr_row(w, ROW_OF(j + 1)) + b), _MM_HINT_T0); \
                const float a = x[i];                                                              \
                _Pragma("GCC unroll 8") for (int t = 0; t < 8; t++) {                              \
                    const __m512 s = _mm512_set1_ps(a * _cvtsh_ss(bl[t].d));                       \
                    __m512 lo, hi;                                                                 \
                    DECODE(&bl[t], &lo, &hi);                                                      \
                    acc[2 * t] = _mm512_fmadd_ps(s, lo, acc[2 * t]);                               \
                    acc[2 * t + 1] = _mm512_fmadd_ps(s, hi, acc[2 * t + 1]);                       \
                }                                                                                  \
            }                                                                                      \
            for (int t = 0; t < 16; t++) _mm512_storeu_ps(y + (int64_t)b * QK + 16 * t, acc[t]);   \
        }                                                                                          \
        for (; b < bend; b++) {                                                                    \
            __m512 lo_acc = _mm512_setzero_ps(), hi_acc = _mm512_setzero_ps();                     \
            for (int32_t j = 0; j < k; j++) {                                                      \
                const int32_t i = ROW_OF(j);                                                       \
                const BLOCK *bl = (const BLOCK *)lr_row(w, i) + b;                                 \
                const __m512 s = _mm512_set1_ps(x[i] * _cvtsh_ss(bl->d));                          \
                __m512 lo, hi;                                                                     \
                DECODE(bl, &lo, &hi);                                                              \
                lo_acc = _mm512_fmadd_ps(s, lo, lo_acc);                                           \
                hi_acc = _mm512_fmadd_ps(s, hi, hi_acc);                                           \
            }                                                                                      \
            _mm512_storeu_ps(y + (int64_t)b * QK, lo_acc);                                         \
            _mm512_storeu_ps(y + (int64_t)b * QK + 16, hi_acc);                                    \
        }                                                                                          \
    }

AVX512 static inline void dec_q8_512(const block_q8_0 *b, __m512 *lo, __m512 *hi) {
    *lo = q8_lo_512(b);
    *hi = q8_hi_512(b);
}
SPMV_Q_512(spmv_q8_0_512, block_q8_0, dec_q8_512)
SPMV_Q_512(spmv_q4_0_512, block_q4_0, q4_512)

AVX512 static inline __m512 ld_f32_512(const void *row, int64_t c) { return _mm512_loadu_ps((const float *)row + c); }
AVX512 static inline __m512 ld_f16_512(const void *row, int64_t c) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + c)));
}
AVX512 static inline float ld1_f32(const void *row, int64_t c) { return ((const float *)row)[c]; }
AVX512 static inline float ld1_f16(const void *row, int64_t c) { return _cvtsh_ss(((const uint16_t *)row)[c]); }

/* float spmv: tiles of 256 columns, then 16-wide chunks, then a scalar tail */
#define SPMV_F_512(NAME, LD, LD1)                                                                  \
    AVX512 static void NAME(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k,     \
                            float *y, int32_t c0, int32_t c1) {                                    \
        int32_t c = c0;                                                                            \
        for (; c + 256 <= c1; c += 256) {                                                          \
            __m512 acc[16];                                                                        \
            for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();                             \
            for (int32_t j = 0; j < k; j++) {                                                      \
                const int32_t i = ROW_OF(j);                                                       \
                const void *row = lr_row(w, i);                                                    \
                const __m512 a = _mm512_set1_ps(x[i]);                                             \
                _Pragma("GCC unroll 16") for (int t = 0; t < 16; t++)                              \
                    acc[t] = _mm512_fmadd_ps(a, LD(row, c + 16 * t), acc[t]);                      \
            }                                                                                      \
            for (int t = 0; t < 16; t++) _mm512_storeu_ps(y + c + 16 * t, acc[t]);                 \
        }                                                                                          \
        for (; c + 16 <= c1; c += 16) {                                                            \
            __m512 acc = _mm512_setzero_ps();                                                      \
            for (int32_t j = 0; j < k; j++) {                                                      \
                const int32_t i = ROW_OF(j);                                                       \
                acc = _mm512_fmadd_ps(_mm512_set1_ps(x[i]), LD(lr_row(w, i), c), acc);            \
            }                                                                                      \
            _mm512_storeu_ps(y + c, acc);                                                          \
        }                                                                                          \
        for (; c < c1; c++) {                                                                      \
            float s = 0.0f;                                                                        \
            for (int32_t j = 0; j < k; j++) s += x[ROW_OF(j)] * LD1(lr_row(w, ROW_OF(j)), c);      \
            y[c] = s;                                                                              \
        }                                                                                          \
    }

SPMV_F_512(spmv_f32_512, ld_f32_512, ld1_f32)
SPMV_F_512(spmv_f16_512, ld_f16_512, ld1_f16)

/* dot products over rows (output-major head) */
AVX512 static void dot_q8_0_512(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1) {
    const int32_t nb = w->cols / QK;
    for (int32_t r = r0; r < r1; r++) {
        const block_q8_0 *b = (const block_q8_0 *)lr_row(w, r);
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        for (int32_t blk = 0; blk < nb; blk++) {
            const __m512 d = _mm512_set1_ps(_cvtsh_ss(b[blk].d));
            acc0 = _mm512_fmadd_ps(_mm512_mul_ps(d, q8_lo_512(&b[blk])), _mm512_loadu_ps(x + blk * QK), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_mul_ps(d, q8_hi_512(&b[blk])), _mm512_loadu_ps(x + blk * QK + 16), acc1);
        }
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    }
}

AVX512 static void dot_q4_0_512(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1) {
    const int32_t nb = w->cols / QK;
    for (int32_t r = r0; r < r1; r++) {
        const block_q4_0 *b = (const block_q4_0 *)lr_row(w, r);
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        for (int32_t blk = 0; blk < nb; blk++) {
            const __m512 d = _mm512_set1_ps(_cvtsh_ss(b[blk].d));
            __m512 lo, hi;
            q4_512(&b[blk], &lo, &hi);
            acc0 = _mm512_fmadd_ps(_mm512_mul_ps(d, lo), _mm512_loadu_ps(x + blk * QK), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_mul_ps(d, hi), _mm512_loadu_ps(x + blk * QK + 16), acc1);
        }
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    }
}

#define DOT_F_512(NAME, LD, LD1)                                                                   \
    AVX512 static void NAME(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1) { \
        for (int32_t r = r0; r < r1; r++) {                                                        \
            const void *row = lr_row(w, r);                                                        \
            __m512 acc = _mm512_setzero_ps();                                                      \
            int32_t c = 0;                                                                         \
            for (; c + 16 <= w->cols; c += 16) acc = _mm512_fmadd_ps(LD(row, c), _mm512_loadu_ps(x + c), acc); \
            float s = _mm512_reduce_add_ps(acc);                                                   \
            for (; c < w->cols; c++) s += LD1(row, c) * x[c];                                      \
            y[r] = s;                                                                              \
        }                                                                                          \
    }
DOT_F_512(dot_f32_512, ld_f32_512, ld1_f32)
DOT_F_512(dot_f16_512, ld_f16_512, ld1_f16)

const lr_kernel_table lr_kernels_avx512 = {
    {spmv_f32_512, spmv_f16_512, spmv_q8_0_512, spmv_q4_0_512},
    {dot_f32_512, dot_f16_512, dot_q8_0_512, dot_q4_0_512},
};

/* ================================ AVX2 ===================================================== */

/* a 32-value block as four 8-wide vectors */
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

/* quantized spmv, 2 blocks (64 columns, 8 accumulators) per tile */
#define SPMV_Q_256(NAME, BLOCK, DECODE)                                                            \
    AVX2 static void NAME(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k,       \
                          float *y, int32_t c0, int32_t c1) {                                      \
        int32_t b = c0 / QK;                                                                       \
        const int32_t bend = c1 / QK;                                                              \
        for (; b + 2 <= bend; b += 2) {                                                            \
            __m256 acc[8];                                                                         \
            for (int t = 0; t < 8; t++) acc[t] = _mm256_setzero_ps();                              \
            for (int32_t j = 0; j < k; j++) {                                                      \
                const int32_t i = ROW_OF(j);                                                       \
                const BLOCK *bl = (const BLOCK *)lr_row(w, i) + b;                                 \
                const float a = x[i];                                                              \
                _Pragma("GCC unroll 2") for (int t = 0; t < 2; t++) {                              \
                    const __m256 s = _mm256_set1_ps(a * _cvtsh_ss(bl[t].d));                       \
                    __m256 v[4];                                                                   \
                    DECODE(&bl[t], v);                                                             \
                    _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++)                            \
                        acc[4 * t + u] = _mm256_fmadd_ps(s, v[u], acc[4 * t + u]);                 \
                }                                                                                  \
            }                                                                                      \
            for (int t = 0; t < 8; t++) _mm256_storeu_ps(y + (int64_t)b * QK + 8 * t, acc[t]);    \
        }                                                                                          \
        for (; b < bend; b++) {                                                                    \
            __m256 acc[4];                                                                         \
            for (int t = 0; t < 4; t++) acc[t] = _mm256_setzero_ps();                              \
            for (int32_t j = 0; j < k; j++) {                                                      \
                const int32_t i = ROW_OF(j);                                                       \
                const BLOCK *bl = (const BLOCK *)lr_row(w, i) + b;                                 \
                const __m256 s = _mm256_set1_ps(x[i] * _cvtsh_ss(bl->d));                          \
                __m256 v[4];                                                                       \
                DECODE(bl, v);                                                                     \
                for (int u = 0; u < 4; u++) acc[u] = _mm256_fmadd_ps(s, v[u], acc[u]);             \
            }                                                                                      \
            for (int t = 0; t < 4; t++) _mm256_storeu_ps(y + (int64_t)b * QK + 8 * t, acc[t]);    \
        }                                                                                          \
    }
SPMV_Q_256(spmv_q8_0_256, block_q8_0, q8_256)
SPMV_Q_256(spmv_q4_0_256, block_q4_0, q4_256)

AVX2 static inline __m256 ld_f32_256(const void *row, int64_t c) { return _mm256_loadu_ps((const float *)row + c); }
AVX2 static inline __m256 ld_f16_256(const void *row, int64_t c) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + c)));
}
AVX2 static inline float ld1_f32_2(const void *row, int64_t c) { return ((const float *)row)[c]; }
AVX2 static inline float ld1_f16_2(const void *row, int64_t c) { return _cvtsh_ss(((const uint16_t *)row)[c]); }

#define SPMV_F_256(NAME, LD, LD1)                                                                  \
    AVX2 static void NAME(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k,       \
                          float *y, int32_t c0, int32_t c1) {                                      \
        int32_t c = c0;                                                                            \
        for (; c + 64 <= c1; c += 64) {                                                            \
            __m256 acc[8];                                                                         \
            for (int t = 0; t < 8; t++) acc[t] = _mm256_setzero_ps();                              \
            for (int32_t j = 0; j < k; j++) {                                                      \
                const int32_t i = ROW_OF(j);                                                       \
                const void *row = lr_row(w, i);                                                    \
                const __m256 a = _mm256_set1_ps(x[i]);                                             \
                _Pragma("GCC unroll 8") for (int t = 0; t < 8; t++)                                \
                    acc[t] = _mm256_fmadd_ps(a, LD(row, c + 8 * t), acc[t]);                       \
            }                                                                                      \
            for (int t = 0; t < 8; t++) _mm256_storeu_ps(y + c + 8 * t, acc[t]);                   \
        }                                                                                          \
        for (; c + 8 <= c1; c += 8) {                                                              \
            __m256 acc = _mm256_setzero_ps();                                                      \
            for (int32_t j = 0; j < k; j++) {                                                      \
                const int32_t i = ROW_OF(j);                                                       \
                acc = _mm256_fmadd_ps(_mm256_set1_ps(x[i]), LD(lr_row(w, i), c), acc);            \
            }                                                                                      \
            _mm256_storeu_ps(y + c, acc);                                                          \
        }                                                                                          \
        for (; c < c1; c++) {                                                                      \
            float s = 0.0f;                                                                        \
            for (int32_t j = 0; j < k; j++) s += x[ROW_OF(j)] * LD1(lr_row(w, ROW_OF(j)), c);      \
            y[c] = s;                                                                              \
        }                                                                                          \
    }
SPMV_F_256(spmv_f32_256, ld_f32_256, ld1_f32_2)
SPMV_F_256(spmv_f16_256, ld_f16_256, ld1_f16_2)

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

#define DOT_F_256(NAME, LD, LD1)                                                                   \
    AVX2 static void NAME(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1) {  \
        for (int32_t r = r0; r < r1; r++) {                                                        \
            const void *row = lr_row(w, r);                                                        \
            __m256 acc = _mm256_setzero_ps();                                                      \
            int32_t c = 0;                                                                         \
            for (; c + 8 <= w->cols; c += 8) acc = _mm256_fmadd_ps(LD(row, c), _mm256_loadu_ps(x + c), acc); \
            float s = hsum_256(acc);                                                               \
            for (; c < w->cols; c++) s += LD1(row, c) * x[c];                                      \
            y[r] = s;                                                                              \
        }                                                                                          \
    }
DOT_F_256(dot_f32_256, ld_f32_256, ld1_f32_2)
DOT_F_256(dot_f16_256, ld_f16_256, ld1_f16_2)

const lr_kernel_table lr_kernels_avx2 = {
    {spmv_f32_256, spmv_f16_256, spmv_q8_0_256, spmv_q4_0_256},
    {dot_f32_256, dot_f16_256, dot_q8_0_256, dot_q4_0_256},
};

#endif

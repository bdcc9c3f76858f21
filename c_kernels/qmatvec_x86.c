/* Integer kernels for x86: AVX-512 with VNNI (vpdpbusd: 4 u8 x s8 products per int32 lane) and
 * AVX2 (vpmaddubsw + vpmaddwd). Each mirrors a reference in qmatvec.c and gives bit-identical
 * results: the integer sums are exact and the float steps run in the reference's order.
 *
 * Input-major matvec (qspmv): the selected inputs of a group are taken 4 rows at a time (8 per pass
 * on AVX-512); the 4 rows' codes are interleaved byte-wise so that each int32 lane holds one
 * output's 4 products, and added into an int32 accumulator per output kept in L1 (L2 for wide
 * weights). AVX-512 interleaves with a cross-lane byte permute (VBMI) chosen so that the lanes come
 * out in column order: the group's flush (scale, add into y) needs no shuffles. Software prefetch
 * brings the next pass's rows into L2: each selected row starts a new stream (often a new page),
 * which the hardware prefetchers learn too late; the group's scales are prefetched in its first
 * pass (a sparse group reads all of its scales for fewer rows: 20 % of a 50 % Q4_0 matvec's bytes,
 * which stalled the flush when left to the hardware prefetchers).
 * vpdpbusd multiplies unsigned by signed bytes: Q8 codes are flipped to q + 128 (xor 0x80) and
 * 128 sum(xq) is taken off after; Q4 codes are stored as q + 8 and 8 sum(xq) is taken off.
 * vpmaddubsw saturates pairs of u8 x s8 products past 32767: Q8 uses |q| and sign(x, q) instead
 * (at most 2 * 127 * 127), Q4 codes are small enough as they are.
 */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "kernels.h"

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx2,fma,f16c")))
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T1)
#ifndef PF_ROWS
#define PF_ROWS 16     /* how far ahead (selected rows) the AVX-512 matvec prefetches */
#endif

int lr_cpu_has_vnni(void) {
    /* VBMI for the interleave: CPUs with VNNI and without it (Cascade Lake) run the AVX2 kernels */
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi");
}

/* ================================ AVX-512 VNNI ============================================= */

/* 64 codes of a row as unsigned bytes (q + off), columns c .. c + 63 */
VNNI static inline __m512i ld_q8_512(const uint8_t *row, int32_t c) {
    return _mm512_xor_si512(_mm512_loadu_si512(row + c), _mm512_set1_epi8((char)0x80));
}
VNNI static inline __m512i ld_q4_512(const uint8_t *row, int32_t c) {
    /* the chunk's 32 bytes in both halves; the high half takes the high nibbles */
    const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(row + c / 2)));
    return _mm512_and_si512(_mm512_mask_srli_epi16(v, 0xFFFF0000u, v, 4), _mm512_set1_epi8(0x0f));
}

/* The 4 rows' bytes j = 0 .. 63 interleaved so that int32 lane m of v[k] holds byte 16 k + m of
 * each row (rows in byte order): a two-source byte permute (vpermt2b, VBMI) puts the pairs (a, b)
 * and (c, d) where the in-lane 16-bit unpacks then leave every lane in column order. */
VNNI static inline void ilv4_512(__m512i a, __m512i b, __m512i c, __m512i d, __m512i v[4]) {
    static const int8_t IDX[2][64] = {
#define P(l, w) (((w) < 4 ? 4 * (l) + (w) : 16 + 4 * (l) + (w) - 4))
#define LANE(l, h) P(l, 0) + 32 * h, P(l, 0) + 32 * h + 64, P(l, 1) + 32 * h, P(l, 1) + 32 * h + 64, \
                   P(l, 2) + 32 * h, P(l, 2) + 32 * h + 64, P(l, 3) + 32 * h, P(l, 3) + 32 * h + 64, \
                   P(l, 4) + 32 * h, P(l, 4) + 32 * h + 64, P(l, 5) + 32 * h, P(l, 5) + 32 * h + 64, \
                   P(l, 6) + 32 * h, P(l, 6) + 32 * h + 64, P(l, 7) + 32 * h, P(l, 7) + 32 * h + 64
        {LANE(0, 0), LANE(1, 0), LANE(2, 0), LANE(3, 0)},
        {LANE(0, 1), LANE(1, 1), LANE(2, 1), LANE(3, 1)},
#undef LANE
#undef P
    };
    const __m512i i0 = _mm512_loadu_si512(IDX[0]), i1 = _mm512_loadu_si512(IDX[1]);
    const __m512i ab0 = _mm512_permutex2var_epi8(a, i0, b), ab1 = _mm512_permutex2var_epi8(a, i1, b);
    const __m512i cd0 = _mm512_permutex2var_epi8(c, i0, d), cd1 = _mm512_permutex2var_epi8(c, i1, d);
    v[0] = _mm512_unpacklo_epi16(ab0, cd0);
    v[1] = _mm512_unpackhi_epi16(ab0, cd0);
    v[2] = _mm512_unpacklo_epi16(ab1, cd1);
    v[3] = _mm512_unpackhi_epi16(ab1, cd1);
}

/* acc[k] (columns 16 k .. 16 k + 15) += 4 rows (a, b, c, d) x the 4 bytes of xv */
VNNI static inline void quad_512(__m512i a, __m512i b, __m512i c, __m512i d, __m512i xv, __m512i acc[4]) {
    __m512i v[4];
    ilv4_512(a, b, c, d, v);
    for (int k = 0; k < 4; k++) acc[k] = _mm512_dpbusd_epi32(acc[k], v[k], xv);
}

/* y[c .. c + 63] = fma(float(isum), d * dx, y) for the 4 accumulators v of exact sums isum */
VNNI static inline void flush_512(const __m512i v[4], const uint16_t *d, float dx, float *y) {
    const __m512 dxv = _mm512_set1_ps(dx);
    for (int t = 0; t < 4; t++) {
        const __m512 s = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(d + 16 * t))), dxv);
        const __m512 f = _mm512_cvtepi32_ps(v[t]);
        _mm512_storeu_ps(y + 16 * t, _mm512_fmadd_ps(f, s, _mm512_loadu_ps(y + 16 * t)));
    }
}

/* Q4, 128 columns per step: one 64-byte load per row holds two packed chunks; the 4 rows' bytes are
 * interleaved before the nibbles are split, so 4 loads and 8 permutes feed 8 vpdpbusd. Byte j of the
 * step is chunk j / 32, low nibble column 64 (j / 32) + j % 32, high nibble that + 32: acc[k] holds
 * columns COL4(k) .. +15, acc[4 + k] columns COL4(k) + 32 .. +15. */
#define COL4(k) (64 * ((k) / 2) + 16 * ((k) % 2))
VNNI static inline void quad_q4_128(const uint8_t *r0, const uint8_t *r1, const uint8_t *r2, const uint8_t *r3,
                                    __m512i xv, __m512i acc[8]) {
    const __m512i m = _mm512_set1_epi8(0x0f);
    __m512i v[4];
    ilv4_512(_mm512_loadu_si512(r0), _mm512_loadu_si512(r1), _mm512_loadu_si512(r2), _mm512_loadu_si512(r3), v);
    for (int k = 0; k < 4; k++) {
        acc[k] = _mm512_dpbusd_epi32(acc[k], _mm512_and_si512(v[k], m), xv);
        acc[4 + k] = _mm512_dpbusd_epi32(acc[4 + k], _mm512_and_si512(_mm512_srli_epi16(v[k], 4), m), xv);
    }
}

/* y[c .. c + 127] from the 8 accumulators of quad_q4_128 */
VNNI static inline void flush_q4_128(const __m512i v[8], const uint16_t *d, float dx, float *y) {
    const __m512 dxv = _mm512_set1_ps(dx);
    for (int t = 0; t < 8; t++) {
        const int32_t o = COL4(t % 4) + 32 * (t / 4);
        const __m512 s = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(d + o))), dxv);
        const __m512 f = _mm512_cvtepi32_ps(v[t]);
        _mm512_storeu_ps(y + o, _mm512_fmadd_ps(f, s, _mm512_loadu_ps(y + o)));
    }
}

/* The selected rows of each group, 8 per pass (4 in a group's last pass), over the columns [c0, c1)
 * in steps: Q8 64 columns (4 accumulators), Q4 128 (8 accumulators) and a last 64-column step when
 * the range has an odd number of chunks. The accumulators live in acc (L1) between the passes of a
 * group; the group's last pass scales them into y from the registers (a 16-row group of a 50 %
 * matvec stored and reloaded them once more per column step before: 1536x8960 Q4_0 1.78 -> 1.44 ms). */
#define QSPMV_512(NAME, RB, OFF, Q4)                                                               \
    VNNI static void NAME(const lr_tensor *w, const lr_qsel *s, float *y, int32_t c0, int32_t c1,  \
                          int32_t *acc) {                                                          \
        const uint8_t *codes = w->data;                                                            \
        const uint16_t *scale = w->scale;                                                          \
        const int64_t ld = (int64_t)w->cols * RB / 2;   /* bytes per row */                       \
        const int32_t wide = Q4 ? (c1 - c0) / 128 * 128 : 0;   /* [c0, c0 + wide): 128 per step */ \
        for (int32_t c = c0; c < c1; c += 16) _mm512_storeu_ps(y + c, _mm512_setzero_ps());        \
        for (int32_t gi = 0; gi < s->n_groups; gi++) {                                             \
            const int32_t j0 = s->start[gi], j1 = s->start[gi + 1];                                \
            const uint16_t *dg = scale + (int64_t)s->group[gi] * w->cols;                          \
            /* the accumulators start at -OFF sum(xq) (the code offset's share, exact in int32) */ \
            const __m512i ncorr = _mm512_set1_epi32(-OFF * s->sx[gi]);                             \
            const float dx = s->dx[gi];                                                            \
            for (int32_t j = j0; j < j1;) {                                                        \
                const int32_t nr = j1 - j >= 8 ? 8 : 4;   /* rows this pass */                     \
                /* rows two passes ahead (the groups' entries follow each other): each selected row \
                 * is a new stream, so its first lines are fetched while the rows before it run */ \
                const int32_t jn = j + PF_ROWS + 8 <= s->start[s->n_groups] ? j + PF_ROWS : j;      \
                const uint8_t *r[8], *p[8];                                                        \
                for (int u = 0; u < nr; u++) r[u] = codes + s->row[j + u] * ld;                    \
                for (int u = 0; u < 8; u++) p[u] = codes + s->row[jn + u] * ld;                    \
                int32_t x0, x1 = 0;                                                                \
                memcpy(&x0, s->xq + j, 4);                                                         \
                if (nr == 8) memcpy(&x1, s->xq + j + 4, 4);                                        \
                const __m512i xv0 = _mm512_set1_epi32(x0), xv1 = _mm512_set1_epi32(x1);            \
                const int first = j == j0, last = j + nr == j1;                                    \
                int32_t c = c0;                                                                    \
                for (; c < c0 + wide; c += 128) {   /* Q4: two chunks per step */                  \
                    const int64_t o = (c - 0) / 2;                                                 \
                    for (int u = 0; u < 8; u++) PREFETCH(p[u] + o);                                \
                    if (first) for (int t = 0; t < 4; t++) PREFETCH(dg + c + 32 * t);              \
                    int32_t *A = acc + (c - c0);                                                   \
                    __m512i a[8];                                                                  \
                    for (int t = 0; t < 8; t++) a[t] = first ? ncorr : _mm512_load_si512(A + 16 * t); \
                    quad_q4_128(r[0] + o, r[1] + o, r[2] + o, r[3] + o, xv0, a);                   \
                    if (nr == 8) quad_q4_128(r[4] + o, r[5] + o, r[6] + o, r[7] + o, xv1, a);      \
                    if (last) flush_q4_128(a, dg + c, dx, y + c);   /* from the registers */       \
                    else for (int t = 0; t < 8; t++) _mm512_store_si512(A + 16 * t, a[t]);         \
                }                                                                                  \
                for (; c < c1; c += 64) {                                                          \
                    if (RB == 2 || !((c - c0) & 64))                                               \
                        for (int u = 0; u < 8; u++) PREFETCH(p[u] + c * RB / 2);                   \
                    if (first) for (int t = 0; t < 2; t++) PREFETCH(dg + c + 32 * t);              \
                    int32_t *A = acc + (c - c0);                                                   \
                    __m512i a[4];                                                                  \
                    for (int t = 0; t < 4; t++) a[t] = first ? ncorr : _mm512_load_si512(A + 16 * t); \
                    quad_512(LOAD_##RB(r[0], c), LOAD_##RB(r[1], c), LOAD_##RB(r[2], c), LOAD_##RB(r[3], c), xv0, a); \
                    if (nr == 8)                                                                   \
                        quad_512(LOAD_##RB(r[4], c), LOAD_##RB(r[5], c), LOAD_##RB(r[6], c), LOAD_##RB(r[7], c), xv1, a); \
                    if (last) flush_512(a, dg + c, dx, y + c);                                     \
                    else for (int t = 0; t < 4; t++) _mm512_store_si512(A + 16 * t, a[t]);         \
                }                                                                                  \
                j += nr;                                                                           \
            }                                                                                      \
        }                                                                                          \
    }
#define LOAD_2 ld_q8_512
#define LOAD_1 ld_q4_512
QSPMV_512(qspmv_q8_512, 2, 128, 0)
QSPMV_512(qspmv_q4_512, 1, 8, 1)

/* Batched (prompt): per 64-column chunk, each group's 32 rows are interleaved once into a panel
 * (8 quads x 4 vectors) and every token of the batch multiplies it (the weights are read once per
 * batch); token t's partial outputs are added into Y's row t group by group. */
#define QGEMM_512(NAME, LOAD, RB, OFF)                                                             \
    VNNI static void NAME(const lr_tensor *w, const lr_qbatch *b, float *Y, int32_t ldy, int32_t c0, \
                          int32_t c1, void *scratch) {                                             \
        const uint8_t *codes = w->data;                                                            \
        const uint16_t *scale = w->scale;                                                          \
        const int64_t ld = (int64_t)w->cols * RB / 2;                                              \
        const int32_t G = w->rows / QK, n = b->n;                                                  \
        __m512i *panel = scratch;                      /* [8 quads][4] */                          \
        for (int32_t c = c0; c < c1; c += 64) {                                                    \
            for (int32_t tk = 0; tk < n; tk++)                                                     \
                for (int t = 0; t < 4; t++) _mm512_storeu_ps(Y + (int64_t)tk * ldy + c + 16 * t, _mm512_setzero_ps()); \
            for (int32_t g = b->g0; g < b->g1; g++) {                                              \
                const uint8_t *r = codes + (int64_t)g * QK * ld;                                   \
                for (int q = 0; q < 8; q++)                                                        \
                    ilv4_512(LOAD(r + (4 * q) * ld, c), LOAD(r + (4 * q + 1) * ld, c),             \
                             LOAD(r + (4 * q + 2) * ld, c), LOAD(r + (4 * q + 3) * ld, c), panel + 4 * q); \
                if (g + 1 < b->g1)                                                                 \
                    for (int i = 0; i < QK; i++) PREFETCH(r + (QK + i) * ld + c * RB / 2);         \
                __m512 sc[4];                                                                      \
                const uint16_t *dg = scale + (int64_t)g * w->cols + c;                             \
                for (int t = 0; t < 4; t++) sc[t] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(dg + 16 * t))); \
                for (int32_t tk = 0; tk < n; tk++) {                                               \
                    if (!b->has[(int64_t)tk * G + g]) continue;                                    \
                    const int8_t *xq = b->xq + (int64_t)tk * w->rows + g * QK;                     \
                    __m512i a[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(),                \
                                    _mm512_setzero_si512(), _mm512_setzero_si512()};               \
                    for (int q = 0; q < 8; q++) {                                                  \
                        int32_t xw;                                                                \
                        memcpy(&xw, xq + 4 * q, 4);                                                \
                        const __m512i xv = _mm512_set1_epi32(xw);                                  \
                        for (int t = 0; t < 4; t++) a[t] = _mm512_dpbusd_epi32(a[t], panel[4 * q + t], xv); \
                    }                                                                              \
                    const __m512i corr = _mm512_set1_epi32(OFF * b->sx[(int64_t)tk * G + g]);      \
                    const __m512 dxv = _mm512_set1_ps(b->dx[(int64_t)tk * G + g]);                 \
                    float *yt = Y + (int64_t)tk * ldy + c;                                         \
                    for (int t = 0; t < 4; t++) {                                                  \
                        const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(a[t], corr));         \
                        _mm512_storeu_ps(yt + 16 * t, _mm512_fmadd_ps(f, _mm512_mul_ps(sc[t], dxv), \
                                                                      _mm512_loadu_ps(yt + 16 * t))); \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }
QGEMM_512(qgemm_q8_512, ld_q8_512, 2, 128)
QGEMM_512(qgemm_q4_512, ld_q4_512, 1, 8)

/* ---- output-major rows (the head): 256-bit dot products, as the reference's eight lanes ---------- */

/* the 32 signed codes of a block */
AVX2 static inline __m256i blk_q8(const void *b) { return _mm256_loadu_si256((const __m256i *)((const block_q8_0 *)b)->qs); }

/* int32 lane l = sum of the 4 products of bytes 4l .. 4l + 3 (q signed, x signed) */
VNNI static inline __m256i dot4_vnni(__m256i q, __m256i x) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(q), _mm256_sign_epi8(x, q));
}
AVX2 static inline __m256i dot4_avx2(__m256i q, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(x, q)), _mm256_set1_epi16(1));
}

/* Q4_0 rows with the codes as stored, u = q + 8 in 0..15 (unsigned, as vpdpbusd and vpmaddubsw take
 * them): the lane sums of u x less those of 8 x are the reference's integers. A broadcast load, a
 * variable shift and a mask give the 32 codes in the reference's lanes (was: load, shift, insert,
 * mask, subtract 8, |q|, sign(x, q)): 49152x576 12.6 -> 14.7 GB/s from L3 (1 thread). */
AVX2 static inline __m256i nib_q4(const block_q4_0 *b) {
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)b->qs));
    return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(0x0f));
}
VNNI static inline __m256i sum4_vnni(__m256i u, __m256i x) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x); }
AVX2 static inline __m256i sum4_avx2(__m256i u, __m256i x) {   /* u <= 15: no saturation */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
}

/* the 8 int32 lanes of v added (exact) */
AVX2 static inline int32_t hsum8_epi32(__m256i v) {
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    return _mm_cvtsi128_si32(t);
}

/* A block's integer sum of a row and x (xv its 32 codes; Q4_0: less 8 x's sum, x->sx) */
#define Q8_ISUM(SUM4, b, xv) hsum8_epi32(DOT_##SUM4(blk_q8(b), xv))
#define Q4_ISUM(SUM4, b, xv) (hsum8_epi32(SUM4(nib_q4(b), xv)) - 8 * x->sx[blk])
#define DOT_sum4_vnni dot4_vnni
#define DOT_sum4_avx2 dot4_avx2

/* rows [r0, r1), one at a time, the reference's order (qmatvec.c: one fma per block and row) */
#define QDOT(ATTR, NAME, BLOCK, ISUM, SUM4)                                                        \
    ATTR static void NAME(const lr_tensor *w, const lr_qx *x, float *y, int32_t r0, int32_t r1) {  \
        const int32_t nb = w->cols / QK;                                                           \
        for (int32_t r = r0; r < r1; r++) {                                                        \
            const BLOCK *b = (const BLOCK *)lr_row(w, r);                                          \
            float acc = 0.0f;                                                                      \
            for (int32_t blk = 0; blk < nb; blk++) {                                               \
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(x->xq + blk * QK));        \
                acc = fmaf((float)ISUM(SUM4, &b[blk], xv), _cvtsh_ss(b[blk].d) * x->dx[blk], acc); \
            }                                                                                      \
            y[r] = acc;                                                                            \
        }                                                                                          \
    }
QDOT(VNNI, qdot_q8_vnni, block_q8_0, Q8_ISUM, sum4_vnni)
QDOT(VNNI, qdot_q4_vnni, block_q4_0, Q4_ISUM, sum4_vnni)
QDOT(AVX2, qdot_q8_avx2, block_q8_0, Q8_ISUM, sum4_avx2)
QDOT(AVX2, qdot_q4_avx2, block_q4_0, Q4_ISUM, sum4_avx2)

/* The head repacked 8 rows at a time (lr_repack_x8: per block the 8 scales, then the 8 rows' codes):
 * per block, the 8 rows' integer sums are reduced into one vector of 8 int32 (row order), and
 * y[8 rows] = fma(float(isum), d * dx, y), the reference's order, in one instruction. The 8 float
 * lanes per row kept before (a conversion, a scale broadcast and an fma per block and row) held
 * the 1-thread head to 19-20 GB/s. */

/* rows 0-3 in A and 4-7 in B, 4 int32 lanes each (128-bit lane l: row l of A, row 4 + l of B) ->
 * the 8 rows' sums in order */
VNNI static inline __m256i rows8_512(__m512i A, __m512i B) {
    const __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(A, B), _mm512_unpackhi_epi64(A, B));
    const __m512i t = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, _MM_PERM_CDAB));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castsi512_si256(_mm512_permutexvar_epi32(idx, t));
}

/* y[8 rows] = fma(float(isum - off sx), d * dx, acc) */
AVX2 static inline __m256 scale8(__m256 acc, __m256i isum, int32_t corr, const uint8_t *p, float dx) {
    const __m256 d = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)), _mm256_set1_ps(dx));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum, _mm256_set1_epi32(corr))), d, acc);
}

VNNI static void qdot8_q4_vnni(const lr_tensor *w, const void *w8, const lr_qx *x, float *y, int32_t g0, int32_t g1) {
    const int32_t nb = w->cols / QK;
    const __m512i m = _mm512_set1_epi8(0x0f);
    for (int32_t g = g0; g < g1; g++) {
        const uint8_t *p = (const uint8_t *)w8 + (int64_t)g * nb * 144;
        __m256 acc = _mm256_setzero_ps();
        for (int32_t blk = 0; blk < nb; blk++, p += 144) {
            const int8_t *xq = x->xq + blk * QK;
            const __m512i xlo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)xq));
            const __m512i xhi = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xq + 16)));
            const __m512i c0 = _mm512_loadu_si512(p + 16), c1 = _mm512_loadu_si512(p + 80);   /* rows 0-3, 4-7 */
            __m512i A = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(c0, m), xlo);
            __m512i B = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(c1, m), xlo);
            A = _mm512_dpbusd_epi32(A, _mm512_and_si512(_mm512_srli_epi16(c0, 4), m), xhi);
            B = _mm512_dpbusd_epi32(B, _mm512_and_si512(_mm512_srli_epi16(c1, 4), m), xhi);
            acc = scale8(acc, rows8_512(A, B), 8 * x->sx[blk], p, x->dx[blk]);
        }
        _mm256_storeu_ps(y + 8 * g, acc);
    }
}

VNNI static void qdot8_q8_vnni(const lr_tensor *w, const void *w8, const lr_qx *x, float *y, int32_t g0, int32_t g1) {
    const int32_t nb = w->cols / QK;
    const __m512i flip = _mm512_set1_epi8((char)0x80);   /* q + 128, unsigned; 128 sx taken off after */
    for (int32_t g = g0; g < g1; g++) {
        const uint8_t *p = (const uint8_t *)w8 + (int64_t)g * nb * 272;
        __m256 acc = _mm256_setzero_ps();
        for (int32_t blk = 0; blk < nb; blk++, p += 272) {
            const __m512i xv = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x->xq + blk * QK)));
            __m512i z[4];   /* rows 2 i, 2 i + 1: 8 lanes each */
            for (int i = 0; i < 4; i++)
                z[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(_mm512_loadu_si512(p + 16 + 64 * i), flip), xv);
            const __m512i A = _mm512_add_epi32(_mm512_shuffle_i32x4(z[0], z[1], 0x88), _mm512_shuffle_i32x4(z[0], z[1], 0xdd));
            const __m512i B = _mm512_add_epi32(_mm512_shuffle_i32x4(z[2], z[3], 0x88), _mm512_shuffle_i32x4(z[2], z[3], 0xdd));
            acc = scale8(acc, rows8_512(A, B), 128 * x->sx[blk], p, x->dx[blk]);
        }
        _mm256_storeu_ps(y + 8 * g, acc);
    }
}

AVX2 static void qdot8_q4_avx2(const lr_tensor *w, const void *w8, const lr_qx *x, float *y, int32_t g0, int32_t g1) {
    const int32_t nb = w->cols / QK;
    const __m256i m = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi16(1);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int32_t g = g0; g < g1; g++) {
        const uint8_t *p = (const uint8_t *)w8 + (int64_t)g * nb * 144;
        __m256 acc = _mm256_setzero_ps();
        for (int32_t blk = 0; blk < nb; blk++, p += 144) {
            const int8_t *xq = x->xq + blk * QK;
            const __m256i xlo = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)xq));
            const __m256i xhi = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(xq + 16)));
            __m256i r[4];   /* rows 2 i, 2 i + 1: 4 lanes each (codes <= 15: no saturation) */
            for (int i = 0; i < 4; i++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * i));
                const __m256i lo = _mm256_maddubs_epi16(_mm256_and_si256(v, m), xlo);
                const __m256i hi = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m), xhi);
                r[i] = _mm256_madd_epi16(_mm256_add_epi16(lo, hi), one);
            }
            /* lane halves: rows 0, 2, 4, 6 | 1, 3, 5, 7 */
            const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(r[0], r[1]), _mm256_hadd_epi32(r[2], r[3]));
            acc = scale8(acc, _mm256_permutevar8x32_epi32(h, order), 8 * x->sx[blk], p, x->dx[blk]);
        }
        _mm256_storeu_ps(y + 8 * g, acc);
    }
}

AVX2 static void qdot8_q8_avx2(const lr_tensor *w, const void *w8, const lr_qx *x, float *y, int32_t g0, int32_t g1) {
    const int32_t nb = w->cols / QK;
    for (int32_t g = g0; g < g1; g++) {
        const uint8_t *p = (const uint8_t *)w8 + (int64_t)g * nb * 272;
        __m256 acc = _mm256_setzero_ps();
        for (int32_t blk = 0; blk < nb; blk++, p += 272) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(x->xq + blk * QK));
            __m256i r[8];   /* row u: 8 lanes */
            for (int u = 0; u < 8; u++) r[u] = dot4_avx2(_mm256_loadu_si256((const __m256i *)(p + 16 + 32 * u)), xv);
            const __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(r[0], r[1]), _mm256_hadd_epi32(r[2], r[3]));
            const __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(r[4], r[5]), _mm256_hadd_epi32(r[6], r[7]));
            /* h0: rows 0-3 (lanes 0-3 of each row | lanes 4-7), h1 rows 4-7 */
            const __m256i isum = _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31));
            acc = scale8(acc, isum, 0, p, x->dx[blk]);
        }
        _mm256_storeu_ps(y + 8 * g, acc);
    }
}

const lr_qkernel_table lr_qkernels_avx512vnni = {
    {qspmv_q8_512, qspmv_q4_512},
    {qgemm_q8_512, qgemm_q4_512},
    {qdot_q8_vnni, qdot_q4_vnni},
    {qdot8_q8_vnni, qdot8_q4_vnni},
};

/* ================================ AVX2 ===================================================== */

/* 64 codes of a row, columns c .. c + 63, as two vectors of 32: Q8 signed, Q4 unsigned (q + 8) */
AVX2 static inline void ld_q8_256(const uint8_t *row, int32_t c, __m256i v[2]) {
    v[0] = _mm256_loadu_si256((const __m256i *)(row + c));
    v[1] = _mm256_loadu_si256((const __m256i *)(row + c + 32));
}
AVX2 static inline void ld_q4_256(const uint8_t *row, int32_t c, __m256i v[2]) {
    const __m256i b = _mm256_loadu_si256((const __m256i *)(row + c / 2)), m = _mm256_set1_epi8(0x0f);
    v[0] = _mm256_and_si256(b, m);
    v[1] = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
}
/* int32 lanes of 4 products: signed codes (|q| and sign(x, q) against vpmaddubsw's saturation) or
 * unsigned ones (q + 8 <= 15: no saturation) */
AVX2 static inline __m256i dot_q8_256(__m256i q, __m256i x) { return dot4_avx2(q, x); }
AVX2 static inline __m256i dot_q4_256(__m256i u, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
}

/* 4 rows (32 columns each) interleaved into 4 vectors; vector k 128-bit lane l = columns 16 l + 4 k .. +3 */
AVX2 static inline void interleave_256(__m256i a, __m256i b, __m256i c, __m256i d, __m256i out[4]) {
    const __m256i ab_lo = _mm256_unpacklo_epi8(a, b), ab_hi = _mm256_unpackhi_epi8(a, b);
    const __m256i cd_lo = _mm256_unpacklo_epi8(c, d), cd_hi = _mm256_unpackhi_epi8(c, d);
    out[0] = _mm256_unpacklo_epi16(ab_lo, cd_lo);
    out[1] = _mm256_unpackhi_epi16(ab_lo, cd_lo);
    out[2] = _mm256_unpacklo_epi16(ab_hi, cd_hi);
    out[3] = _mm256_unpackhi_epi16(ab_hi, cd_hi);
}

/* y[c .. c + 31] = fma(float(v), d * dx, y), v exact sums in the lane order of interleave_256 */
AVX2 static inline void flush_256(const __m256i u[4], const uint16_t *d, float dx, float *y) {
    const __m256i z[4] = {_mm256_permute2x128_si256(u[0], u[1], 0x20), _mm256_permute2x128_si256(u[2], u[3], 0x20),
                          _mm256_permute2x128_si256(u[0], u[1], 0x31), _mm256_permute2x128_si256(u[2], u[3], 0x31)};
    const __m256 dxv = _mm256_set1_ps(dx);
    for (int t = 0; t < 4; t++) {
        const __m256 s = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + 8 * t))), dxv);
        _mm256_storeu_ps(y + 8 * t, _mm256_fmadd_ps(_mm256_cvtepi32_ps(z[t]), s, _mm256_loadu_ps(y + 8 * t)));
    }
}

#define QSPMV_256(NAME, LOAD, DOT, RB, OFF)                                                        \
    AVX2 static void NAME(const lr_tensor *w, const lr_qsel *s, float *y, int32_t c0, int32_t c1,  \
                          int32_t *acc) {                                                          \
        const uint8_t *codes = w->data;                                                            \
        const int64_t ld = (int64_t)w->cols * RB / 2;                                              \
        const int32_t nch = (c1 - c0) / 64;                                                        \
        for (int32_t c = c0; c < c1; c += 8) _mm256_storeu_ps(y + c, _mm256_setzero_ps());        \
        for (int32_t gi = 0; gi < s->n_groups; gi++) {                                             \
            const int32_t j0 = s->start[gi], j1 = s->start[gi + 1];                                \
            const uint16_t *dg = (const uint16_t *)w->scale + (int64_t)s->group[gi] * w->cols;     \
            const __m256i ncorr = _mm256_set1_epi32(-OFF * s->sx[gi]);   /* see QSPMV_512 */       \
            for (int32_t j = j0; j < j1; j += 4) {                                                 \
                const int32_t jn = j + 8 <= s->start[s->n_groups] ? j + 4 : j;                     \
                const uint8_t *r[4], *p[4];                                                        \
                for (int u = 0; u < 4; u++) {                                                      \
                    r[u] = codes + s->row[j + u] * ld;                                             \
                    p[u] = codes + s->row[jn + u] * ld;                                            \
                }                                                                                  \
                int32_t xw;                                                                        \
                memcpy(&xw, s->xq + j, 4);                                                         \
                const __m256i xv = _mm256_set1_epi32(xw);                                          \
                for (int32_t ch = 0; ch < nch; ch++) {                                             \
                    const int32_t c = c0 + 64 * ch;                                                \
                    if (RB == 2 || !(ch & 1))                                                      \
                        for (int u = 0; u < 4; u++) PREFETCH(p[u] + c * RB / 2);                   \
                    if (j == j0) PREFETCH(dg + c), PREFETCH(dg + c + 32);   /* the flush's scales */ \
                    __m256i q[4][2], v[4];                                                         \
                    for (int u = 0; u < 4; u++) LOAD(r[u], c, q[u]);                               \
                    for (int h = 0; h < 2; h++) {                                                  \
                        int32_t *A = acc + 64 * ch + 32 * h;                                       \
                        __m256i a[4];                                                              \
                        interleave_256(q[0][h], q[1][h], q[2][h], q[3][h], v);                     \
                        for (int t = 0; t < 4; t++)                                                \
                            a[t] = _mm256_add_epi32(j == j0 ? ncorr : _mm256_load_si256((const __m256i *)(A + 8 * t)), \
                                                    DOT(v[t], xv));                                \
                        if (j + 4 == j1) flush_256(a, dg + c + 32 * h, s->dx[gi], y + c + 32 * h); \
                        else for (int t = 0; t < 4; t++) _mm256_store_si256((__m256i *)(A + 8 * t), a[t]); \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }
QSPMV_256(qspmv_q8_256, ld_q8_256, dot_q8_256, 2, 0)
QSPMV_256(qspmv_q4_256, ld_q4_256, dot_q4_256, 1, 8)

/* Batched (prompt): each group's 32 rows of a 64-column chunk interleaved once into a panel, then
 * every token of the batch multiplies it; flushed per token straight into Y. */
#define QGEMM_256(NAME, LOAD, DOT, RB, OFF)                                                        \
    AVX2 static void NAME(const lr_tensor *w, const lr_qbatch *b, float *Y, int32_t ldy, int32_t c0, \
                          int32_t c1, void *scratch) {                                             \
        const uint8_t *codes = w->data;                                                            \
        const int64_t ld = (int64_t)w->cols * RB / 2;                                              \
        const int32_t G = w->rows / QK, n = b->n;                                                  \
        __m256i *panel = scratch;                      /* [8 quads][2 halves][4] */                \
        for (int32_t c = c0; c < c1; c += 64) {                                                    \
            for (int32_t tk = 0; tk < n; tk++)                                                     \
                for (int t = 0; t < 8; t++) _mm256_storeu_ps(Y + (int64_t)tk * ldy + c + 8 * t, _mm256_setzero_ps()); \
            for (int32_t g = b->g0; g < b->g1; g++) {                                              \
                const uint8_t *r = codes + (int64_t)g * QK * ld;                                   \
                for (int qd = 0; qd < 8; qd++) {                                                   \
                    __m256i q[4][2];                                                               \
                    for (int u = 0; u < 4; u++) LOAD(r + (4 * qd + u) * ld, c, q[u]);              \
                    for (int h = 0; h < 2; h++)                                                    \
                        interleave_256(q[0][h], q[1][h], q[2][h], q[3][h], panel + 8 * qd + 4 * h); \
                }                                                                                  \
                const uint16_t *dg = (const uint16_t *)w->scale + (int64_t)g * w->cols + c;        \
                for (int32_t tk = 0; tk < n; tk++) {                                               \
                    if (!b->has[(int64_t)tk * G + g]) continue;                                    \
                    const int8_t *xq = b->xq + (int64_t)tk * w->rows + g * QK;                     \
                    const __m256i ncorr = _mm256_set1_epi32(-OFF * b->sx[(int64_t)tk * G + g]);    \
                    __m256i a[2][4];                                                               \
                    for (int h = 0; h < 2; h++)                                                    \
                        for (int t = 0; t < 4; t++) a[h][t] = ncorr;                               \
                    for (int qd = 0; qd < 8; qd++) {                                               \
                        int32_t xw;                                                                \
                        memcpy(&xw, xq + 4 * qd, 4);                                               \
                        const __m256i xv = _mm256_set1_epi32(xw);                                  \
                        for (int h = 0; h < 2; h++)                                                \
                            for (int t = 0; t < 4; t++)                                            \
                                a[h][t] = _mm256_add_epi32(a[h][t], DOT(panel[8 * qd + 4 * h + t], xv)); \
                    }                                                                              \
                    const float dx = b->dx[(int64_t)tk * G + g];                                   \
                    for (int h = 0; h < 2; h++)                                                    \
                        flush_256(a[h], dg + 32 * h, dx, Y + (int64_t)tk * ldy + c + 32 * h);     \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }
QGEMM_256(qgemm_q8_256, ld_q8_256, dot_q8_256, 2, 0)
QGEMM_256(qgemm_q4_256, ld_q4_256, dot_q4_256, 1, 8)

const lr_qkernel_table lr_qkernels_avx2 = {
    {qspmv_q8_256, qspmv_q4_256},
    {qgemm_q8_256, qgemm_q4_256},
    {qdot_q8_avx2, qdot_q4_avx2},
    {qdot8_q8_avx2, qdot8_q4_avx2},
};

#endif

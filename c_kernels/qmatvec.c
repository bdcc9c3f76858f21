/* Integer matvecs: activations quantized to 8 bits (llama.cpp's Q8_0 activations), weights in
 * 8 or 4 bits, products summed exactly in int32 per group of 32 inputs, then scaled in float.
 *
 * Input-major weights (Q8_0_IM, Q4_0_IM; FORMAT.md "Input-major quantized types"): row i holds
 * input i's codes for every output, and a separate table holds one fp16 scale per (group of 32
 * inputs, output), so W[i][c] = d[i / 32][c] * q[i][c]. This is ggml's Q8_0 / Q4_0 of the
 * output-major weight (blocks of 32 along the inputs), stored transposed: a selected input is one
 * contiguous row, and the 32 inputs sharing a scale can be summed in integers, which is what the
 * dot-product instructions (VNNI, AVX2 maddubs, NEON sdot) do 4 inputs at a time.
 *
 *   y[c] = sum over groups g with a selected input, in ascending order, of
 *          fmaf((float) isum[g][c], d[g][c] * dx[g], y)      isum[g][c] = sum_i q[i][c] xq[i]
 *
 * isum is exact, so every kernel (scalar, AVX2, AVX-512, NEON) and the batched prompt path give
 * bit-identical results: only the order of the float steps matters, and it is fixed above.
 * The output-major head (ggml Q8_0 / Q4_0 rows) is an integer dot product per 32-block, with the
 * float steps fixed the same way (lr_qdot_ref below). */
#include <float.h>
#include <stdlib.h>

#include "kernels.h"

/* ---- activation quantization (shared by every SIMD level: one rounding, one order) ------------ */

/* scale and codes of a block of values: dx = max |v| / 127, q = round-half-even(v * (1 / dx)); a
 * block with a NaN or Inf gets dx = NaN and zero codes, so the NaN reaches the output. A block
 * whose 1 / dx overflows (max |v| below ~3.7e-37) gets zero codes: its terms are that small. */
static inline float quant_scale(float amax, int finite) {
    return finite ? amax / 127.0f : NAN;
}
static inline float quant_inv(float dx) {
    const float id = dx > 0.0f ? 1.0f / dx : 0.0f;   /* dx NaN: 0 */
    return id <= FLT_MAX ? id : 0.0f;
}
static inline int8_t quant_one(float v, float id) {
    const float r = nearbyintf(v * id);
    return (int8_t)(r >= 127.0f ? 127 : r <= -127.0f ? -127 : r == r ? (int)r : 0);
}

void *lr_qsel_new(int32_t n, lr_qsel *s) {
    const size_t entries = (size_t)n + 3 * (size_t)(n / QK) + 4, groups = (size_t)(n / QK) + 2;
    char *p = malloc(entries * (sizeof(int32_t) + 1) + groups * 4 * sizeof(int32_t));
    if (!p) return NULL;
    s->row = (int32_t *)p;
    s->group = s->row + entries;
    s->start = s->group + groups;
    s->sx = s->start + groups;
    s->dx = (float *)(s->sx + groups);
    s->xq = (int8_t *)(s->dx + groups);
    return p;
}

void *lr_qbatch_new(int32_t n, int32_t rows, lr_qbatch *b) {
    const size_t cells = (size_t)n * (size_t)(rows / QK);
    char *p = malloc(cells * (sizeof(float) + sizeof(int32_t) + 1) + (size_t)n * (size_t)rows);
    if (!p) return NULL;
    b->n = n;
    b->g0 = 0;
    b->g1 = rows / QK;
    b->dx = (float *)p;
    b->sx = (int32_t *)(b->dx + cells);
    b->has = (uint8_t *)(b->sx + cells);
    b->xq = (int8_t *)(b->has + cells);
    return p;
}

void lr_qbatch_row(lr_qbatch *b, int32_t t, int32_t rows, const float *x, const uint8_t *mask) {
    const int32_t G = rows / QK;
    int8_t *xq = b->xq + (int64_t)t * rows;
    for (int32_t g = 0; g < G; g++) {   /* branch-free, so that it vectorizes: a row per prompt token */
        const float *xg = x + (int64_t)g * QK;
        const uint8_t *mg = mask + (int64_t)g * QK;
        /* max |x| over the selected inputs on the bit patterns (integer max vectorizes where the
         * float compare with its NaN test did not): above FLT_MAX's bits is inf or NaN */
        uint32_t kmax = 0;
        int32_t any = 0;
#pragma omp simd reduction(max : kmax) reduction(| : any)
        for (int i = 0; i < QK; i++) {
            uint32_t u;
            memcpy(&u, xg + i, 4);
            u = mg[i] ? u & 0x7fffffffu : 0u;
            kmax = u > kmax ? u : kmax;
            any |= mg[i] != 0;
        }
        const int finite = kmax <= 0x7f7fffffu;
        float amax;
        memcpy(&amax, &kmax, 4);
        const float dx = quant_scale(finite ? amax : 0.0f, finite), id = quant_inv(dx);
        int32_t sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < QK; i++) {
            const int8_t q = mg[i] ? quant_one(xg[i], id) : 0;
            xq[(int64_t)g * QK + i] = q;
            sum += q;
        }
        b->dx[(int64_t)t * G + g] = dx;
        b->sx[(int64_t)t * G + g] = sum;
        b->has[(int64_t)t * G + g] = (uint8_t)any;
    }
}

int32_t lr_qsel_build(const float *x, const int32_t *idx, int32_t k, lr_qsel *s) {
    int32_t ng = 0, o = 0, j = 0;
    while (j < k) {
        const int32_t g = (idx ? idx[j] : j) / QK, j0 = j;
        float amax = 0.0f;
        int finite = 1;
        for (; j < k && (idx ? idx[j] : j) / QK == g; j++) {
            const float a = fabsf(x[idx ? idx[j] : j]);
            finite &= a <= FLT_MAX;
            amax = a > amax ? a : amax;
        }
        const float dx = quant_scale(amax, finite), id = quant_inv(dx);
        int32_t sum = 0;
        s->group[ng] = g;
        s->start[ng] = o;
        s->dx[ng] = dx;
        for (int32_t t = j0; t < j; t++) {
            const int32_t i = idx ? idx[t] : t;
            const int8_t q = quant_one(x[i], id);
            s->row[o] = i;
            s->xq[o++] = q;
            sum += q;
        }
        while ((o - s->start[ng]) % 4) {   /* pad to whole quads: zero weight on a real row */
            s->row[o] = s->row[o - 1];
            s->xq[o++] = 0;
        }
        s->sx[ng++] = sum;
    }
    s->n_groups = ng;
    s->start[ng] = o;
    return ng;
}

void lr_quantize_blocks(const float *x, int32_t n, int8_t *xq, float *dx, int32_t *sx) {
    for (int32_t b = 0; b < n / QK; b++) {
        const float *v = x + (int64_t)b * QK;
        float amax = 0.0f;
        int finite = 1;
        for (int t = 0; t < QK; t++) {
            const float a = fabsf(v[t]);
            finite &= a <= FLT_MAX;
            amax = a > amax ? a : amax;
        }
        dx[b] = quant_scale(amax, finite);
        const float id = quant_inv(dx[b]);
        int32_t sum = 0;
        for (int t = 0; t < QK; t++) sum += xq[(int64_t)b * QK + t] = quant_one(v[t], id);
        if (sx) sx[b] = sum;
    }
}

/* ---- scalar references ------------------------------------------------------------------------ */

/* y[c] for c in [c0, c1) (multiples of 64); acc: c1 - c0 int32 of scratch */
static void qspmv_ref(const lr_tensor *w, const lr_qsel *s, float *y, int32_t c0, int32_t c1, int32_t *acc) {
    const uint16_t *d = w->scale;
    for (int32_t c = c0; c < c1; c++) y[c] = 0.0f;
    for (int32_t gi = 0; gi < s->n_groups; gi++) {
        for (int32_t c = c0; c < c1; c++) acc[c - c0] = 0;
        for (int32_t j = s->start[gi]; j < s->start[gi + 1]; j++)
            for (int32_t c = c0; c < c1; c++) acc[c - c0] += lr_im_code(w, s->row[j], c) * s->xq[j];
        const uint16_t *dg = d + (int64_t)s->group[gi] * w->cols;
        for (int32_t c = c0; c < c1; c++) {
            const float sc = fp16_to_fp32(dg[c]) * s->dx[gi];
            y[c] = fmaf((float)acc[c - c0], sc, y[c]);
        }
    }
}

/* The batched form (prompts): Y[t][c0:c1] for every token t of b over the groups [b->g0, b->g1),
 * each token with its own selection (xq zero at the inputs it did not select, has[t][g] = 1 where it
 * selected any input of g), so that token t gets exactly what qspmv gives it alone over those groups. */
static void qgemm_ref(const lr_tensor *w, const lr_qbatch *b, float *Y, int32_t ldy, int32_t c0, int32_t c1,
                      void *scratch) {
    const uint16_t *d = w->scale;
    const int32_t G = w->rows / QK;
    int32_t *acc = scratch;
    for (int32_t t = 0; t < b->n; t++) {
        float *y = Y + (int64_t)t * ldy;
        const int8_t *xq = b->xq + (int64_t)t * w->rows;
        for (int32_t c = c0; c < c1; c++) y[c] = 0.0f;
        for (int32_t g = b->g0; g < b->g1; g++) {
            if (!b->has[(int64_t)t * G + g]) continue;
            for (int32_t c = c0; c < c1; c++) acc[c - c0] = 0;
            for (int32_t i = g * QK; i < (g + 1) * QK; i++)
                for (int32_t c = c0; c < c1; c++) acc[c - c0] += lr_im_code(w, i, c) * xq[i];
            const float dx = b->dx[(int64_t)t * G + g];
            for (int32_t c = c0; c < c1; c++) {
                const float sc = fp16_to_fp32(d[(int64_t)g * w->cols + c]) * dx;
                y[c] = fmaf((float)acc[c - c0], sc, y[c]);
            }
        }
    }
}

/* Output-major rows (ggml Q8_0 / Q4_0) against x quantized by lr_quantize_blocks: per block the 32
 * products are summed exactly in int32, then scaled into one float chain per row,
 *     y[r] = fmaf((float) isum[r][b], d[r][b] * dx[b], y[r])      over the blocks b in order.
 * One chain per row lets the SIMD kernels reduce 8 rows' integer sums into one vector and scale
 * them with one fma (the head's 8-row kernels, lr_repack_x8); the 8 float lanes per row kept
 * before cost 8 conversions and fmas per block and row. */

/* the 32 codes of block blk of an output-major Q8_0 / Q4_0 row starting at row, and its scale */
static float qblock_ref(int32_t type, const uint8_t *row, int32_t blk, int32_t q[QK]) {
    if (type == LR_Q8_0) {
        const block_q8_0 *b = (const block_q8_0 *)row + blk;
        for (int t = 0; t < QK; t++) q[t] = b->qs[t];
        return fp16_to_fp32(b->d);
    }
    const block_q4_0 *b = (const block_q4_0 *)row + blk;
    for (int t = 0; t < QK / 2; t++) {
        q[t] = (b->qs[t] & 0x0f) - 8;
        q[t + QK / 2] = (b->qs[t] >> 4) - 8;
    }
    return fp16_to_fp32(b->d);
}

static inline int32_t isum_ref(const int32_t q[QK], const int8_t *xq) {
    int32_t s = 0;
    for (int t = 0; t < QK; t++) s += q[t] * xq[t];
    return s;
}

static void qdot_ref(const lr_tensor *w, const lr_qx *x, float *y, int32_t r0, int32_t r1) {
    for (int32_t r = r0; r < r1; r++) {
        float acc = 0.0f;
        for (int32_t blk = 0; blk < w->cols / QK; blk++) {
            int32_t q[QK];
            const float dw = qblock_ref(w->type, lr_row(w, r), blk, q);
            acc = fmaf((float)isum_ref(q, x->xq + (int64_t)blk * QK), dw * x->dx[blk], acc);
        }
        y[r] = acc;
    }
}

/* The head repacked 8 rows at a time (lr_repack_x8): per group of 8 rows and block, the 8 rows'
 * fp16 scales (16 bytes), then their codes (16 bytes each for Q4_0, 32 for Q8_0), as stored. */
static inline uint8_t *x8_block(void *w8, int32_t type, int32_t nb, int32_t g, int32_t blk) {
    return (uint8_t *)w8 + ((int64_t)g * nb + blk) * 8 * (int64_t)lr_row_bytes(type, QK);
}

static void qdot8_ref(const lr_tensor *w, const void *w8, const lr_qx *x, float *y, int32_t g0, int32_t g1) {
    const int32_t nb = w->cols / QK, cb = (int32_t)lr_row_bytes(w->type, QK) - 2;   /* code bytes */
    for (int32_t r = 8 * g0; r < 8 * g1; r++) {
        float acc = 0.0f;
        for (int32_t blk = 0; blk < nb; blk++) {
            const uint8_t *p = x8_block((void *)w8, w->type, nb, r / 8, blk);
            uint8_t b[34];   /* the row's block as ggml stores it: scale, codes */
            memcpy(b, p + 2 * (r % 8), 2);
            memcpy(b + 2, p + 16 + (r % 8) * cb, (size_t)cb);
            int32_t q[QK];
            const float dw = qblock_ref(w->type, b, 0, q);
            acc = fmaf((float)isum_ref(q, x->xq + (int64_t)blk * QK), dw * x->dx[blk], acc);
        }
        y[r] = acc;
    }
}

void lr_repack_x8(const lr_tensor *w, void *dst) {
    const int32_t nb = w->cols / QK, cb = (int32_t)lr_row_bytes(w->type, QK) - 2;
    for (int32_t r = 0; r < w->rows / 8 * 8; r++)
        for (int32_t blk = 0; blk < nb; blk++) {
            const uint8_t *b = lr_row(w, r) + (int64_t)blk * (cb + 2);
            uint8_t *p = x8_block(dst, w->type, nb, r / 8, blk);
            memcpy(p + 2 * (r % 8), b, 2);
            memcpy(p + 16 + (r % 8) * cb, b + 2, (size_t)cb);
        }
}

const lr_qkernel_table lr_qkernels_scalar = {
    {qspmv_ref, qspmv_ref},
    {qgemm_ref, qgemm_ref},
    {qdot_ref, qdot_ref},
    {qdot8_ref, qdot8_ref},
};

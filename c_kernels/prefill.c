/* Batched prompt evaluation: LR_BATCH tokens per pass through each layer.
 *
 * The math is the decode step's (forward.c), token by token, including each token's own Top-K,
 * and every product reads each weight once per batch instead of once per token:
 * - quantized (_IM) weights: the batched integer kernel (qgemm), each token with its own selection
 *   and its own 8-bit activations, bit-identical to what the decode step computes for that token;
 *   the Q8_0 / Q4_0 head, when every token's logits are wanted, is the decode step's product per
 *   token. So a token's logits do not depend on how its sequence was split into calls.
 * - float weights (F32 / F16 weights, the F16 adapters of --method larosa) and a float head: the
 *   decode step's product, token by token (lr_matvec, lr_head_rows): each weight is read once per
 *   token, not per batch, and a token's logits do not depend on how its sequence was split either. */
#include <stdlib.h>

#include "model.h"

/* An _IM product of the batch, split as the decode step splits it (forward.c matvec): part s adds
 * the input groups of its range over all columns into its own buffer, and the parts are added in
 * order, token by token; one part writes Y directly. */
typedef struct { lr_model *m; const lr_tensor *w; float *Y; int32_t ldy, n, parts; qgemm_fn fn; } qgemm_job;

static void qgemm_task(void *p, int ith, int nth, int thread) {
    qgemm_job *j = p;
    if (ith >= j->parts) return;
    const int32_t G = j->w->rows / QK, cols = j->w->cols;
    const size_t qs = ((size_t)lr_qgemm_scratch(j->m->out_widest) + 63) / 64 * 64;
    lr_qbatch b = j->m->qb;
    b.g0 = G * ith / j->parts, b.g1 = G * (ith + 1) / j->parts;
    float *Y = j->parts == 1 ? j->Y : j->m->qparts + (size_t)ith * LR_BATCH * (size_t)cols;
    j->fn(j->w, &b, Y, j->parts == 1 ? j->ldy : cols, 0, cols, j->m->qscratch + (size_t)thread * qs);
}

static void qsum_task(void *p, int ith, int nth, int thread) {
    qgemm_job *j = p;
    const int32_t cols = j->w->cols;
    for (int32_t t = ith; t < j->n; t += nth) {
        float *y = j->Y + (size_t)t * j->ldy;
        memcpy(y, j->m->qparts + (size_t)t * cols, (size_t)cols * sizeof(float));
        for (int32_t s = 1; s < j->parts; s++) {
            const float *part = j->m->qparts + ((size_t)s * LR_BATCH + (size_t)t) * (size_t)cols;
#pragma omp simd
            for (int32_t c = 0; c < cols; c++) y[c] += part[c];
        }
    }
}

/* each token's 8-bit activations for the batched integer product, tokens split between threads */
typedef struct { lr_model *m; int32_t rows, n, ldx; const float *X; const uint8_t *mask; } qrow_job;

static void qrow_task(void *p, int ith, int nth, int thread) {
    (void)thread;
    qrow_job *j = p;
    for (int32_t t = ith; t < j->n; t += nth)
        lr_qbatch_row(&j->m->qb, t, j->rows, j->X + (size_t)t * j->ldx,
                      j->mask ? j->mask + (size_t)t * j->m->widest : j->m->bmask);
}

/* Y[t][0:N] = X[t] W for t < n; an _IM W reads the inputs with mask[t][i] != 0 (mask rows
 * m->widest apart, as sparsify writes them; NULL: all inputs) */
static void gemm(lr_model *m, const lr_tensor *w, const float *X, int32_t ldx, const uint8_t *mask,
                 float *Y, int32_t ldy, int32_t n) {
    if (lr_is_im(w->type)) {
        if (!mask) memset(m->bmask, 1, (size_t)w->rows);
        m->qb.n = n;
        qrow_job qj = {m, w->rows, n, ldx, X, mask};
        lr_pool_run(m->pool, qrow_task, &qj);
        qgemm_job j = {m, w, Y, ldy, n, lr_im_parts(m, w), lr_qkernels()->qgemm[lr_type_slot(w->type)]};
        lr_pool_run(m->pool, qgemm_task, &j);
        if (j.parts > 1) lr_pool_run(m->pool, qsum_task, &j);
        return;
    }
    int32_t *idx = m->idx;   /* the decode step's product per token, over its selected rows */
    for (int32_t t = 0; t < n; t++) {
        int32_t k = 0;
        const uint8_t *mt = mask ? mask + (size_t)t * m->widest : NULL;
        for (int32_t i = 0; mt && i < w->rows; i++) {
            idx[k] = i;
            k += mt[i] != 0;
        }
        const int dense = !mt || k == w->rows;   /* as lr_select says "all rows": idx NULL */
        lr_matvec(m, w, X + (size_t)t * ldx, dense ? NULL : idx, dense ? w->rows : k, Y + (size_t)t * ldy);
    }
}

typedef struct { lr_model *m; int32_t layer, pos0, n; } battn_job;

static void battn_task(void *p, int ith, int nth, int thread) {
    battn_job *j = p;
    lr_model *m = j->m;
    const int32_t nh = m->d.n_heads, hd = m->d.head_dim, qkvd = (nh + 2 * m->d.n_kv_heads) * hd;
    const int32_t pairs = j->n * nh, per = (pairs + nth - 1) / nth;
    float *scores = m->scores + (size_t)thread * m->scratch_len;
    for (int32_t i = ith * per; i < (ith + 1) * per && i < pairs; i++) {
        const int32_t t = i / nh, h = i % nh;
        lr_attend_head(m, j->layer, j->pos0 + t, h, m->bqkv + (size_t)t * qkvd + (size_t)h * hd,
                       m->bao + (size_t)t * nh * hd + (size_t)h * hd, scores, thread);
    }
}

/* token t's selection of row x: mask[i] = 1 for the selected inputs, 0 for the rest, which are
 * zeroed in x (gate: for a CATS key); mask is the row of token t in m->bmask (m->widest apart) */
static void sparsify(lr_model *m, float *x, const float *gate, int32_t t, int32_t layer, int32_t block, int32_t row,
                     int32_t thread) {
    int32_t k;
    const int32_t *idx = lr_select(m, x, gate, layer, block, t, thread, &k);
    const int32_t n = m->width[block];
    uint8_t *mask = m->bmask + (size_t)row * m->widest;
    if (!idx) {
        memset(mask, 1, (size_t)n);
        return;
    }
    memset(mask, 0, (size_t)n);   /* (a merge against idx mispredicted on every other input) */
    for (int32_t j = 0; j < k; j++) mask[idx[j]] = 1;
    for (int32_t i = 0; i < n; i++) x[i] = mask[i] ? x[i] : 0.0f;
}

/* The per-token steps before a block input's product, for the n tokens of the batch in parallel:
 * ATTN_IN, MLP_IN: the norm of the residual; MLP_OUT: SwiGLU; then each token's selection. */
typedef struct { lr_model *m; int32_t t0, n, layer, block; } prep_job;

static void prep_task(void *p, int ith, int nth, int thread) {
    prep_job *j = p;
    lr_model *m = j->m;
    const lr_model_desc *d = &m->d;
    const int32_t W = m->widest, ff = d->ffn_dim, qd = d->n_heads * d->head_dim;
    for (int32_t t = ith; t < j->n; t += nth) {
        float *x = j->block == ATTN_OUT ? m->bao + (size_t)t * qd : m->bxn + (size_t)t * W;
        const float *gate = NULL;
        if (j->block == ATTN_IN || j->block == MLP_IN) {
            const lr_layer *L = &m->layers[j->layer];
            lr_rmsnorm(x, m->bx + (size_t)t * d->dim, d->dim, d->norm_eps,
                       (j->block == ATTN_IN ? L->attn_norm : L->ffn_norm).data);
        } else if (j->block == MLP_OUT) {
            const float *gu = m->bgu + (size_t)t * 2 * ff;
            lr_glu(m, gu, x, 0, d->ffn_dim);
            gate = gu;
        }
        sparsify(m, x, gate, j->t0 + t, j->layer, j->block, t, thread);
    }
}

static void prep(lr_model *m, int32_t t0, int32_t n, int32_t layer, int32_t block) {
    prep_job j = {m, t0, n, layer, block};
    lr_pool_run(m->pool, prep_task, &j);
}

static void add_rows(float *X, int32_t ldx, const float *Y, int32_t ldy, int32_t n, int32_t width) {
    for (int32_t t = 0; t < n; t++)
        for (int32_t i = 0; i < width; i++) X[(size_t)t * ldx + i] += Y[(size_t)t * ldy + i];
}

/* tokens t0..t0+n-1 of the call, at positions pos0.. (n <= LR_BATCH), through every layer */
static void batch_layers(lr_model *m, int32_t t0, int32_t n, int32_t pos0) {
    const lr_model_desc *d = &m->d;
    const int32_t dim = d->dim, hd = d->head_dim, nh = d->n_heads, nkv = d->n_kv_heads;
    const int32_t qd = nh * hd, kvd = nkv * hd, ff = d->ffn_dim, qkvd = qd + 2 * kvd, W = m->widest;
    for (int32_t l = 0; l < d->n_layers; l++) {
        const lr_layer *L = &m->layers[l];
        if (L->adapter.data) {
            gemm(m, &L->adapter, m->bx, dim, NULL, m->by, dim, n);
            memcpy(m->bx, m->by, (size_t)n * dim * sizeof(float));
        }
        prep(m, t0, n, l, ATTN_IN);
        gemm(m, &L->wqkv, m->bxn, W, m->bmask, m->bqkv, qkvd, n);
        for (int32_t t = 0; t < n; t++) {
            float *qkv = m->bqkv + (size_t)t * qkvd;
            lr_qkv_extras(m, L, qkv);
            if (!L->no_rope) lr_rope_angles(m, pos0 + t, L->n_swa, m->rope_cos, m->rope_sin);
            lr_rope_qk(m, L, qkv, pos0 + t, m->rope_cos, m->rope_sin);
            lr_kv_write(m, l, pos0 + t, qkv + qd, qkv + qd + kvd);
        }
        battn_job aj = {m, l, pos0, n};
        lr_pool_run(m->pool, battn_task, &aj);
        prep(m, t0, n, l, ATTN_OUT);
        gemm(m, &L->wo, m->bao, qd, m->bmask, m->by, dim, n);
        for (int32_t t = 0; t < n; t++) lr_block_out(m, &L->bo, &L->post_attn_norm, m->by + (size_t)t * dim);
        add_rows(m->bx, dim, m->by, dim, n, dim);
        prep(m, t0, n, l, MLP_IN);
        gemm(m, &L->wgu, m->bxn, W, m->bmask, m->bgu, 2 * ff, n);
        prep(m, t0, n, l, MLP_OUT);
        gemm(m, &L->wdown, m->bxn, W, m->bmask, m->by, dim, n);
        for (int32_t t = 0; t < n; t++) lr_block_out(m, &L->bdown, &L->post_ffn_norm, m->by + (size_t)t * dim);
        add_rows(m->bx, dim, m->by, dim, n, dim);
    }
}

/* logits of every token of the batch into out[n][vocab] */
static int32_t batch_head(lr_model *m, int32_t n, float *out) {
    const lr_model_desc *d = &m->d;
    const int32_t dim = d->dim, W = m->widest;
    if (d->out_adapter.data) {
        gemm(m, &d->out_adapter, m->bx, dim, NULL, m->by, dim, n);
        memcpy(m->bx, m->by, (size_t)n * dim * sizeof(float));
    }
    for (int32_t t = 0; t < n; t++)
        lr_rmsnorm(m->bxn + (size_t)t * W, m->bx + (size_t)t * dim, dim, d->norm_eps,
                   d->out_norm.data ? (const float *)d->out_norm.data : NULL);
    int32_t rc = LR_OK;
    for (int32_t t = 0; t < n; t++) {   /* the decode step's product, per token */
        lr_head_rows(m, m->bxn + (size_t)t * W, out + (size_t)t * d->n_vocab);
        const int32_t r = lr_logits_done(m, out + (size_t)t * d->n_vocab);
        rc = rc ? rc : r;
    }
    return rc;
}

int32_t lr_prefill(lr_model *m, const int32_t *tokens, int32_t n, int32_t pos0, float *logits, int32_t all_logits) {
    const int32_t dim = m->d.dim;
    for (int32_t t0 = 0; t0 < n; t0 += LR_BATCH) {
        const int32_t nb = n - t0 < LR_BATCH ? n - t0 : LR_BATCH;
        for (int32_t t = 0; t < nb; t++) lr_embed(m, tokens[t0 + t], m->bx + (size_t)t * dim);
        batch_layers(m, t0, nb, pos0 + t0);
        m->n_past = pos0 + t0 + nb;
        if (t0 + nb == n)   /* the last residual, for a last-token head in forward.c */
            memcpy(m->x, m->bx + (size_t)(nb - 1) * dim, (size_t)dim * sizeof(float));
        if (logits && all_logits) {
            const int32_t rc = batch_head(m, nb, logits + (size_t)t0 * m->d.n_vocab);
            if (rc) return rc;
        }
    }
    return LR_OK;
}

/* A LaRoSA decode step in one file: embedding, per layer (adapter, norm, Top-K, sparse q/k/v,
 * RoPE, grouped-query attention over the KV cache, Top-K, sparse o, norm, Top-K, sparse gate/up,
 * SwiGLU, Top-K, sparse down), final adapter, norm and head. FORMAT.md has the math. */
#include <stdio.h>
#include <stdlib.h>

#include "kernels.h"
#include "threads.h"

enum { ATTN_IN = 0, ATTN_OUT = 1, MLP_IN = 2, MLP_OUT = 3 };

struct lr_model {
    lr_model_desc d;
    lr_layer *layers;
    int32_t n_ctx, n_past;     /* KV cache capacity, positions filled */
    int32_t *k[4];             /* per block input: k of each layer */
    float *key_cache;          /* [L][n_ctx][nkv hd] */
    float *value_cache;
    float *x, *xn, *tmp;       /* [d] residual, normalized input, matvec output */
    float *qkv;                /* [(nh + 2 nkv) hd] */
    float *att;                /* [nh][n_ctx] attention scores */
    float *ao;                 /* [nh hd] attention output */
    float *gu, *hm;            /* [2 ff], [ff] */
    int32_t *idx;              /* [max width] Top-K indices */
    uint32_t *topk_scratch;
    double *inv_freq;          /* [hd / 2] */
    float *rope_cos, *rope_sin;
    lr_pool *pool;
    uint8_t *trace;            /* test hook: Top-K masks (lr_model_trace) */
    int64_t trace_cap, trace_len;
};

/* ---- parallel sections ---------------------------------------------------------------------- */

typedef struct {
    const lr_tensor *w;
    const float *x;
    const int32_t *idx;
    int32_t k;
    float *y;
    const lr_kernel_table *kt;
} spmv_job;

static void spmv_task(void *p, int ith, int nth) {
    spmv_job *j = p;
    const int32_t units = (j->w->cols + QK - 1) / QK, per = (units + nth - 1) / nth;
    int32_t c0 = ith * per * QK, c1 = (ith + 1) * per * QK;
    if (c1 > j->w->cols) c1 = j->w->cols;
    if (c0 < c1) j->kt->spmv[lr_type_slot(j->w->type)](j->w, j->x, j->idx, j->k, j->y, c0, c1);
}

/* y = x W over the k rows idx (idx NULL: all rows) */
static void matvec(lr_model *m, const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, float *y) {
    spmv_job j = {w, x, idx, k, y, lr_kernels()};
    lr_pool_run(m->pool, spmv_task, &j);
}

typedef struct { const lr_tensor *w; const float *x; float *y; const lr_kernel_table *kt; } dot_job;

static void dot_task(void *p, int ith, int nth) {
    dot_job *j = p;
    const int32_t per = (j->w->rows + nth - 1) / nth;
    int32_t r0 = ith * per, r1 = r0 + per;
    if (r1 > j->w->rows) r1 = j->w->rows;
    if (r0 < r1) j->kt->dot_rows[lr_type_slot(j->w->type)](j->w, j->x, j->y, r0, r1);
}

typedef struct { lr_model *m; int32_t layer, pos; } attn_job;

/* grouped-query attention of the heads [h0, h1) at position pos over the cached positions 0..pos */
static void attn_task(void *p, int ith, int nth) {
    attn_job *j = p;
    lr_model *m = j->m;
    const int32_t nh = m->d.n_heads, hd = m->d.head_dim, kvd = m->d.n_kv_heads * hd;
    const int32_t group = nh / m->d.n_kv_heads, per = (nh + nth - 1) / nth;
    const float scale = 1.0f / sqrtf((float)hd);
    const float *kc = m->key_cache + (size_t)j->layer * m->n_ctx * kvd;
    const float *vc = m->value_cache + (size_t)j->layer * m->n_ctx * kvd;
    for (int32_t h = ith * per; h < (ith + 1) * per && h < nh; h++) {
        const float *q = m->qkv + (size_t)h * hd;
        const int32_t kvh = h / group;
        float *att = m->att + (size_t)h * m->n_ctx, mx = -INFINITY, sum = 0.0f;
        for (int32_t t = 0; t <= j->pos; t++) {
            const float *kt = kc + (size_t)t * kvd + (size_t)kvh * hd;
            float s = 0.0f;
            for (int32_t i = 0; i < hd; i++) s += q[i] * kt[i];
            att[t] = s * scale;
            if (att[t] > mx) mx = att[t];
        }
        for (int32_t t = 0; t <= j->pos; t++) {
            att[t] = expf(att[t] - mx);
            sum += att[t];
        }
        float *out = m->ao + (size_t)h * hd;
        for (int32_t i = 0; i < hd; i++) out[i] = 0.0f;
        for (int32_t t = 0; t <= j->pos; t++) {
            const float a = att[t] / sum, *vt = vc + (size_t)t * kvd + (size_t)kvh * hd;
            for (int32_t i = 0; i < hd; i++) out[i] += a * vt[i];
        }
    }
}

/* ---- small serial pieces -------------------------------------------------------------------- */

static void rmsnorm(float *out, const float *x, int32_t n, float eps, const float *w) {
    float ss = 0.0f;
    for (int32_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int32_t i = 0; i < n; i++) out[i] = x[i] * r * (w ? w[i] : 1.0f);
}

static void rope(float *v, int32_t n_heads, int32_t hd, const float *c, const float *s) {
    for (int32_t h = 0; h < n_heads; h++, v += hd)
        for (int32_t i = 0; i < hd / 2; i++) {
            const float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * c[i] - x1 * s[i];
            v[2 * i + 1] = x0 * s[i] + x1 * c[i];
        }
}

static void record(lr_model *m, const int32_t *idx, int32_t n, int32_t k) {
    if (m->trace_len + n > m->trace_cap) return;
    uint8_t *mask = m->trace + m->trace_len;
    memset(mask, idx ? 0 : 1, (size_t)n);
    for (int32_t j = 0; idx && j < k; j++) mask[idx[j]] = 1;
    m->trace_len += n;
}

/* Top-K of x into m->idx; returns the index list, or NULL when every input is kept */
static const int32_t *select_topk(lr_model *m, const float *x, int32_t n, int32_t k) {
    const int32_t *idx = NULL;
    if (k < n) {
        lr_topk_impl(x, n, k, m->idx, m->topk_scratch);
        idx = m->idx;
    }
    if (m->trace) record(m, idx, n, k);
    return idx;
}

/* ---- the decode step ------------------------------------------------------------------------ */

static void forward_layer(lr_model *m, int32_t l, int32_t pos) {
    const lr_model_desc *d = &m->d;
    const lr_layer *L = &m->layers[l];
    const int32_t dim = d->dim, hd = d->head_dim, nh = d->n_heads, nkv = d->n_kv_heads;
    const int32_t qd = nh * hd, kvd = nkv * hd, ff = d->ffn_dim;
    const int32_t *idx;
    int32_t k;

    if (L->adapter.data) {                                   /* r <- r A_l */
        matvec(m, &L->adapter, m->x, NULL, dim, m->tmp);
        memcpy(m->x, m->tmp, (size_t)dim * sizeof(float));
    }
    /* attention */
    rmsnorm(m->xn, m->x, dim, d->norm_eps, NULL);
    k = m->k[ATTN_IN][l];
    idx = select_topk(m, m->xn, dim, k);
    matvec(m, &L->wqkv, m->xn, idx, idx ? k : dim, m->qkv);
    rope(m->qkv, nh, hd, m->rope_cos, m->rope_sin);
    rope(m->qkv + qd, nkv, hd, m->rope_cos, m->rope_sin);
    const size_t off = ((size_t)l * m->n_ctx + pos) * kvd;
    memcpy(m->key_cache + off, m->qkv + qd, (size_t)kvd * sizeof(float));
    memcpy(m->value_cache + off, m->qkv + qd + kvd, (size_t)kvd * sizeof(float));
    attn_job aj = {m, l, pos};
    lr_pool_run(m->pool, attn_task, &aj);
    k = m->k[ATTN_OUT][l];
    idx = select_topk(m, m->ao, qd, k);
    matvec(m, &L->wo, m->ao, idx, idx ? k : qd, m->tmp);
    for (int32_t i = 0; i < dim; i++) m->x[i] += m->tmp[i];
    /* MLP */
    rmsnorm(m->xn, m->x, dim, d->norm_eps, NULL);
    k = m->k[MLP_IN][l];
    idx = select_topk(m, m->xn, dim, k);
    matvec(m, &L->wgu, m->xn, idx, idx ? k : dim, m->gu);
    for (int32_t i = 0; i < ff; i++) {
        const float g = m->gu[i];
        m->hm[i] = g / (1.0f + expf(-g)) * m->gu[ff + i];
    }
    k = m->k[MLP_OUT][l];
    idx = select_topk(m, m->hm, ff, k);
    matvec(m, &L->wdown, m->hm, idx, idx ? k : ff, m->tmp);
    for (int32_t i = 0; i < dim; i++) m->x[i] += m->tmp[i];
}

static int32_t forward_token(lr_model *m, int32_t token, int32_t pos, float *logits) {
    const lr_model_desc *d = &m->d;
    lr_dequant_row(&d->embd, token, m->x);
    for (int32_t i = 0; i < d->head_dim / 2; i++) {
        const double a = (double)pos * m->inv_freq[i];
        m->rope_cos[i] = (float)cos(a);
        m->rope_sin[i] = (float)sin(a);
    }
    for (int32_t l = 0; l < d->n_layers; l++) forward_layer(m, l, pos);
    if (!logits) return LR_OK;
    if (d->out_adapter.data) {
        matvec(m, &d->out_adapter, m->x, NULL, d->dim, m->tmp);
        memcpy(m->x, m->tmp, (size_t)d->dim * sizeof(float));
    }
    rmsnorm(m->xn, m->x, d->dim, d->norm_eps, d->out_norm.data ? (const float *)d->out_norm.data : NULL);
    dot_job dj = {&d->head, m->xn, logits, lr_kernels()};
    lr_pool_run(m->pool, dot_task, &dj);
    for (int32_t v = 0; v < d->n_vocab; v++)
        if (!isfinite(logits[v])) return LR_ENAN;
    return LR_OK;
}

int32_t lr_eval(lr_model *m, const int32_t *tokens, int32_t n, int32_t pos0, float *logits, int32_t all_logits) {
    if (!m || !tokens || n < 1) return LR_EARG;
    if (pos0 < 0 || pos0 > m->n_past || n > m->n_ctx - pos0) return LR_ERANGE;
    for (int32_t t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= m->d.n_vocab) return LR_ERANGE;
    for (int32_t t = 0; t < n; t++) {
        float *out = NULL;
        if (logits && all_logits) out = logits + (size_t)t * m->d.n_vocab;
        else if (logits && t == n - 1) out = logits;
        const int32_t rc = forward_token(m, tokens[t], pos0 + t, out);
        m->n_past = pos0 + t + 1;
        if (rc) return rc;
    }
    return LR_OK;
}

/* ---- construction --------------------------------------------------------------------------- */

static int32_t fail(char *err, int32_t len, int32_t code, const char *msg) {
    if (err && len > 0) snprintf(err, (size_t)len, "%s", msg);
    return code;
}

static int32_t check_desc(const lr_model_desc *d, char *err, int32_t len) {
    char msg[160];
    if (d->n_vocab <= 0 || d->dim <= 0 || d->n_layers <= 0 || d->n_heads <= 0 || d->n_kv_heads <= 0 ||
        d->head_dim <= 0 || d->ffn_dim <= 0 || d->head_dim % 2 || d->n_heads % d->n_kv_heads ||
        !(d->norm_eps > 0.0f) || !(d->rope_base > 1.0f) || !d->layers)
        return fail(err, len, LR_EARG, "invalid hyper-parameters");
    const int32_t dim = d->dim, qd = d->n_heads * d->head_dim, kvd = d->n_kv_heads * d->head_dim;
    struct { const lr_tensor *t; int32_t rows, cols, f32; const char *name; int optional; } want[] = {
        {&d->embd, d->n_vocab, dim, 0, "token_embd", 0},
        {&d->head, d->n_vocab, dim, 0, "head", 0},
        {&d->out_adapter, dim, dim, 0, "output_adapter", 1},
        {&d->out_norm, 1, dim, 1, "output_norm", 1},
        {&d->rope_freqs, 1, d->head_dim / 2, 1, "rope_freqs", 1},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (want[i].optional && !want[i].t->data) continue;
        if (lr_tensor_check(want[i].t, want[i].rows, want[i].cols, want[i].f32)) {
            snprintf(msg, sizeof(msg), "tensor %s: wrong shape, type or size", want[i].name);
            return fail(err, len, LR_ESHAPE, msg);
        }
    }
    for (int32_t l = 0; l < d->n_layers; l++) {
        const lr_layer *L = &d->layers[l];
        struct { const lr_tensor *t; int32_t rows, cols; const char *name; } lw[] = {
            {&L->wqkv, dim, qd + 2 * kvd, "attn_qkv"}, {&L->wo, qd, dim, "attn_output"},
            {&L->wgu, dim, 2 * d->ffn_dim, "ffn_gate_up"}, {&L->wdown, d->ffn_dim, dim, "ffn_down"},
            {&L->adapter, dim, dim, "adapter"},
        };
        for (int i = 0; i < 5; i++) {
            if (i == 4 && !L->adapter.data) continue;
            if (lr_tensor_check(lw[i].t, lw[i].rows, lw[i].cols, 0)) {
                snprintf(msg, sizeof(msg), "layer %d tensor %s: wrong shape, type or size", (int)l, lw[i].name);
                return fail(err, len, LR_ESHAPE, msg);
            }
        }
    }
    return LR_OK;
}

void lr_model_free(lr_model *m) {
    if (!m) return;
    if (m->pool) lr_pool_free(m->pool);
    for (int i = 0; i < 4; i++) free(m->k[i]);
    free(m->layers);
    free(m->key_cache);
    free(m->value_cache);
    free(m->x); free(m->xn); free(m->tmp); free(m->qkv); free(m->att); free(m->ao);
    free(m->gu); free(m->hm); free(m->idx); free(m->topk_scratch);
    free(m->inv_freq); free(m->rope_cos); free(m->rope_sin);
    free(m);
}

lr_model *lr_model_new(const lr_model_desc *desc, int32_t n_ctx, int32_t n_threads, char *err, int32_t err_len) {
    if (!desc) { fail(err, err_len, LR_EARG, "no model description"); return NULL; }
    if (check_desc(desc, err, err_len)) return NULL;
    if (n_ctx < 1 || n_ctx > (1 << 22) || n_threads < 1 || n_threads > 512) {
        fail(err, err_len, LR_EARG, "n_ctx or n_threads out of range");
        return NULL;
    }
    lr_model *m = calloc(1, sizeof(*m));
    if (!m) { fail(err, err_len, LR_ENOMEM, "out of memory"); return NULL; }
    m->d = *desc;
    m->n_ctx = n_ctx;
    const int32_t L = desc->n_layers, dim = desc->dim, hd = desc->head_dim;
    const int32_t qd = desc->n_heads * hd, kvd = desc->n_kv_heads * hd, ff = desc->ffn_dim;
    int32_t widest = dim > qd ? dim : qd;
    if (ff > widest) widest = ff;
    const size_t kv = (size_t)L * (size_t)n_ctx * (size_t)kvd;
    m->layers = malloc((size_t)L * sizeof(lr_layer));
    m->key_cache = calloc(kv, sizeof(float));
    m->value_cache = calloc(kv, sizeof(float));
    m->x = calloc((size_t)dim, sizeof(float));
    m->xn = calloc((size_t)dim, sizeof(float));
    m->tmp = calloc((size_t)dim, sizeof(float));
    m->qkv = calloc((size_t)(qd + 2 * kvd), sizeof(float));
    m->att = calloc((size_t)desc->n_heads * (size_t)n_ctx, sizeof(float));
    m->ao = calloc((size_t)qd, sizeof(float));
    m->gu = calloc((size_t)2 * ff, sizeof(float));
    m->hm = calloc((size_t)ff, sizeof(float));
    m->idx = calloc((size_t)widest, sizeof(int32_t));
    m->topk_scratch = calloc((size_t)widest, sizeof(uint32_t));
    m->inv_freq = calloc((size_t)hd / 2, sizeof(double));
    m->rope_cos = calloc((size_t)hd / 2, sizeof(float));
    m->rope_sin = calloc((size_t)hd / 2, sizeof(float));
    int ok = m->layers && m->key_cache && m->value_cache && m->x && m->xn && m->tmp && m->qkv && m->att &&
             m->ao && m->gu && m->hm && m->idx && m->topk_scratch && m->inv_freq && m->rope_cos && m->rope_sin;
    for (int i = 0; i < 4 && ok; i++) ok = (m->k[i] = malloc((size_t)L * sizeof(int32_t))) != NULL;
    if (!ok) {
        lr_model_free(m);
        fail(err, err_len, LR_ENOMEM, "out of memory (KV cache or buffers)");
        return NULL;
    }
    memcpy(m->layers, desc->layers, (size_t)L * sizeof(lr_layer));
    m->d.layers = m->layers;
    const int32_t widths[4] = {dim, qd, dim, ff};
    for (int i = 0; i < 4; i++)
        for (int32_t l = 0; l < L; l++) m->k[i][l] = widths[i];   /* dense until set */
    const float *freqs = desc->rope_freqs.data;
    for (int32_t i = 0; i < hd / 2; i++) {
        m->inv_freq[i] = pow((double)desc->rope_base, -(double)(2 * i) / (double)hd);
        if (freqs) m->inv_freq[i] /= (double)freqs[i];
    }
    m->pool = lr_pool_new(n_threads);
    if (!m->pool) {
        lr_model_free(m);
        fail(err, err_len, LR_ETHREAD, "cannot start threads");
        return NULL;
    }
    return m;
}

int32_t lr_model_set_topk(lr_model *m, const int32_t *k0, const int32_t *k1, const int32_t *k2, const int32_t *k3) {
    if (!m || !k0 || !k1 || !k2 || !k3) return LR_EARG;
    const int32_t *ks[4] = {k0, k1, k2, k3};
    const int32_t widths[4] = {m->d.dim, m->d.n_heads * m->d.head_dim, m->d.dim, m->d.ffn_dim};
    for (int i = 0; i < 4; i++)
        for (int32_t l = 0; l < m->d.n_layers; l++)
            if (ks[i][l] < 1 || ks[i][l] > widths[i]) return LR_ERANGE;
    for (int i = 0; i < 4; i++) memcpy(m->k[i], ks[i], (size_t)m->d.n_layers * sizeof(int32_t));
    return LR_OK;
}

int32_t lr_model_n_ctx(const lr_model *m) { return m ? m->n_ctx : 0; }

int64_t lr_model_trace(lr_model *m, uint8_t *masks, int64_t capacity) {
    if (!m || capacity < 0) return LR_EARG;
    const int64_t written = m->trace_len;
    m->trace = masks;
    m->trace_cap = masks ? capacity : 0;
    m->trace_len = 0;
    return written;
}

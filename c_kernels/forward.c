/* A LaRoSA decode step in one file: embedding, per layer (adapter, norm, Top-K, sparse q/k/v,
 * RoPE, grouped-query attention over the KV cache, Top-K, sparse o, norm, Top-K, sparse gate/up,
 * SwiGLU, Top-K, sparse down), final adapter, norm and head. FORMAT.md has the math.
 * Prompts of more than one token take the batched path in prefill.c. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "model.h"

/* ---- per-op timers (lr_model_profile): the clock is read only when they are on ---------------- */

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}
#define TIMED(m, op, ...)                                                                           \
    do {                                                                                            \
        if ((m)->profile) {                                                                         \
            const double t0_ = now_ns();                                                            \
            __VA_ARGS__;                                                                            \
            (m)->prof_ns[op] += now_ns() - t0_;                                                     \
        } else {                                                                                    \
            __VA_ARGS__;                                                                            \
        }                                                                                           \
    } while (0)

/* ---- parallel sections ---------------------------------------------------------------------- */

typedef struct {
    const lr_tensor *w;
    const float *x;
    const int32_t *idx;
    int32_t k;
    float *y;
    const lr_kernel_table *kt;
} spmv_job;

static void spmv_task(void *p, int ith, int nth, int thread) {
    spmv_job *j = p;
    const int32_t units = (j->w->cols + QK - 1) / QK, per = (units + nth - 1) / nth;
    int32_t c0 = ith * per * QK, c1 = (ith + 1) * per * QK;
    if (c1 > j->w->cols) c1 = j->w->cols;
    if (c0 < c1) j->kt->spmv[lr_type_slot(j->w->type)](j->w, j->x, j->idx, j->k, j->y, c0, c1);
}

/* With threads, the selected rows are split between the shares (each streams whole rows of the
 * input-major weights: a split by output columns would read every row in short pieces, which the
 * prefetchers follow badly), each share sums its rows into its own buffer, and a second pass adds
 * the buffers in share order (the result does not depend on which thread ran which share). */
typedef struct { spmv_job s; float *parts; int32_t stride; } rows_job;

static void rows_task(void *p, int ith, int nth, int thread) {
    rows_job *j = p;
    const int32_t per = (j->s.k + nth - 1) / nth, r0 = ith * per;
    const int32_t r1 = r0 + per < j->s.k ? r0 + per : j->s.k;
    float *y = j->parts + (size_t)ith * (size_t)j->stride;
    if (r0 >= r1) memset(y, 0, (size_t)j->s.w->cols * sizeof(float));
    else j->s.kt->spmv[lr_type_slot(j->s.w->type)](j->s.w, j->s.x, j->s.idx + r0, r1 - r0, y, 0, j->s.w->cols);
}

typedef struct { const float *parts; int32_t stride, n_parts, cols; float *y; } sum_job;

static void sum_task(void *p, int ith, int nth, int thread) {
    sum_job *j = p;
    const int32_t per = (j->cols + nth * 16 - 1) / (nth * 16) * 16, c0 = ith * per;
    const int32_t c1 = c0 + per < j->cols ? c0 + per : j->cols;
    if (c0 >= c1) return;
    memcpy(j->y + c0, j->parts + c0, (size_t)(c1 - c0) * sizeof(float));
    for (int32_t s = 1; s < j->n_parts; s++) {
        const float *part = j->parts + (size_t)s * (size_t)j->stride;
#pragma omp simd
        for (int32_t c = c0; c < c1; c++) j->y[c] += part[c];
    }
}

/* Integer kernels (_IM weights): x is quantized once, then each thread takes a contiguous range of
 * the input groups (lr_im_parts: a partition fixed by the thread count and the weight, not by the
 * selection) over all output columns, so that it streams whole rows (a split by columns reads every
 * row in short pieces, which the prefetchers follow badly: 2 threads were slower than one), and
 * the parts are added in order. The prompt path (prefill.c) splits and adds the same way, so a
 * token gets the same bits either way for a given thread count. */
typedef struct { const lr_tensor *w; const lr_qsel *s; float *parts; int32_t *acc; int32_t stride, acc_stride, n_parts; qspmv_fn fn; } qspmv_job;

int32_t lr_im_parts(const lr_model *m, const lr_tensor *w) {
    const int32_t G = w->rows / QK, t = lr_pool_size(m->pool);
    return t < G ? (t < LR_MAX_PARTS ? t : LR_MAX_PARTS) : G;
}

static void qspmv_task(void *p, int ith, int nth, int thread) {
    qspmv_job *j = p;
    if (ith >= j->n_parts) return;
    const int32_t G = j->w->rows / QK, g0 = G * ith / j->n_parts, g1 = G * (ith + 1) / j->n_parts;
    const lr_qsel *s = j->s;
    int32_t a = 0, b;
    while (a < s->n_groups && s->group[a] < g0) a++;
    for (b = a; b < s->n_groups && s->group[b] < g1; b++) {}
    lr_qsel v = *s;   /* the groups [g0, g1) of the selection */
    v.n_groups = b - a, v.group += a, v.start += a, v.dx += a, v.sx += a;
    j->fn(j->w, &v, j->parts + (size_t)ith * (size_t)j->stride, 0, j->w->cols,
          j->acc + (size_t)thread * (size_t)j->acc_stride);
}

/* y = x W over the k rows idx (idx NULL: all rows) */
static void matvec(lr_model *m, const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, float *y) {
    if (lr_is_im(w->type)) {
        lr_qsel_build(x, idx, k, &m->qsel);
        const qspmv_fn fn = lr_qkernels()->qspmv[lr_type_slot(w->type)];
        const int32_t parts = lr_im_parts(m, w);
        if (parts == 1) {
            fn(w, &m->qsel, y, 0, w->cols, m->qacc);
            return;
        }
        qspmv_job j = {w, &m->qsel, m->parts, m->qacc, m->out_widest, (m->out_widest + 15) / 16 * 16, parts, fn};
        lr_pool_run(m->pool, qspmv_task, &j);
        sum_job sj = {m->parts, m->out_widest, parts, w->cols, y};
        lr_pool_run(m->pool, sum_task, &sj);
        return;
    }
    if (lr_pool_size(m->pool) == 1 || k < 2 * lr_pool_shares(m->pool)) {
        spmv_job j = {w, x, idx, k, y, lr_kernels()};
        lr_pool_run(m->pool, spmv_task, &j);
        return;
    }
    rows_job rj = {{w, x, idx ? idx : m->iota, k, NULL, lr_kernels()}, m->parts, m->out_widest};
    lr_pool_run(m->pool, rows_task, &rj);
    sum_job sj = {m->parts, m->out_widest, lr_pool_shares(m->pool), w->cols, y};
    lr_pool_run(m->pool, sum_task, &sj);
}

void lr_matvec(lr_model *m, const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, float *y) {
    matvec(m, w, x, idx, k, y);
}

typedef struct { const lr_tensor *w; const float *x; const lr_qx *qx; float *y; const void *w8; } dot_job;

static void dot_task(void *p, int ith, int nth, int thread) {
    (void)thread;
    dot_job *j = p;
    const int32_t slot = lr_type_slot(j->w->type);
    const qdot8_fn dot8 = j->w8 ? lr_qkernels()->qdot8[slot] : NULL;
    const int32_t unit = dot8 ? 8 : 1, units = j->w->rows / unit;   /* rows, or groups of 8 rows */
    const int32_t per = (units + nth - 1) / nth;
    int32_t u0 = ith * per, u1 = u0 + per;
    if (u1 > units) u1 = units;
    if (u0 < u1 && dot8) dot8(j->w, j->w8, j->qx, j->y, u0, u1);
    else if (u0 < u1 && j->qx) lr_qkernels()->qdot[slot](j->w, j->qx, j->y, u0, u1);
    else if (u0 < u1) lr_kernels()->dot_rows[slot](j->w, j->x, j->y, u0, u1);
    if (dot8 && ith == nth - 1 && units * 8 < j->w->rows)   /* the rows past the last 8 as stored */
        lr_qkernels()->qdot[slot](j->w, j->qx, j->y, units * 8, j->w->rows);
}

/* logits = W x for the output-major head (Q8_0 / Q4_0: x quantized in blocks of 32, llama.cpp's
 * Q8_0 activations); each row is one thread's, so the result does not depend on the threads */
void lr_head_rows(lr_model *m, const float *x, float *logits) {
    const lr_tensor *w = &m->d.head;
    lr_qx qx = {m->hxq, m->hdx, m->hsx};
    const int quant = w->type == LR_Q8_0 || w->type == LR_Q4_0;
    if (quant) lr_quantize_blocks(x, w->cols, m->hxq, m->hdx, m->hsx);
    dot_job dj = {w, x, quant ? &qx : NULL, logits, quant ? m->head8 : NULL};
    lr_pool_run(m->pool, dot_task, &dj);
}

typedef struct { lr_model *m; int32_t layer, pos; } attn_job;

static void attn_task(void *p, int ith, int nth, int thread) {
    attn_job *j = p;
    lr_model *m = j->m;
    const int32_t nh = m->d.n_heads, hd = m->d.head_dim, per = (nh + nth - 1) / nth;
    for (int32_t h = ith * per; h < (ith + 1) * per && h < nh; h++)
        lr_attend_head(m, j->layer, j->pos, h, m->qkv + (size_t)h * hd, m->ao + (size_t)h * hd,
                       m->att + (size_t)h * m->n_ctx, thread);
}

/* ---- shared small pieces (also used by prefill.c) ------------------------------------------ */

void lr_attend_head(const lr_model *m, int32_t layer, int32_t pos, int32_t head, const float *q,
                    float *out, float *att, int32_t thread) {
    const int32_t hd = m->d.head_dim;
    const int32_t kvh = head / (m->d.n_heads / m->d.n_kv_heads);   /* grouped-query: shared kv head */
    const float scale = 1.0f / sqrtf((float)hd);
    /* a sliding-window layer sees positions pos - n_swa + 1 .. pos (llama.cpp: key p0 is masked for
     * query p1 when p1 - p0 >= n_swa) */
    const int32_t n_swa = m->layers[layer].n_swa, first = n_swa && pos >= n_swa ? pos - n_swa + 1 : 0;
    const size_t at = ((size_t)layer * m->d.n_kv_heads + (size_t)kvh) * m->n_ctx + (size_t)first;
    const uint8_t *kc = m->key_cache + at * m->k_row, *vc = m->value_cache + at * m->v_row;
    const lr_kernel_table *kt = lr_kernels();
    const int32_t n = pos + 1 - first;
    const void *qk = q;
    if (m->type_k == LR_Q8_0) {   /* q as the keys' blocks: integer dot products, as ggml's */
        block_q8_0 *qb = m->qk8 + (size_t)thread * (size_t)(hd / QK);
        lr_kv_quantize(LR_Q8_0, q, hd, qb);
        qk = qb;
    }
    kt->attn_scores[lr_kv_slot(m->type_k)](qk, kc, m->k_row, n, hd, scale, att);
    if (m->d.attn_softcap > 0.0f) {   /* Gemma 2: c tanh(s / c), as ggml scales, tanh, scales */
        const float c = m->d.attn_softcap, inv = 1.0f / c;
        for (int32_t t = 0; t < n; t++) att[t] = tanhf(att[t] * inv) * c;
    }
    float mx = -INFINITY, sum = 0.0f;
    for (int32_t t = 0; t < n; t++) mx = att[t] > mx ? att[t] : mx;
#pragma omp simd reduction(+ : sum)
    for (int32_t t = 0; t < n; t++) {
        att[t] = lr_expf(att[t] - mx);
        sum += att[t];
    }
    const float inv = 1.0f / sum;
    for (int32_t t = 0; t < n; t++) att[t] *= inv;
    kt->attn_values[lr_kv_slot(m->type_v)](att, vc, m->v_row, n, hd, out);
}

void lr_kv_write(lr_model *m, int32_t layer, int32_t pos, const float *k, const float *v) {
    const int32_t hd = m->d.head_dim;
    for (int32_t h = 0; h < m->d.n_kv_heads; h++) {
        const size_t row = ((size_t)layer * m->d.n_kv_heads + (size_t)h) * m->n_ctx + (size_t)pos;
        lr_kv_quantize(m->type_k, k + (size_t)h * hd, hd, m->key_cache + row * m->k_row);
        lr_kv_quantize(m->type_v, v + (size_t)h * hd, hd, m->value_cache + row * m->v_row);
    }
}

void lr_rmsnorm(float *out, const float *x, int32_t n, float eps, const float *w) {
    double ss = 0.0;   /* in double: a float32 sum of squares overflows from |x| ~ 1e19 */
#pragma omp simd reduction(+ : ss)
    for (int32_t i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    const float r = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int32_t i = 0; i < n; i++) out[i] = x[i] * r * (w ? w[i] : 1.0f);
}

void lr_add_bias(float *y, const lr_tensor *b, int32_t n) {
    if (!b->data) return;
    const float *v = b->data;
    for (int32_t i = 0; i < n; i++) y[i] += v[i];
}

void lr_block_out(const lr_model *m, const lr_tensor *bias, const lr_tensor *post_norm, float *y) {
    lr_add_bias(y, bias, m->d.dim);
    if (post_norm->data) lr_rmsnorm(y, y, m->d.dim, m->d.norm_eps, post_norm->data);
}

void lr_glu(const lr_model *m, const float *gu, float *out, int32_t i0, int32_t i1) {
    const int32_t ff = m->d.ffn_dim;
    if (m->d.act == LR_ACT_GELU_TANH) {
        const float *table = lr_gelu_table();
        for (int32_t i = i0; i < i1; i++) out[i] = lr_gelu_tanh(table, gu[i]) * gu[ff + i];
        return;
    }
#pragma omp simd
    for (int32_t i = i0; i < i1; i++) out[i] = lr_silu(gu[i]) * gu[ff + i];   /* vectorizes: lr_silu */
}

static float gelu_table[65536];
static pthread_once_t gelu_once = PTHREAD_ONCE_INIT;

static void gelu_build(void) {
    for (uint32_t i = 0; i < 65536; i++) {
        const float h = fp16_to_fp32((uint16_t)i);
        const float y = 0.5f * h * (1.0f + tanhf(0.79788456080286535587989211986876f * h * (1.0f + 0.044715f * h * h)));
        gelu_table[i] = fp16_to_fp32(fp32_to_fp16(y));
    }
}

const float *lr_gelu_table(void) {
    pthread_once(&gelu_once, gelu_build);
    return gelu_table;
}

void lr_embed(const lr_model *m, int32_t token, float *x) {
    lr_dequant_row(&m->d.embd, token, x);
    const float s = m->d.embd_scale;
    if (s != 0.0f && s != 1.0f)   /* ggml_scale of the looked-up row (Gemma) */
        for (int32_t i = 0; i < m->d.dim; i++) x[i] *= s;
}

int32_t lr_logits_done(const lr_model *m, float *logits) {
    const int32_t nv = m->d.n_vocab;
    if (m->d.final_softcap > 0.0f) {   /* c tanh(z / c), as ggml scales, tanh, scales */
        const float c = m->d.final_softcap, inv = 1.0f / c;
        for (int32_t v = 0; v < nv; v++) logits[v] = tanhf(logits[v] * inv) * c;
    }
    for (int32_t v = 0; v < nv; v++)
        if (!isfinite(logits[v])) return LR_ENAN;
    return LR_OK;
}

void lr_qkv_extras(const lr_model *m, const lr_layer *L, float *qkv) {
    const int32_t hd = m->d.head_dim, nh = m->d.n_heads, nkv = m->d.n_kv_heads;
    lr_add_bias(qkv, &L->bqkv, (nh + 2 * nkv) * hd);
    if (L->q_norm.data)
        for (int32_t h = 0; h < nh; h++) lr_rmsnorm(qkv + (size_t)h * hd, qkv + (size_t)h * hd, hd, m->d.norm_eps, L->q_norm.data);
    if (L->k_norm.data)
        for (int32_t h = 0; h < nkv; h++)
            lr_rmsnorm(qkv + (size_t)(nh + h) * hd, qkv + (size_t)(nh + h) * hd, hd, m->d.norm_eps, L->k_norm.data);
}

void lr_rope_angles(const lr_model *m, int32_t pos, int32_t n_swa, float *c, float *s) {
    const double *inv_freq = n_swa ? m->inv_freq_swa : m->inv_freq;
    for (int32_t i = 0; i < m->n_rot / 2; i++) {
        const double a = (double)pos * inv_freq[i];
        c[i] = (float)cos(a);
        s[i] = (float)sin(a);
    }
}

/* the first n_rot values of each of n_heads heads of hd, in adjacent pairs (the rest pass through) */
static void rope_heads(float *v, int32_t n_heads, int32_t hd, int32_t n_rot, const float *c, const float *s) {
    for (int32_t h = 0; h < n_heads; h++, v += hd)
        for (int32_t i = 0; i < n_rot / 2; i++) {
            const float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * c[i] - x1 * s[i];
            v[2 * i + 1] = x0 * s[i] + x1 * c[i];
        }
}

void lr_rope_qk(const lr_model *m, const lr_layer *L, float *qkv, int32_t pos, const float *c, const float *s) {
    const int32_t hd = m->d.head_dim, nh = m->d.n_heads, qd = nh * hd;
    if (!L->no_rope) {
        rope_heads(qkv, nh, hd, m->n_rot, c, s);
        rope_heads(qkv + qd, m->d.n_kv_heads, hd, m->n_rot, c, s);
    }
    if (m->d.attn_temp_scale != 0.0f) {
        /* llama.cpp (llm_graph_input_attn_temp): float position / length, floor, log in double */
        const float f = floorf((float)pos / (float)m->d.attn_temp_length);
        const float t = (float)(log((double)f + 1.0) * (double)m->d.attn_temp_scale + 1.0);
        for (int32_t i = 0; i < qd; i++) qkv[i] *= t;
    }
}

/* Budget mode: c keys exceed the threshold; the token has spent D above its plan so far and R is
 * the planned cost from here on, so it keeps c (1 - D / R) inputs, and the last block input of the
 * last layer takes what remains. A token's total is its plan unless that last clamp to [1, n] bites,
 * while its layers still trade rows among themselves. */
static int32_t budget_k(lr_model *m, const float *key, float thr, int32_t layer, int32_t block, int32_t t) {
    const int32_t n = m->width[block];
    double *over = &m->over[t % LR_BATCH];
    if (layer == 0 && block == ATTN_IN) *over = 0.0;     /* the first selection of a token */
    const double plan = m->plan[block][layer], cost = m->cost[block][layer];
    double want;
    if (layer == m->d.n_layers - 1 && block == MLP_OUT) {
        want = plan - *over / cost;
    } else {
        int32_t c = 0;
        for (int32_t i = 0; i < n; i++) c += fabsf(key[i]) > thr;
        want = (double)c * (1.0 - *over / m->remain[block][layer]);
    }
    const int32_t k = want < 1.0 ? 1 : want > (double)n ? n : (int32_t)lrint(want);
    *over += ((double)k - plan) * cost;
    return k;
}

const int32_t *lr_select(lr_model *m, const float *x, const float *gate, int32_t layer, int32_t block,
                         int32_t t, int32_t thread, int32_t *k) {
    const int32_t n = m->width[block];
    const float *score = m->layers[layer].score[block].data, thr = m->thr[block][layer];
    const int gate_key = block == MLP_OUT && m->d.mlp_out_gate_key;
    float *keys = m->keys + (size_t)thread * m->widest;
    const float *key = x;
    if (score || gate_key) {
        const float *gelu = m->d.act == LR_ACT_GELU_TANH ? lr_gelu_table() : NULL;
        for (int32_t i = 0; i < n; i++) {
            const float v = !gate_key ? x[i] : gelu ? lr_gelu_tanh(gelu, gate[i]) : lr_silu(gate[i]);
            keys[i] = fabsf(v) * (score ? score[i] : 1.0f);
        }
        key = keys;
    }
    int32_t *idx = m->idx + (size_t)thread * m->widest, cnt = 0;
    uint32_t *scratch = m->topk_scratch + (size_t)thread * LR_TOPK_SCRATCH(m->widest);
    const topk_fn topk = lr_kernels()->topk;
    if (thr >= 0.0f && m->budget) {  /* budget: the count above the threshold, scaled back on plan */
        cnt = budget_k(m, key, thr, layer, block, t);
        if (cnt < n) topk(key, n, cnt, idx, scratch);
    } else if (thr >= 0.0f) {        /* threshold: every key above it */
        for (int32_t i = 0; i < n; i++)
            if (fabsf(key[i]) > thr) idx[cnt++] = i;
    } else {                         /* Top-K: the k largest keys */
        cnt = m->k[block][layer];
        if (cnt < n) topk(key, n, cnt, idx, scratch);
    }
    if (cnt >= n) {
        idx = NULL;
        cnt = n;
    }
    __atomic_fetch_add(&m->rows_read[block], (uint64_t)cnt, __ATOMIC_RELAXED);   /* prompt tokens select in parallel */
    uint64_t groups = idx ? (uint64_t)(cnt > 0) : (uint64_t)(n + QK - 1) / QK;   /* idx ascending: */
    for (int32_t j = 1; idx && j < cnt; j++)   /* group changes (unsigned: a shift; 2x faster) */
        groups += (uint32_t)idx[j] / QK != (uint32_t)idx[j - 1] / QK;
    __atomic_fetch_add(&m->groups_read[block], groups, __ATOMIC_RELAXED);
    if (m->trace) {   /* masks laid out by (token, layer, block input) */
        const int64_t per_layer = m->width[0] + m->width[1] + m->width[2] + m->width[3];
        int64_t off = (m->trace_tokens + t) * per_layer * m->d.n_layers + layer * per_layer;
        for (int b = 0; b < block; b++) off += m->width[b];
        if (off + n <= m->trace_cap) {
            uint8_t *mask = m->trace + off;
            memset(mask, idx ? 0 : 1, (size_t)n);
            for (int32_t j = 0; idx && j < cnt; j++) mask[idx[j]] = 1;
        }
        if (m->trace_keys && off + n <= m->trace_keys_cap)
            for (int32_t i = 0; i < n; i++) m->trace_keys[off + i] = fabsf(key[i]);
    }
    *k = cnt;
    return idx;
}

/* the gated activation (lr_glu) over all threads (serial, SwiGLU was 3 % of a 2-thread step: 8960
 * expf per layer); each element is computed as alone, so the split changes no bit */
typedef struct { const lr_model *m; const float *gu; float *out; } glu_job;

static void glu_task(void *p, int ith, int nth, int thread) {
    const glu_job *j = p;
    const int32_t ff = j->m->d.ffn_dim, per = (ff + nth * 16 - 1) / (nth * 16) * 16, i0 = ith * per;
    if (i0 < ff) lr_glu(j->m, j->gu, j->out, i0, i0 + per < ff ? i0 + per : ff);
}

/* ---- the decode step ------------------------------------------------------------------------ */

static void forward_layer(lr_model *m, int32_t l, int32_t pos) {
    const lr_model_desc *d = &m->d;
    const lr_layer *L = &m->layers[l];
    const int32_t dim = d->dim, hd = d->head_dim, nh = d->n_heads, nkv = d->n_kv_heads;
    const int32_t qd = nh * hd, kvd = nkv * hd;
    const int32_t *idx;
    int32_t k;

    if (L->adapter.data) {                                   /* r <- r A_l */
        TIMED(m, LR_PROF_ADAPTER, matvec(m, &L->adapter, m->x, NULL, dim, m->tmp));
        memcpy(m->x, m->tmp, (size_t)dim * sizeof(float));
    }
    /* attention */
    TIMED(m, LR_PROF_NORM, lr_rmsnorm(m->xn, m->x, dim, d->norm_eps, L->attn_norm.data));
    TIMED(m, LR_PROF_SELECT, idx = lr_select(m, m->xn, NULL, l, ATTN_IN, 0, 0, &k));
    TIMED(m, LR_PROF_QKV, matvec(m, &L->wqkv, m->xn, idx, k, m->qkv));
    const float *rc = L->n_swa ? m->rope_cos_swa : m->rope_cos, *rs = L->n_swa ? m->rope_sin_swa : m->rope_sin;
    TIMED(m, LR_PROF_ATTN, {
        lr_qkv_extras(m, L, m->qkv);
        lr_rope_qk(m, L, m->qkv, pos, rc, rs);
        lr_kv_write(m, l, pos, m->qkv + qd, m->qkv + qd + kvd);
        attn_job aj = {m, l, pos};
        lr_pool_run(m->pool, attn_task, &aj);
    });
    TIMED(m, LR_PROF_SELECT, idx = lr_select(m, m->ao, NULL, l, ATTN_OUT, 0, 0, &k));
    TIMED(m, LR_PROF_O, matvec(m, &L->wo, m->ao, idx, k, m->tmp));
    lr_block_out(m, &L->bo, &L->post_attn_norm, m->tmp);
    for (int32_t i = 0; i < dim; i++) m->x[i] += m->tmp[i];
    /* MLP */
    TIMED(m, LR_PROF_NORM, lr_rmsnorm(m->xn, m->x, dim, d->norm_eps, L->ffn_norm.data));
    TIMED(m, LR_PROF_SELECT, idx = lr_select(m, m->xn, NULL, l, MLP_IN, 0, 0, &k));
    TIMED(m, LR_PROF_GATE_UP, matvec(m, &L->wgu, m->xn, idx, k, m->gu));
    TIMED(m, LR_PROF_SWIGLU, {
        glu_job gj = {m, m->gu, m->hm};
        lr_pool_run(m->pool, glu_task, &gj);
    });
    TIMED(m, LR_PROF_SELECT, idx = lr_select(m, m->hm, m->gu, l, MLP_OUT, 0, 0, &k));
    TIMED(m, LR_PROF_DOWN, matvec(m, &L->wdown, m->hm, idx, k, m->tmp));
    lr_block_out(m, &L->bdown, &L->post_ffn_norm, m->tmp);
    for (int32_t i = 0; i < dim; i++) m->x[i] += m->tmp[i];
}

/* logits of the residual m->x: final adapter, norm, head */
static int32_t head(lr_model *m, float *logits) {
    const lr_model_desc *d = &m->d;
    if (d->out_adapter.data) {
        matvec(m, &d->out_adapter, m->x, NULL, d->dim, m->tmp);
        memcpy(m->x, m->tmp, (size_t)d->dim * sizeof(float));
    }
    lr_rmsnorm(m->xn, m->x, d->dim, d->norm_eps, d->out_norm.data ? (const float *)d->out_norm.data : NULL);
    lr_head_rows(m, m->xn, logits);
    return lr_logits_done(m, logits);
}

static int32_t forward_token(lr_model *m, int32_t token, int32_t pos, float *logits) {
    lr_embed(m, token, m->x);
    lr_rope_angles(m, pos, 0, m->rope_cos, m->rope_sin);
    if (m->inv_freq_swa) lr_rope_angles(m, pos, 1, m->rope_cos_swa, m->rope_sin_swa);
    for (int32_t l = 0; l < m->d.n_layers; l++) forward_layer(m, l, pos);
    int32_t rc = LR_OK;
    if (logits) TIMED(m, LR_PROF_HEAD, rc = head(m, logits));
    m->prof_tokens += m->profile != 0;
    return rc;
}

int32_t lr_eval(lr_model *m, const int32_t *tokens, int32_t n, int32_t pos0, float *logits, int32_t all_logits) {
    if (!m || !tokens || n < 1) return LR_EARG;
    if (pos0 < 0 || pos0 > m->n_past || n > m->n_ctx - pos0) return LR_ERANGE;
    for (int32_t t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= m->d.n_vocab) return LR_ERANGE;
    int32_t rc;
    if (n == 1) {
        rc = forward_token(m, tokens[0], pos0, logits);
        m->n_past = pos0 + 1;
    } else {
        rc = lr_prefill(m, tokens, n, pos0, logits, all_logits);
        if (rc == LR_OK && logits && !all_logits) rc = head(m, logits);   /* prefill leaves the last residual in m->x */
    }
    m->trace_tokens += n;
    m->rows_tokens += (uint64_t)n;
    return rc;
}

/* ---- construction --------------------------------------------------------------------------- */

static int32_t fail(char *err, int32_t len, int32_t code, const char *msg) {
    if (err && len > 0) snprintf(err, (size_t)len, "%s", msg);
    return code;
}

static int input_major_type(int32_t type) {
    return type == LR_F32 || type == LR_F16 || lr_is_im(type);
}

static int32_t check_desc(const lr_model_desc *d, char *err, int32_t len) {
    char msg[160];
    if (d->n_vocab <= 0 || d->dim <= 0 || d->n_layers <= 0 || d->n_heads <= 0 || d->n_kv_heads <= 0 ||
        d->head_dim <= 0 || d->ffn_dim <= 0 || d->head_dim % 2 || d->n_heads % d->n_kv_heads ||
        !(d->norm_eps > 0.0f) || !(d->rope_base > 1.0f) || !d->layers)
        return fail(err, len, LR_EARG, "invalid hyper-parameters");
    if (!(d->embd_scale >= 0.0f && d->embd_scale < 1e30f) || !(d->attn_softcap >= 0.0f && d->attn_softcap < 1e30f) ||
        !(d->final_softcap >= 0.0f && d->final_softcap < 1e30f) ||
        (d->act != LR_ACT_SILU && d->act != LR_ACT_GELU_TANH) || d->n_rot < 0 || d->n_rot % 2 ||
        d->n_rot > d->head_dim || (d->swa_no_freqs != 0 && d->swa_no_freqs != 1) ||
        !(fabsf(d->attn_temp_scale) < 1e30f) || (d->attn_temp_scale != 0.0f && d->attn_temp_length <= 0))
        return fail(err, len, LR_EARG, "invalid architecture parameters (embd_scale, soft-caps, act, n_rot, "
                                       "swa_no_freqs, attention temperature)");
    const int32_t n_rot = d->n_rot ? d->n_rot : d->head_dim;
    const int32_t dim = d->dim, qd = d->n_heads * d->head_dim, kvd = d->n_kv_heads * d->head_dim;
    struct { const lr_tensor *t; int32_t rows, cols, f32; const char *name; int optional; } want[] = {
        {&d->embd, d->n_vocab, dim, 0, "token_embd", 0},
        {&d->head, d->n_vocab, dim, 0, "head", 0},
        {&d->out_adapter, dim, dim, 0, "output_adapter", 1},
        {&d->out_norm, 1, dim, 1, "output_norm", 1},
        {&d->rope_freqs, 1, n_rot / 2, 1, "rope_freqs", 1},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (want[i].optional && !want[i].t->data) continue;
        /* output-major (embedding, head): F32, F16, Q8_0, Q4_0; the output adapter is input-major */
        if (want[i].t == &d->out_adapter ? !input_major_type(d->out_adapter.type) : lr_is_im(want[i].t->type))
            return fail(err, len, LR_ETYPE, "tensor type does not fit its layout (input- or output-major)");
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
            {&L->score[0], 1, dim, "score attn_in"}, {&L->score[1], 1, qd, "score attn_out"},
            {&L->score[2], 1, dim, "score mlp_in"}, {&L->score[3], 1, d->ffn_dim, "score mlp_out"},
            {&L->bqkv, 1, qd + 2 * kvd, "attn_qkv.bias"}, {&L->bo, 1, dim, "attn_output.bias"},
            {&L->bdown, 1, dim, "ffn_down.bias"}, {&L->q_norm, 1, d->head_dim, "attn_q_norm"},
            {&L->k_norm, 1, d->head_dim, "attn_k_norm"}, {&L->post_attn_norm, 1, dim, "post_attention_norm"},
            {&L->post_ffn_norm, 1, dim, "post_ffw_norm"}, {&L->attn_norm, 1, dim, "attn_norm"},
            {&L->ffn_norm, 1, dim, "ffn_norm"},
        };
        if (L->n_swa < 0 || (L->n_swa > 0 && !(d->rope_base_swa > 1.0f)) || (L->no_rope != 0 && L->no_rope != 1)) {
            snprintf(msg, sizeof(msg), "layer %d: a sliding window needs rope_base_swa > 1; no_rope is 0 or 1", (int)l);
            return fail(err, len, LR_EARG, msg);
        }
        for (int i = 0; i < (int)(sizeof(lw) / sizeof(lw[0])); i++) {
            if (i >= 4 && !lw[i].t->data) continue;   /* adapter, scores, biases and norms are optional */
            if (i >= 5 && lw[i].t->type != LR_F32) return fail(err, len, LR_ETYPE, "scores, biases and norms must be F32");
            if (i < 5 && !input_major_type(lw[i].t->type)) {
                snprintf(msg, sizeof(msg), "layer %d tensor %s: input-major weights are F32, F16, Q8_0_IM or Q4_0_IM",
                         (int)l, lw[i].name);
                return fail(err, len, LR_ETYPE, msg);
            }
            if (lr_tensor_check(lw[i].t, lw[i].rows, lw[i].cols, 0)) {
                snprintf(msg, sizeof(msg), "layer %d tensor %s: wrong shape, type or size", (int)l, lw[i].name);
                return fail(err, len, LR_ESHAPE, msg);
            }
        }
    }
    return LR_OK;
}

int32_t lr_model_head_repacked(const lr_model *m) { return m && m->head8 ? 1 : 0; }

void *lr_model_head8(const lr_model *m, int64_t *nbytes) {
    const size_t huge = (size_t)2 << 20;
    *nbytes = m && m->head8 ? (int64_t)((lr_x8_bytes(&m->d.head) + huge - 1) / huge * huge) : 0;
    return m ? m->head8 : NULL;
}

void lr_model_free(lr_model *m) {
    if (!m) return;
    if (m->pool) lr_pool_free(m->pool);
    for (int i = 0; i < 4; i++) {
        free(m->k[i]);
        free(m->thr[i]);
        free(m->plan[i]);
        free(m->cost[i]);
        free(m->remain[i]);
    }
    void *bufs[] = {m->layers, m->key_cache, m->value_cache, m->x, m->xn, m->tmp, m->qkv, m->att, m->ao,
                    m->gu, m->hm, m->idx, m->topk_scratch, m->keys, m->bx, m->bxn, m->by, m->bqkv, m->bao, m->bgu,
                    m->scores, m->inv_freq, m->rope_cos, m->rope_sin, m->inv_freq_swa, m->rope_cos_swa,
                    m->rope_sin_swa, m->iota, m->parts,
                    m->qsel_buf, m->qacc, m->hxq, m->hdx, m->hsx, m->head8, m->qb_buf, m->bmask, m->qscratch, m->qparts, m->qk8};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) free(bufs[i]);
    free(m);
}

/* Memory for a large weight read once per token (the repacked head): 2 MiB-aligned, so that
 * runtime/hugepages.py can collapse it onto huge pages after load (lr_model_head8). */
static void *huge_alloc(size_t bytes) {
    const size_t huge = (size_t)2 << 20;
    return aligned_alloc(huge, (bytes + huge - 1) / huge * huge);
}

lr_model *lr_model_new(const lr_model_desc *desc, int32_t n_ctx, int32_t n_threads, int32_t type_k, int32_t type_v,
                       char *err, int32_t err_len) {
    if (!desc) { fail(err, err_len, LR_EARG, "no model description"); return NULL; }
    if (check_desc(desc, err, err_len)) return NULL;
    if (n_ctx < 1 || n_ctx > (1 << 22) || n_threads < 1 || n_threads > 512) {
        fail(err, err_len, LR_EARG, "n_ctx or n_threads out of range");
        return NULL;
    }
    if (lr_kv_slot(type_k) < 0 || lr_kv_slot(type_v) < 0) {
        fail(err, err_len, LR_ETYPE, "KV cache types are f32, f16 or q8_0");
        return NULL;
    }
    if ((type_k == LR_Q8_0 || type_v == LR_Q8_0) && desc->head_dim % QK) {
        fail(err, err_len, LR_ESHAPE, "a q8_0 KV cache needs a head dimension that is a multiple of 32");
        return NULL;
    }
    lr_model *m = calloc(1, sizeof(*m));
    if (!m) { fail(err, err_len, LR_ENOMEM, "out of memory"); return NULL; }
    m->d = *desc;
    m->n_ctx = n_ctx;
    const int32_t L = desc->n_layers, dim = desc->dim, hd = desc->head_dim;
    const int32_t qd = desc->n_heads * hd, kvd = desc->n_kv_heads * hd, ff = desc->ffn_dim;
    const int32_t qkvd = qd + 2 * kvd;
    int32_t widest = dim > qd ? dim : qd;
    if (ff > widest) widest = ff;
    int32_t out_widest = 2 * ff > qkvd ? 2 * ff : qkvd;     /* widest matvec output */
    if (dim > out_widest) out_widest = dim;
    m->widest = widest;
    m->width[ATTN_IN] = dim, m->width[ATTN_OUT] = qd, m->width[MLP_IN] = dim, m->width[MLP_OUT] = ff;
    const size_t B = LR_BATCH;
    m->layers = malloc((size_t)L * sizeof(lr_layer));
    m->type_k = type_k, m->type_v = type_v;
    m->k_row = lr_row_bytes(type_k, hd), m->v_row = lr_row_bytes(type_v, hd);   /* one head's */
    const size_t kv_rows = (size_t)L * (size_t)desc->n_kv_heads * (size_t)n_ctx;
    m->key_cache = calloc(kv_rows, m->k_row);   /* pages taken as positions fill */
    m->value_cache = calloc(kv_rows, m->v_row);
    m->qk8 = malloc((size_t)n_threads * (size_t)(hd / QK + 1) * sizeof(block_q8_0));
    m->x = calloc((size_t)dim, sizeof(float));
    m->xn = calloc((size_t)dim, sizeof(float));
    m->tmp = calloc((size_t)dim, sizeof(float));
    m->qkv = calloc((size_t)qkvd, sizeof(float));
    m->att = calloc((size_t)desc->n_heads * (size_t)n_ctx, sizeof(float));
    m->ao = calloc((size_t)qd, sizeof(float));
    m->gu = calloc((size_t)2 * ff, sizeof(float));
    m->hm = calloc((size_t)ff, sizeof(float));
    m->idx = calloc((size_t)n_threads * widest, sizeof(int32_t));   /* per thread: prompt tokens select in parallel */
    m->iota = malloc((size_t)widest * sizeof(int32_t));
    m->out_widest = out_widest;
    m->topk_scratch = calloc((size_t)n_threads * LR_TOPK_SCRATCH(widest), sizeof(uint32_t));
    m->keys = calloc((size_t)n_threads * widest, sizeof(float));
    m->bx = calloc(B * (size_t)dim, sizeof(float));
    m->bxn = calloc(B * (size_t)widest, sizeof(float));
    m->by = calloc(B * (size_t)out_widest, sizeof(float));
    m->bqkv = calloc(B * (size_t)qkvd, sizeof(float));
    m->bao = calloc(B * (size_t)qd, sizeof(float));
    m->bgu = calloc(B * (size_t)2 * ff, sizeof(float));
    m->scratch_len = n_ctx > dim ? n_ctx : dim;   /* attention scores */
    m->scores = calloc((size_t)n_threads * (size_t)m->scratch_len, sizeof(float));
    m->qsel_buf = lr_qsel_new(widest, &m->qsel);
    const size_t acc_bytes = (size_t)(out_widest + 15) / 16 * 16 * sizeof(int32_t);   /* matvec()'s stride */
    m->qacc = aligned_alloc(64, (size_t)n_threads * acc_bytes);
    m->hxq = malloc((size_t)dim);
    m->hdx = malloc((size_t)(dim / QK + 1) * sizeof(float));
    m->hsx = malloc((size_t)(dim / QK + 1) * sizeof(int32_t));
    const lr_tensor *hw = &desc->head;   /* the repacked head where this CPU's kernels read it so */
    if ((hw->type == LR_Q8_0 || hw->type == LR_Q4_0) && hw->rows >= 8 && lr_qkernels()->qdot8[lr_type_slot(hw->type)] &&
        (m->head8 = huge_alloc((size_t)lr_x8_bytes(hw))))
        lr_repack_x8(hw, m->head8);   /* out of memory: the head as stored */
    m->qb_buf = lr_qbatch_new(LR_BATCH, widest, &m->qb);
    m->bmask = malloc(B * (size_t)widest);
    const size_t qs = ((size_t)lr_qgemm_scratch(out_widest) + 63) / 64 * 64;
    m->qscratch = aligned_alloc(64, (size_t)n_threads * qs);
    m->qparts = n_threads > 1 ? malloc((size_t)(n_threads < LR_MAX_PARTS ? n_threads : LR_MAX_PARTS) * B *
                                       (size_t)out_widest * sizeof(float)) : NULL;
    m->inv_freq = calloc((size_t)hd / 2, sizeof(double));
    m->rope_cos = calloc((size_t)hd / 2, sizeof(float));
    m->rope_sin = calloc((size_t)hd / 2, sizeof(float));
    int swa = 0;
    for (int32_t l = 0; l < L; l++) swa |= desc->layers[l].n_swa > 0;
    if (swa) {
        m->inv_freq_swa = calloc((size_t)hd / 2, sizeof(double));
        m->rope_cos_swa = calloc((size_t)hd / 2, sizeof(float));
        m->rope_sin_swa = calloc((size_t)hd / 2, sizeof(float));
    }
    int ok = m->layers && m->key_cache && m->value_cache && m->qk8 && m->x && m->xn && m->tmp && m->qkv && m->att &&
             m->ao && m->gu && m->hm && m->idx && m->topk_scratch && m->keys && m->bx && m->bxn && m->by && m->bqkv &&
             m->bao && m->bgu && m->scores && m->inv_freq && m->rope_cos && m->rope_sin && m->iota &&
             m->qsel_buf && m->qacc && m->hxq && m->hdx && m->hsx && m->qb_buf && m->bmask && m->qscratch &&
             (!swa || (m->inv_freq_swa && m->rope_cos_swa && m->rope_sin_swa)) &&
             (m->qparts || n_threads == 1);
    for (int i = 0; i < 4 && ok; i++)
        ok = (m->k[i] = malloc((size_t)L * sizeof(int32_t))) && (m->thr[i] = malloc((size_t)L * sizeof(float))) &&
             (m->plan[i] = malloc((size_t)L * sizeof(float))) && (m->cost[i] = malloc((size_t)L * sizeof(float))) &&
             (m->remain[i] = malloc((size_t)L * sizeof(double)));
    if (!ok) {
        lr_model_free(m);
        fail(err, err_len, LR_ENOMEM, "out of memory (KV cache or buffers)");
        return NULL;
    }
    memcpy(m->layers, desc->layers, (size_t)L * sizeof(lr_layer));
    m->d.layers = m->layers;
    for (int i = 0; i < 4; i++)
        for (int32_t l = 0; l < L; l++) {
            m->k[i][l] = m->width[i];   /* dense until set */
            m->thr[i][l] = -1.0f;
        }
    const float *freqs = desc->rope_freqs.data;
    m->n_rot = desc->n_rot ? desc->n_rot : hd;
    for (int32_t i = 0; i < m->n_rot / 2; i++) {   /* pair i turns at base^(-2i / n_rot) */
        m->inv_freq[i] = pow((double)desc->rope_base, -(double)(2 * i) / (double)m->n_rot);
        if (freqs) m->inv_freq[i] /= (double)freqs[i];
        if (swa) {
            m->inv_freq_swa[i] = pow((double)desc->rope_base_swa, -(double)(2 * i) / (double)m->n_rot);
            if (freqs && !desc->swa_no_freqs) m->inv_freq_swa[i] /= (double)freqs[i];
        }
    }
    for (int32_t i = 0; i < widest; i++) m->iota[i] = i;
    m->pool = lr_pool_new(n_threads);
    if (!m->pool) {
        lr_model_free(m);
        fail(err, err_len, LR_ETHREAD, "cannot start threads");
        return NULL;
    }
    m->parts = malloc((size_t)lr_pool_shares(m->pool) * (size_t)out_widest * sizeof(float));
    if (!m->parts) {
        lr_model_free(m);
        fail(err, err_len, LR_ENOMEM, "out of memory (buffers)");
        return NULL;
    }
    return m;
}

int32_t lr_model_set_selection(lr_model *m, const int32_t *k, const float *threshold) {
    if (!m || !k || !threshold) return LR_EARG;
    const int32_t L = m->d.n_layers;
    for (int i = 0; i < 4; i++)
        for (int32_t l = 0; l < L; l++) {
            const float t = threshold[i * L + l];
            if (t != t || t > 3.0e38f) return LR_ERANGE;   /* NaN or inf */
            if (t < 0.0f && (k[i * L + l] < 1 || k[i * L + l] > m->width[i])) return LR_ERANGE;
        }
    for (int i = 0; i < 4; i++)
        for (int32_t l = 0; l < L; l++) {
            m->k[i][l] = k[i * L + l];
            m->thr[i][l] = threshold[i * L + l];
        }
    return LR_OK;
}

int32_t lr_model_set_budget(lr_model *m, const float *plan, const float *cost) {
    if (!m) return LR_EARG;
    if (!plan) {
        m->budget = 0;
        return LR_OK;
    }
    if (!cost) return LR_EARG;
    const int32_t L = m->d.n_layers;
    for (int i = 0; i < 4; i++)
        for (int32_t l = 0; l < L; l++) {
            const float p = plan[i * L + l], c = cost[i * L + l];
            if (!(p >= 1.0f && p <= (float)m->width[i]) || !(c > 0.0f && c < 1.0e30f)) return LR_ERANGE;
            if (m->thr[i][l] < 0.0f) return LR_ERANGE;   /* the budget scales a threshold's count */
        }
    double rest = 0.0;                                   /* in evaluation order, from the end */
    for (int32_t l = L - 1; l >= 0; l--)
        for (int i = 3; i >= 0; i--) {
            m->plan[i][l] = plan[i * L + l];
            m->cost[i][l] = cost[i * L + l];
            rest += (double)plan[i * L + l] * (double)cost[i * L + l];
            m->remain[i][l] = rest;
        }
    m->budget = 1;
    return LR_OK;
}

int32_t lr_model_rows_read(lr_model *m, uint64_t *out, int32_t reset) {
    if (!m || !out) return LR_EARG;
    for (int i = 0; i < 4; i++) out[i] = m->rows_read[i];
    out[4] = m->rows_tokens;
    for (int i = 0; i < 4; i++) out[5 + i] = m->groups_read[i];
    if (reset) {
        memset(m->rows_read, 0, sizeof(m->rows_read));
        memset(m->groups_read, 0, sizeof(m->groups_read));
        m->rows_tokens = 0;
    }
    return LR_OK;
}

int32_t lr_model_n_ctx(const lr_model *m) { return m ? m->n_ctx : 0; }

int64_t lr_model_profile(lr_model *m, double *out_ns, int32_t n, int32_t enable, int32_t reset) {
    if (!m || n < 0 || (n > 0 && !out_ns)) return LR_EARG;
    for (int32_t i = 0; i < n && i < LR_NPROF; i++) out_ns[i] = m->prof_ns[i];
    const int64_t tokens = m->prof_tokens;
    m->profile = enable != 0;
    if (reset) {
        memset(m->prof_ns, 0, sizeof m->prof_ns);
        m->prof_tokens = 0;
    }
    return tokens;
}

int32_t lr_model_trace_keys(lr_model *m, float *keys, int64_t capacity) {
    if (!m || capacity < 0) return LR_EARG;
    m->trace_keys = keys;
    m->trace_keys_cap = keys ? capacity : 0;
    return LR_OK;
}

int64_t lr_model_trace(lr_model *m, uint8_t *masks, int64_t capacity) {
    if (!m || capacity < 0) return LR_EARG;
    const int64_t per_token = (int64_t)(m->width[0] + m->width[1] + m->width[2] + m->width[3]) * m->d.n_layers;
    int64_t written = m->trace ? m->trace_tokens * per_token : 0;
    if (written > m->trace_cap) written = m->trace_cap / per_token * per_token;
    m->trace = masks;
    m->trace_cap = masks ? capacity : 0;
    m->trace_tokens = 0;
    return written;
}

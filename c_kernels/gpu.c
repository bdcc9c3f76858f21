/* A LaRoSA model on a WebGPU device: its weights uploaded once, and the decode step of forward.c
 * recorded once as a list of dispatches (pipeline, bind group, grid) that every token replays in one
 * compute pass, one submission. Per layer (forward_layer):
 *   [adapter: select all, matvec, store into x]
 *   select attn_in (RMSNorm of x) -> matvec wqkv -> store q k v (+ bias) -> attend (RoPE, KV row, attention)
 *   select attn_out (ao) -> matvec wo -> x += (+ bias)
 *   select mlp_in (RMSNorm of x) -> matvec wgu -> gate, up, hm = silu(gate) up
 *   select mlp_out (hm; CATS: |silu(gate)|) -> matvec wdown -> x += (+ bias)
 * then [output adapter], head_prep (RMSNorm * g_out, Q8_0 blocks) and the head, logits read back.
 * What changes per token is written before its submission: the embedding row (looked up on the
 * CPU: one row) into x, and the position with its RoPE cos / sin (in double, as lr_rope_angles).
 * Kernels: the WGSL files in shaders/; device helpers: gpu_device.c. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "gpu_internal.h"
#include "kernels.h"

enum { ATTN_IN = 0, ATTN_OUT = 1, MLP_IN = 2, MLP_OUT = 3 };
#define MV_TILE 1024       /* output columns per matvec workgroup (matvec.wgsl) */
#define MAX_WIDTH 32768    /* select.wgsl's MAX_GROUPS * 32 */
#define MIN_WG 264         /* mv_rows: workgroups a large matvec aims at */


typedef struct {   /* select.wgsl's Params */
    uint32_t n, mode, k, quant, norm, key_kind, has_score, stat;
    float thr, eps, plan, cost, remain;
    uint32_t first, last, pad;
} sel_params;

struct lr_gpu_model {
    lr_gpu *g;
    lr_model_desc d;                 /* hyper-parameters; embd points to the caller's memory */
    int32_t L, n_ctx, n_past, type_k, type_v, R, min_wg;
    int32_t width[4];
    gweight *wqkv, *wo, *wgu, *wdown, *adapter, out_adapter;   /* adapter[l].codes NULL: none */
    WGPUBuffer *bqkv, *bo, *bdown, *qn, *kn, *score, *kc, *vc;  /* per layer (score: [l][4]) */
    WGPUBuffer x, qkv, ao, gu, hm, att, partial, params, sel, state, keys, step, hq, logits, out_norm;
    WGPUBuffer staging, dummy_r, dummy_w;
    head_part *head;
    int32_t n_head_parts;
    uint64_t *sel_off, sel_size;     /* selection regions: [l][4], then the adapters' */
    uint8_t *params_host;
    int32_t n_slots, cap_slots;
    int32_t *sel_slot;               /* [l][4] slot of each selection's params */
    lr_gpu_dispatch *disp;
    int32_t n_disp, cap_disp;
    int32_t *k[4];
    float *thr[4], *plan[4], *cost[4];
    double *remain[4];
    int32_t budget;
    uint64_t rows_read[4], rows_tokens;
    int64_t bytes;
    double *inv_freq;
    float *row, *stepbuf;
    uint64_t step_bytes, logits_bytes;
    int profile;                     /* per-dispatch timestamps (lr_gpu_model_profile) */
    WGPUQuerySet qs;
    WGPUBuffer qres, qread;
    double prof_ns[P_COUNT];
    int64_t prof_tokens;
    double host_ns[2];               /* encoding the step's commands, waiting for the logits */
    WGPUCommandBuffer next;          /* the next token's dispatches, encoded while this one runs */
    int preencode;                   /* LAROSA_GPU_PREENCODE=0: encode each token before its submit */
};

static int32_t fail(char *err, int32_t len, int32_t code, const char *msg) {
    if (err && len > 0) snprintf(err, (size_t)len, "%s", msg);
    return code;
}

/* ---- weights ------------------------------------------------------------------------------------ */

static int is_im(int32_t t) { return t == LR_Q8_0_IM || t == LR_Q4_0_IM; }

static int32_t check_size(lr_gpu *g, uint64_t bytes, const char *what, char *err, int32_t len) {
    char msg[300];
    if (bytes <= g->limits.maxStorageBufferBindingSize && bytes <= g->limits.maxBufferSize) return LR_OK;
    snprintf(msg, sizeof msg, "%s: %.1f MiB exceed the device's storage-binding limit (%.1f MiB)", what,
             (double)bytes / 1048576.0, (double)g->limits.maxStorageBufferBindingSize / 1048576.0);
    return fail(err, len, LR_ERANGE, msg);
}

/* an input-major weight (F32, F16, Q8_0_IM, Q4_0_IM) as the matvec reads it: as stored */
int32_t lr_gpu_upload_weight(lr_gpu *g, const lr_tensor *t, gweight *w, int64_t *bytes, const char *what, char *err,
                             int32_t len) {
    if (t->type != LR_F32 && t->type != LR_F16 && !is_im(t->type))
        return fail(err, len, LR_ETYPE, "GPU: input-major weights must be F32, F16, Q8_0 or Q4_0");
    if (t->cols % 64 || t->rows % 32 || t->rows > MAX_WIDTH)
        return fail(err, len, LR_ESHAPE, "GPU: weights need rows % 32 == 0 (at most 32768) and cols % 64 == 0");
    const uint64_t nb = lr_row_bytes(t->type, t->cols) * (uint64_t)t->rows;
    if (t->nbytes < nb) return fail(err, len, LR_ESHAPE, "GPU: tensor smaller than its shape");
    int32_t rc = check_size(g, nb, what, err, len);
    if (rc) return rc;
    w->type = t->type, w->rows = t->rows, w->cols = t->cols;
    w->codes = lr_gpu_buffer(g, nb, STORAGE, t->data, what);
    *bytes += (int64_t)nb;
    if (is_im(t->type)) {
        const uint64_t sb = (uint64_t)(t->rows / 32) * (uint64_t)t->cols * 2;
        if (!t->scale || t->scale_nbytes < sb) return fail(err, len, LR_ESHAPE, "GPU: scale table missing or short");
        w->scale = lr_gpu_buffer(g, sb, STORAGE, t->scale, what);
        *bytes += (int64_t)sb;
    }
    return w->codes && (!is_im(t->type) || w->scale) ? LR_OK : fail(err, len, LR_ENOMEM, "GPU: cannot allocate a weight");
}

void lr_gpu_free_weight(gweight *w) {
    if (w->codes) W.BufferRelease(w->codes);
    if (w->scale) W.BufferRelease(w->scale);
    w->codes = w->scale = NULL;
}

static WGPUBuffer upload_vec(lr_gpu *g, const lr_tensor *t, int64_t *bytes) {   /* F32 vector or NULL */
    if (!t->data) return NULL;
    *bytes += (int64_t)t->nbytes;
    return lr_gpu_buffer(g, t->nbytes, STORAGE, t->data, "vector");
}

/* The output-major head, rows [row0, row0 + rows): Q8_0 / Q4_0 repacked into codes [rows][d] (Q4_0:
 * ggml's 16 bytes a block) and scales [rows][d / 32] f16, so that the kernel reads aligned words;
 * F16 / F32 as stored. */
static int32_t upload_head_part(lr_gpu *g, const lr_tensor *t, int32_t row0, int32_t rows, head_part *p, int64_t *bytes) {
    const int32_t d = t->cols, nb = d / QK;
    const int q8 = t->type == LR_Q8_0, q4 = t->type == LR_Q4_0;
    const uint64_t code_row = q8 ? (uint64_t)d : q4 ? (uint64_t)d / 2 : lr_row_bytes(t->type, d);
    const uint64_t src_row = lr_row_bytes(t->type, d);
    p->row0 = row0, p->rows = rows;
    uint8_t *c = lr_gpu_map_new(g, code_row * (uint64_t)rows, &p->codes);
    if (!c) return LR_ENOMEM;
    *bytes += (int64_t)(code_row * (uint64_t)rows);
    const uint8_t *src = (const uint8_t *)t->data + (uint64_t)row0 * src_row;
    if (!q8 && !q4) {
        memcpy(c, src, code_row * (uint64_t)rows);
        W.BufferUnmap(p->codes);
        return LR_OK;
    }
    uint16_t *s = lr_gpu_map_new(g, (uint64_t)rows * (uint64_t)nb * 2, &p->scale);
    if (!s) { W.BufferUnmap(p->codes); return LR_ENOMEM; }
    *bytes += (int64_t)rows * nb * 2;
    for (int64_t r = 0; r < rows; r++)
        for (int32_t b = 0; b < nb; b++) {
            const uint8_t *blk = src + r * (int64_t)src_row + (int64_t)b * (q8 ? sizeof(block_q8_0) : sizeof(block_q4_0));
            memcpy(&s[r * nb + b], blk, 2);
            memcpy(c + r * (int64_t)code_row + (int64_t)b * (q8 ? 32 : 16), blk + 2, q8 ? 32 : 16);
        }
    W.BufferUnmap(p->codes);
    W.BufferUnmap(p->scale);
    return LR_OK;
}

/* the head in parts of at most the storage-binding limit (a multiple of 8 rows each) */
int32_t lr_gpu_upload_head(lr_gpu *g, const lr_tensor *t, head_part **parts, int32_t *n_parts, int64_t *bytes,
                           char *err, int32_t len) {
    if (t->type != LR_F32 && t->type != LR_F16 && t->type != LR_Q8_0 && t->type != LR_Q4_0)
        return fail(err, len, LR_ETYPE, "GPU: the head must be F32, F16, Q8_0 or Q4_0");
    if (t->cols % 64) return fail(err, len, LR_ESHAPE, "GPU: the head's width must be a multiple of 64");
    const uint64_t row = t->type == LR_Q8_0 ? (uint64_t)t->cols : t->type == LR_Q4_0 ? (uint64_t)t->cols / 2
                       : lr_row_bytes(t->type, t->cols);
    uint64_t lim = g->limits.maxStorageBufferBindingSize < g->limits.maxBufferSize ? g->limits.maxStorageBufferBindingSize
                                                                                   : g->limits.maxBufferSize;
    int64_t per = (int64_t)(lim / row) / 8 * 8;
    if (per < 8) return fail(err, len, LR_ERANGE, "GPU: a head row exceeds the storage-binding limit");
    if (per > t->rows) per = t->rows;
    *n_parts = (int32_t)((t->rows + per - 1) / per);
    *parts = calloc((size_t)*n_parts, sizeof(head_part));
    if (!*parts) return fail(err, len, LR_ENOMEM, "out of memory");
    for (int32_t i = 0; i < *n_parts; i++) {
        const int32_t r0 = (int32_t)(i * per), r1 = (int32_t)(r0 + per < t->rows ? r0 + per : t->rows);
        if (upload_head_part(g, t, r0, r1 - r0, &(*parts)[i], bytes)) return fail(err, len, LR_ENOMEM, "GPU: cannot allocate the head");
    }
    return LR_OK;
}

/* ---- recording the step --------------------------------------------------------------------------- */

static lr_gpu_slice S(WGPUBuffer b) { return (lr_gpu_slice){b, 0, 0}; }

static int32_t new_slot(lr_gpu_model *m, const void *p, size_t n) {
    if (m->n_slots == m->cap_slots) {
        const int32_t cap = m->cap_slots ? 2 * m->cap_slots : 64;
        uint8_t *q = realloc(m->params_host, (size_t)cap * SLOT);
        if (!q) return -1;
        m->params_host = q, m->cap_slots = cap;
    }
    memset(m->params_host + (size_t)m->n_slots * SLOT, 0, SLOT);
    memcpy(m->params_host + (size_t)m->n_slots * SLOT, p, n);
    return m->n_slots++;
}

static lr_gpu_slice P(lr_gpu_model *m, int32_t slot) { return (lr_gpu_slice){m->params, (uint64_t)slot * SLOT, SLOT}; }

static int add(lr_gpu_model *m, int pipe, WGPUBindGroup bg, uint32_t x, uint32_t y) {
    if (!bg) return 0;
    if (m->n_disp == m->cap_disp) {
        const int32_t cap = m->cap_disp ? 2 * m->cap_disp : 256;
        lr_gpu_dispatch *d = realloc(m->disp, (size_t)cap * sizeof *d);
        if (!d) { W.BindGroupRelease(bg); return 0; }
        m->disp = d, m->cap_disp = cap;
    }
    m->disp[m->n_disp++] = (lr_gpu_dispatch){m->g->pipe[pipe], bg, x, y};
    return 1;
}

static lr_gpu_slice sel_slice(lr_gpu_model *m, uint64_t off) { return (lr_gpu_slice){m->sel, off, m->sel_size}; }

/* select.wgsl's parameters for block input b of layer l (or an adapter: l < 0) */
static sel_params select_params(const lr_gpu_model *m, int32_t b, int32_t l, int quant) {
    sel_params p;
    memset(&p, 0, sizeof p);
    p.quant = (uint32_t)quant;
    p.eps = m->d.norm_eps;
    if (l < 0) {   /* adapter: every input, no norm, not counted */
        p.n = (uint32_t)m->d.dim, p.mode = 3, p.stat = 4;
        return p;
    }
    const int32_t n = m->width[b];
    const float thr = m->thr[b][l];
    p.n = (uint32_t)n, p.stat = (uint32_t)b;
    p.norm = b == ATTN_IN || b == MLP_IN;
    p.key_kind = b == MLP_OUT && m->d.mlp_out_gate_key;
    p.thr = thr;
    if (thr >= 0.0f && m->budget) {
        p.mode = 2;
        p.plan = m->plan[b][l], p.cost = m->cost[b][l], p.remain = (float)m->remain[b][l];
        p.first = l == 0 && b == ATTN_IN;
        p.last = l == m->L - 1 && b == MLP_OUT;
    } else if (thr >= 0.0f) {
        p.mode = 1;
    } else {
        p.mode = m->k[b][l] >= n ? 3 : 0;
        p.k = (uint32_t)m->k[b][l];
    }
    return p;
}

static int32_t record_select(lr_gpu_model *m, int32_t b, int32_t l, int quant, WGPUBuffer x, WGPUBuffer score,
                             WGPUBuffer gate, uint64_t off) {
    sel_params p = select_params(m, b, l, quant);
    if (l >= 0) p.has_score = score != NULL;
    const int32_t slot = new_slot(m, &p, sizeof p);
    if (slot < 0) return -1;
    lr_gpu_slice s[7] = {P(m, slot), S(x), S(score ? score : m->dummy_r), S(gate ? gate : m->dummy_r),
                         sel_slice(m, off), S(m->state), S(m->keys)};
    return add(m, lr_gpu_select_pipe(m->g, (int32_t)p.n), lr_gpu_bind(m->g, L_SELECT, s), 1, 1) ? slot : -1;
}

/* selected rows per matvec workgroup for w: m->R, halved (down to 32) while the grid of a large
 * matrix (2^22 weights or more) would have fewer than m->min_wg workgroups, so that it spreads
 * over the whole GPU (H200, 132 SMs: 264 took the 7B shape's Q8_0 step at s = 0.4 from 4.99 to
 * 4.39 ms of matvec and reduce; smaller ones finish fast anyway) */
static int32_t mv_rows(const lr_gpu_model *m, const gweight *w) {
    int32_t R = m->R;
    if ((int64_t)w->rows * w->cols < (1 << 22)) return R;
    const int64_t tiles = (w->cols + MV_TILE - 1) / MV_TILE;
    while (R >= 64 && tiles * ((w->rows + R - 1) / R) < m->min_wg) R = R / 8 * 4;   /* halved, a multiple of 4 */
    return R;
}

/* y = x W over a selection at off, then the reduce epilogue red (P_RED_*) into out (and hm) */
static int record_matvec(lr_gpu_model *m, const gweight *w, uint64_t off, int red, WGPUBuffer bias, WGPUBuffer out,
                         WGPUBuffer hm) {
    const int32_t R = mv_rows(m, w);
    const uint32_t mp[4] = {(uint32_t)w->rows, (uint32_t)w->cols, (uint32_t)R, 0};
    int32_t slot = new_slot(m, mp, sizeof mp);
    if (slot < 0) return 0;
    lr_gpu_slice s[5] = {P(m, slot), sel_slice(m, off), S(w->codes), S(w->scale ? w->scale : m->dummy_r), S(m->partial)};
    const uint32_t chunks = (uint32_t)((w->rows + R - 1) / R), tiles = (uint32_t)((w->cols + MV_TILE - 1) / MV_TILE);
    if (!add(m, lr_gpu_mv_pipe(m->g, w->type), lr_gpu_bind(m->g, L_MATVEC, s), tiles, chunks)) return 0;
    const uint32_t rp[4] = {(uint32_t)w->cols, (uint32_t)R, bias != NULL, (uint32_t)w->cols / 2};
    if ((slot = new_slot(m, rp, sizeof rp)) < 0) return 0;
    lr_gpu_slice r[6] = {P(m, slot), sel_slice(m, off), S(m->partial), S(bias ? bias : m->dummy_r), S(out),
                         S(hm ? hm : m->dummy_w)};
    const uint32_t n = red == P_RED_SWIGLU ? (uint32_t)w->cols / 2 : (uint32_t)w->cols;
    return add(m, red, lr_gpu_bind(m->g, L_REDUCE, r), (n + RED_COLS - 1) / RED_COLS, 1);
}

static int record_adapter(lr_gpu_model *m, const gweight *a) {
    const uint64_t off = m->sel_off[4 * m->L];
    return record_select(m, 0, -1, is_im(a->type), m->x, NULL, NULL, off) >= 0 &&
           record_matvec(m, a, off, P_RED_STORE, NULL, m->x, NULL);
}

static int record_step(lr_gpu_model *m) {
    const lr_model_desc *d = &m->d;
    const int32_t nh = d->n_heads, nkv = d->n_kv_heads, hd = d->head_dim;
    for (int32_t l = 0; l < m->L; l++) {
        const uint64_t *off = m->sel_off + 4 * l;
        int32_t *slot = m->sel_slot + 4 * l;
        WGPUBuffer *sc = m->score + 4 * l;
        if (m->adapter[l].codes && !record_adapter(m, &m->adapter[l])) return 0;
        if ((slot[ATTN_IN] = record_select(m, ATTN_IN, l, is_im(m->wqkv[l].type), m->x, sc[0], NULL, off[0])) < 0 ||
            !record_matvec(m, &m->wqkv[l], off[0], P_RED_STORE, m->bqkv[l], m->qkv, NULL))
            return 0;
        const struct { uint32_t nh, nkv, hd, f16, has_qn, has_kn, n_ctx, pad; float eps; } ap = {
            (uint32_t)nh, (uint32_t)nkv, (uint32_t)hd, m->type_k == LR_F16, m->qn[l] != NULL, m->kn[l] != NULL,
            (uint32_t)m->n_ctx, 0, d->norm_eps};
        const int32_t as = new_slot(m, &ap, sizeof ap);
        if (as < 0) return 0;
        lr_gpu_slice a[9] = {P(m, as), S(m->step), S(m->qkv), S(m->qn[l] ? m->qn[l] : m->dummy_r),
                             S(m->kn[l] ? m->kn[l] : m->dummy_r), S(m->kc[l]), S(m->vc[l]), S(m->att), S(m->ao)};
        if (!add(m, P_ATTEND, lr_gpu_bind(m->g, L_ATTN, a), (uint32_t)nh, 1)) return 0;   /* RoPE and the KV row too */
        if ((slot[ATTN_OUT] = record_select(m, ATTN_OUT, l, is_im(m->wo[l].type), m->ao, sc[1], NULL, off[1])) < 0 ||
            !record_matvec(m, &m->wo[l], off[1], P_RED_ADD, m->bo[l], m->x, NULL))
            return 0;
        if ((slot[MLP_IN] = record_select(m, MLP_IN, l, is_im(m->wgu[l].type), m->x, sc[2], NULL, off[2])) < 0 ||
            !record_matvec(m, &m->wgu[l], off[2], P_RED_SWIGLU, NULL, m->gu, m->hm))
            return 0;
        if ((slot[MLP_OUT] = record_select(m, MLP_OUT, l, is_im(m->wdown[l].type), m->hm, sc[3],
                                           d->mlp_out_gate_key ? m->gu : NULL, off[3])) < 0 ||
            !record_matvec(m, &m->wdown[l], off[3], P_RED_ADD, m->bdown[l], m->x, NULL))
            return 0;
    }
    if (m->out_adapter.codes && !record_adapter(m, &m->out_adapter)) return 0;
    const int quant = m->head[0].scale != NULL;
    const int32_t ht = d->head.type;
    for (int32_t i = -1; i < m->n_head_parts; i++) {   /* -1: head_prep */
        const head_part *hp = i < 0 ? &m->head[0] : &m->head[i];
        const struct { uint32_t rows, cols, row0, has_norm; float eps; uint32_t quant, pad0, pad1; } hpp = {
            (uint32_t)hp->rows, (uint32_t)d->dim, (uint32_t)hp->row0, m->out_norm != NULL, d->norm_eps, (uint32_t)quant, 0, 0};
        const int32_t s = new_slot(m, &hpp, sizeof hpp);
        if (s < 0) return 0;
        lr_gpu_slice h[7] = {P(m, s), S(m->x), S(m->out_norm ? m->out_norm : m->dummy_r), S(m->hq), S(hp->codes),
                             S(hp->scale ? hp->scale : m->dummy_r), S(m->logits)};
        const int pipe = i < 0 ? P_HEAD_PREP : ht == LR_Q8_0 ? P_HEAD_Q8 : ht == LR_Q4_0 ? P_HEAD_Q4
                       : ht == LR_F16 ? P_HEAD_F16 : P_HEAD_F32;
        if (!add(m, pipe, lr_gpu_bind(m->g, L_HEAD, h), i < 0 ? 1 : lr_head_groups(pipe, hp->rows), 1)) return 0;
    }
    return 1;
}

/* ---- construction ------------------------------------------------------------------------------- */

void lr_gpu_model_free(lr_gpu_model *m) {
    if (!m) return;
    for (int32_t i = 0; i < m->n_disp; i++) W.BindGroupRelease(m->disp[i].bg);
    for (int32_t l = 0; m->wqkv && l < m->L; l++) {
        lr_gpu_free_weight(&m->wqkv[l]), lr_gpu_free_weight(&m->wo[l]), lr_gpu_free_weight(&m->wgu[l]), lr_gpu_free_weight(&m->wdown[l]);
        lr_gpu_free_weight(&m->adapter[l]);
        WGPUBuffer per[] = {m->bqkv[l], m->bo[l], m->bdown[l], m->qn[l], m->kn[l], m->kc[l], m->vc[l],
                            m->score[4 * l], m->score[4 * l + 1], m->score[4 * l + 2], m->score[4 * l + 3]};
        for (size_t i = 0; i < sizeof per / sizeof per[0]; i++)
            if (per[i]) W.BufferRelease(per[i]);
    }
    lr_gpu_free_weight(&m->out_adapter);
    for (int32_t i = 0; m->head && i < m->n_head_parts; i++) {
        if (m->head[i].codes) W.BufferRelease(m->head[i].codes);
        if (m->head[i].scale) W.BufferRelease(m->head[i].scale);
    }
    WGPUBuffer bufs[] = {m->x, m->qkv, m->ao, m->gu, m->hm, m->att, m->partial, m->params, m->sel, m->state, m->keys,
                         m->step, m->hq, m->logits, m->out_norm, m->staging, m->dummy_r, m->dummy_w};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) W.BufferRelease(bufs[i]);
    void *host[] = {m->wqkv, m->wo, m->wgu, m->wdown, m->adapter, m->bqkv, m->bo, m->bdown, m->qn, m->kn, m->score,
                    m->kc, m->vc, m->head, m->sel_off, m->params_host, m->sel_slot, m->disp, m->inv_freq, m->row,
                    m->stepbuf};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    for (int i = 0; i < 4; i++) free(m->k[i]), free(m->thr[i]), free(m->plan[i]), free(m->cost[i]), free(m->remain[i]);
    if (m->next) W.CommandBufferRelease(m->next);
    if (m->qs) W.QuerySetRelease(m->qs);
    if (m->qres) W.BufferRelease(m->qres);
    if (m->qread) W.BufferRelease(m->qread);
    lr_gpu_flush(m->g);
    lr_gpu_release(m->g);
    free(m);
}

static int32_t alloc_host(lr_gpu_model *m) {
    const size_t L = (size_t)m->L;
    int ok = (m->wqkv = calloc(L, sizeof(gweight))) && (m->wo = calloc(L, sizeof(gweight))) &&
             (m->wgu = calloc(L, sizeof(gweight))) && (m->wdown = calloc(L, sizeof(gweight))) &&
             (m->adapter = calloc(L, sizeof(gweight))) && (m->bqkv = calloc(L, sizeof(WGPUBuffer))) &&
             (m->bo = calloc(L, sizeof(WGPUBuffer))) && (m->bdown = calloc(L, sizeof(WGPUBuffer))) &&
             (m->qn = calloc(L, sizeof(WGPUBuffer))) && (m->kn = calloc(L, sizeof(WGPUBuffer))) &&
             (m->score = calloc(4 * L, sizeof(WGPUBuffer))) && (m->kc = calloc(L, sizeof(WGPUBuffer))) &&
             (m->vc = calloc(L, sizeof(WGPUBuffer))) && (m->sel_off = calloc(4 * L + 1, sizeof(uint64_t))) &&
             (m->sel_slot = calloc(4 * L, sizeof(int32_t))) &&
             (m->inv_freq = calloc((size_t)m->d.head_dim / 2, sizeof(double))) &&
             (m->row = calloc((size_t)m->d.dim, sizeof(float))) &&
             (m->stepbuf = calloc(4 + (size_t)m->d.head_dim, sizeof(float)));
    for (int i = 0; i < 4 && ok; i++)
        ok = (m->k[i] = calloc(L, sizeof(int32_t))) && (m->thr[i] = calloc(L, sizeof(float))) &&
             (m->plan[i] = calloc(L, sizeof(float))) && (m->cost[i] = calloc(L, sizeof(float))) &&
             (m->remain[i] = calloc(L, sizeof(double)));
    return ok ? LR_OK : LR_ENOMEM;
}

static int32_t upload_layers(lr_gpu_model *m, const lr_model_desc *desc, char *err, int32_t len) {
    lr_gpu *g = m->g;
    char what[64];
    for (int32_t l = 0; l < m->L; l++) {
        const lr_layer *Ly = &desc->layers[l];
        struct { const lr_tensor *t; gweight *w; const char *name; } ws[] = {
            {&Ly->wqkv, &m->wqkv[l], "attn_qkv"}, {&Ly->wo, &m->wo[l], "attn_output"},
            {&Ly->wgu, &m->wgu[l], "ffn_gate_up"}, {&Ly->wdown, &m->wdown[l], "ffn_down"}, {&Ly->adapter, &m->adapter[l], "adapter"}};
        for (int i = 0; i < 5; i++) {
            if (!ws[i].t->data) continue;   /* only the adapter is optional (lr_model_new checked) */
            snprintf(what, sizeof what, "layer %d %s", (int)l, ws[i].name);
            int32_t rc = lr_gpu_upload_weight(g, ws[i].t, ws[i].w, &m->bytes, what, err, len);
            if (rc) return rc;
        }
        m->bqkv[l] = upload_vec(g, &Ly->bqkv, &m->bytes);
        m->bo[l] = upload_vec(g, &Ly->bo, &m->bytes);
        m->bdown[l] = upload_vec(g, &Ly->bdown, &m->bytes);
        m->qn[l] = upload_vec(g, &Ly->q_norm, &m->bytes);
        m->kn[l] = upload_vec(g, &Ly->k_norm, &m->bytes);
        for (int b = 0; b < 4; b++) m->score[4 * l + b] = upload_vec(g, &Ly->score[b], &m->bytes);
        const uint64_t kvd = (uint64_t)desc->n_kv_heads * (uint64_t)desc->head_dim;
        const uint64_t kb = (uint64_t)m->n_ctx * kvd * (m->type_k == LR_F16 ? 2 : 4);
        if ((l == 0 && (check_size(g, kb, "KV cache of a layer", err, len))) ||
            !(m->kc[l] = lr_gpu_buffer(g, kb, STORAGE, NULL, "kcache")) ||
            !(m->vc[l] = lr_gpu_buffer(g, kb, STORAGE, NULL, "vcache")))
            return fail(err, len, LR_ENOMEM, "GPU: cannot allocate the KV cache");
        m->bytes += 2 * (int64_t)kb;
    }
    return LR_OK;
}

lr_gpu_model *lr_gpu_model_new(lr_gpu *g, const lr_model_desc *desc, int32_t n_ctx, int32_t type_k, int32_t type_v,
                               char *err, int32_t err_len) {
    char msg[300];
    if (!g || !desc || !desc->layers) { fail(err, err_len, LR_EARG, "no device or model description"); return NULL; }
    if (g->failed || g->closing) {
        snprintf(msg, sizeof msg, "GPU: %s", g->failed ? g->error : "device closed");
        fail(err, err_len, LR_EGPU, msg);
        return NULL;
    }
    if (type_k != type_v || (type_k != LR_F16 && type_k != LR_F32)) {
        fail(err, err_len, LR_ETYPE, "GPU: the KV cache is f16 or f32 (both K and V alike)");
        return NULL;
    }
    const int32_t hd = desc->head_dim, dim = desc->dim, qd = desc->n_heads * hd, ff = desc->ffn_dim;
    if (n_ctx < 1 || n_ctx > (1 << 22) || desc->n_layers < 1 || hd < 2 || hd > 256 || hd % 2 || desc->n_kv_heads < 1 ||
        desc->n_heads % desc->n_kv_heads || dim % 64 || qd % 32 || ff % 32 || dim > MAX_WIDTH || qd > MAX_WIDTH ||
        ff > MAX_WIDTH || desc->n_vocab < 1) {
        fail(err, err_len, LR_ESHAPE, "GPU: unsupported shape (head_dim <= 256, widths multiples of 32, at most 32768)");
        return NULL;
    }
    lr_gpu_model *m = calloc(1, sizeof *m);
    if (!m) { fail(err, err_len, LR_ENOMEM, "out of memory"); return NULL; }
    m->g = g, m->d = *desc, m->d.layers = NULL;
    g->models++;   /* lr_gpu_model_free releases it */
    m->L = desc->n_layers, m->n_ctx = n_ctx, m->type_k = type_k, m->type_v = type_v;
    const char *r_env = getenv("LAROSA_GPU_ROWS");   /* selected rows per matvec workgroup (tuning) */
    m->R = r_env && atoi(r_env) >= 8 ? atoi(r_env) / 4 * 4 : 256;
    const char *wg_env = getenv("LAROSA_GPU_MIN_WG");   /* workgroups a matvec aims at (tuning; 0: off) */
    m->min_wg = wg_env ? atoi(wg_env) : MIN_WG;
    const char *pe_env = getenv("LAROSA_GPU_PREENCODE");   /* "0": encode each token before its submit (timing) */
    m->preencode = !(pe_env && !strcmp(pe_env, "0"));
    m->width[ATTN_IN] = dim, m->width[ATTN_OUT] = qd, m->width[MLP_IN] = dim, m->width[MLP_OUT] = ff;
    if (alloc_host(m)) { fail(err, err_len, LR_ENOMEM, "out of memory"); goto bad; }
    if (upload_layers(m, desc, err, err_len)) goto bad;
    if (desc->out_adapter.data &&
        lr_gpu_upload_weight(g, &desc->out_adapter, &m->out_adapter, &m->bytes, "output_adapter", err, err_len))
        goto bad;
    if (lr_gpu_upload_head(g, &desc->head, &m->head, &m->n_head_parts, &m->bytes, err, err_len)) goto bad;
    m->out_norm = upload_vec(g, &desc->out_norm, &m->bytes);

    /* activations and the step's small buffers */
    const int32_t qkvd = qd + 2 * desc->n_kv_heads * hd;
    uint64_t part = 0;   /* the largest matvec's chunks x columns */
    for (int32_t l = 0; l < m->L; l++) {
        const gweight *ws[] = {&m->wqkv[l], &m->wo[l], &m->wgu[l], &m->wdown[l], &m->adapter[l]};
        for (int i = 0; i < 5; i++) {
            if (!ws[i]->codes) continue;
            const int32_t R = mv_rows(m, ws[i]);
            const uint64_t p = (uint64_t)((ws[i]->rows + R - 1) / R) * (uint64_t)ws[i]->cols;
            part = p > part ? p : part;
        }
    }
    if (m->out_adapter.codes) {
        const int32_t R = mv_rows(m, &m->out_adapter);
        const uint64_t pa = (uint64_t)((m->out_adapter.rows + R - 1) / R) * (uint64_t)m->out_adapter.cols;
        part = pa > part ? pa : part;
    }
    int32_t widest = dim > qd ? dim : qd;
    widest = ff > widest ? ff : widest;
    m->sel_size = ((uint64_t)(4 + 2 * widest + widest / 32) * 4 + SLOT - 1) / SLOT * SLOT;
    for (int32_t i = 0; i <= 4 * m->L; i++) m->sel_off[i] = (uint64_t)i * m->sel_size;
    m->step_bytes = 16 + (uint64_t)hd / 2 * 8;
    m->logits_bytes = (uint64_t)desc->n_vocab * 4;
    struct { WGPUBuffer *b; uint64_t size; WGPUBufferUsage u; } bs[] = {
        {&m->x, (uint64_t)dim * 4, STORAGE}, {&m->qkv, (uint64_t)qkvd * 4, STORAGE}, {&m->ao, (uint64_t)qd * 4, STORAGE},
        {&m->gu, (uint64_t)2 * ff * 4, STORAGE}, {&m->hm, (uint64_t)ff * 4, STORAGE},
        {&m->att, (uint64_t)desc->n_heads * n_ctx * 4, STORAGE}, {&m->partial, part * 4, STORAGE},
        {&m->sel, (uint64_t)(4 * m->L + 1) * m->sel_size, STORAGE}, {&m->state, 32, STORAGE},
        {&m->keys, (uint64_t)widest * 4, STORAGE},
        {&m->step, m->step_bytes, STORAGE}, {&m->hq, ((uint64_t)dim + dim / 32) * 4, STORAGE},
        {&m->logits, m->logits_bytes, STORAGE}, {&m->dummy_r, 16, STORAGE}, {&m->dummy_w, 16, STORAGE},
        {&m->staging, m->logits_bytes + 32, WGPUBufferUsage_MapRead | WGPUBufferUsage_CopyDst},
    };
    for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++) {
        if (bs[i].u != STORAGE || check_size(g, bs[i].size, "an activation buffer", err, err_len) == LR_OK)
            *bs[i].b = lr_gpu_buffer(g, bs[i].size, bs[i].u, NULL, "activations");
        if (!*bs[i].b) { fail(err, err_len, LR_ENOMEM, "GPU: cannot allocate the activations"); goto bad; }
        m->bytes += (int64_t)bs[i].size;
    }
    for (int i = 0; i < 4; i++)
        for (int32_t l = 0; l < m->L; l++) m->k[i][l] = m->width[i], m->thr[i][l] = -1.0f;   /* dense */
    /* uniform slots: per layer 4 selections, 4 matvecs and their reduces, attention, an adapter (3) */
    const uint64_t slots = 16 * (uint64_t)m->L + 8 + (uint64_t)m->n_head_parts;
    if (!(m->params = lr_gpu_buffer(g, slots * SLOT, WGPUBufferUsage_Uniform | WGPUBufferUsage_CopyDst, NULL, "params")))
        { fail(err, err_len, LR_ENOMEM, "GPU: cannot allocate the parameters"); goto bad; }
    if (!record_step(m) || (uint64_t)m->n_slots > slots)
        { fail(err, err_len, LR_ENOMEM, "GPU: cannot record the decode step"); goto bad; }
    W.QueueWriteBuffer(g->queue, m->params, 0, m->params_host, (size_t)m->n_slots * SLOT);
    m->bytes += (int64_t)m->n_slots * SLOT;
    for (int32_t i = 0; i < hd / 2; i++) {
        m->inv_freq[i] = pow((double)desc->rope_base, -(double)(2 * i) / (double)hd);
        if (desc->rope_freqs.data) m->inv_freq[i] /= (double)((const float *)desc->rope_freqs.data)[i];
    }
    lr_gpu_flush(g);
    if (g->failed) { snprintf(msg, sizeof msg, "GPU: %s", g->error); fail(err, err_len, LR_EGPU, msg); goto bad; }
    return m;
bad:
    lr_gpu_model_free(m);
    return NULL;
}

/* ---- selection ---------------------------------------------------------------------------------- */

/* the selections' parameters as the host arrays say, into their uniform slots */
static void write_select_params(lr_gpu_model *m) {
    for (int32_t l = 0; l < m->L; l++)
        for (int b = 0; b < 4; b++) {
            const int32_t slot = m->sel_slot[4 * l + b];
            sel_params p = select_params(m, b, l, 0);
            sel_params *cur = (sel_params *)(m->params_host + (size_t)slot * SLOT);
            p.quant = cur->quant, p.has_score = cur->has_score;   /* fixed by the weights */
            *cur = p;
            W.QueueWriteBuffer(m->g->queue, m->params, (uint64_t)slot * SLOT, cur, sizeof p);
        }
}

int32_t lr_gpu_model_set_selection(lr_gpu_model *m, const int32_t *k, const float *threshold) {
    if (!m || !k || !threshold) return LR_EARG;
    const int32_t L = m->L;
    for (int i = 0; i < 4; i++)
        for (int32_t l = 0; l < L; l++) {
            const float t = threshold[i * L + l];
            if (t != t || t > 3.0e38f) return LR_ERANGE;
            if (t < 0.0f && (k[i * L + l] < 1 || k[i * L + l] > m->width[i])) return LR_ERANGE;
        }
    for (int i = 0; i < 4; i++)
        for (int32_t l = 0; l < L; l++) m->k[i][l] = k[i * L + l], m->thr[i][l] = threshold[i * L + l];
    write_select_params(m);
    return LR_OK;
}

int32_t lr_gpu_model_set_budget(lr_gpu_model *m, const float *plan, const float *cost) {
    if (!m) return LR_EARG;
    if (!plan) {
        m->budget = 0;
        write_select_params(m);
        return LR_OK;
    }
    if (!cost) return LR_EARG;
    const int32_t L = m->L;
    for (int i = 0; i < 4; i++)
        for (int32_t l = 0; l < L; l++) {
            const float p = plan[i * L + l], c = cost[i * L + l];
            if (!(p >= 1.0f && p <= (float)m->width[i]) || !(c > 0.0f && c < 1.0e30f)) return LR_ERANGE;
            if (m->thr[i][l] < 0.0f) return LR_ERANGE;
        }
    double rest = 0.0;   /* planned cost from each selection to the end, in evaluation order (forward.c) */
    for (int32_t l = L - 1; l >= 0; l--)
        for (int i = 3; i >= 0; i--) {
            m->plan[i][l] = plan[i * L + l], m->cost[i][l] = cost[i * L + l];
            rest += (double)plan[i * L + l] * (double)cost[i * L + l];
            m->remain[i][l] = rest;
        }
    m->budget = 1;
    write_select_params(m);
    return LR_OK;
}

/* ---- the step ----------------------------------------------------------------------------------- */

static int32_t gpu_status(lr_gpu *g) {
    lr_gpu_flush(g);
    return g->failed ? LR_EGPU : LR_OK;
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e9 * (double)ts.tv_sec + (double)ts.tv_nsec;
}

/* the step's dispatches as a command buffer: the same every token (what changes is in buffers) */
static WGPUCommandBuffer encode_step(lr_gpu_model *m) {
    const double t0 = now_ns();
    WGPUCommandEncoder enc = lr_gpu_encoder(m->g);
    lr_gpu_run(m->g, m->disp, m->n_disp, enc, NULL);
    WGPUCommandBufferDescriptor cd = WGPU_COMMAND_BUFFER_DESCRIPTOR_INIT;
    WGPUCommandBuffer cb = W.CommandEncoderFinish(enc, &cd);
    W.CommandEncoderRelease(enc);
    m->host_ns[0] += now_ns() - t0;
    return cb;
}

/* one token at pos; readback: its logits into out (n_vocab floats). Without profiling, the
 * dispatches were encoded while the previous token ran (m->next: the 7B shape's 416 dispatches
 * cost the host 0.8-1.4 ms that the GPU waited for), and the next token's are encoded while this
 * one runs; the readback's copies go in a small command buffer of their own. */
static int32_t step_token(lr_gpu_model *m, int32_t token, int32_t pos, float *out) {
    lr_gpu *g = m->g;
    int32_t rc = lr_get_row(&m->d.embd, token, m->row);
    if (rc) return rc;
    W.QueueWriteBuffer(g->queue, m->x, 0, m->row, (size_t)m->d.dim * 4);
    uint32_t *sb = (uint32_t *)m->stepbuf;
    sb[0] = (uint32_t)pos, sb[1] = sb[2] = sb[3] = 0;
    for (int32_t i = 0; i < m->d.head_dim / 2; i++) {   /* lr_rope_angles */
        const double a = (double)pos * m->inv_freq[i];
        m->stepbuf[4 + 2 * i] = (float)cos(a);
        m->stepbuf[4 + 2 * i + 1] = (float)sin(a);
    }
    W.QueueWriteBuffer(g->queue, m->step, 0, m->stepbuf, (size_t)m->step_bytes);
    WGPUCommandBuffer cbs[2];
    uint32_t ncb = 0;
    if (!m->profile) cbs[ncb++] = m->next ? m->next : encode_step(m);
    else if (m->next) W.CommandBufferRelease(m->next);
    m->next = NULL;
    WGPUCommandEncoder enc = lr_gpu_encoder(g);
    if (m->profile) {
        lr_gpu_run(g, m->disp, m->n_disp, enc, m->qs);
        W.CommandEncoderResolveQuerySet(enc, m->qs, 0, (uint32_t)(g->ts_inside ? m->n_disp + 1 : 2 * m->n_disp), m->qres, 0);
        W.CommandEncoderCopyBufferToBuffer(enc, m->qres, 0, m->qread, 0, (uint64_t)m->n_disp * 16);
    }
    if (out) {
        W.CommandEncoderCopyBufferToBuffer(enc, m->logits, 0, m->staging, 0, m->logits_bytes);
        W.CommandEncoderCopyBufferToBuffer(enc, m->state, 0, m->staging, m->logits_bytes, 32);
        W.CommandEncoderClearBuffer(enc, m->state, 0, 32);   /* the row counters restart */
    }
    WGPUCommandBufferDescriptor cd = WGPU_COMMAND_BUFFER_DESCRIPTOR_INIT;
    cbs[ncb++] = W.CommandEncoderFinish(enc, &cd);
    W.CommandEncoderRelease(enc);
    W.QueueSubmit(g->queue, ncb, cbs);
    for (uint32_t i = 0; i < ncb; i++) W.CommandBufferRelease(cbs[i]);
    if (!m->profile && m->preencode) m->next = encode_step(m);
    if (m->profile) {   /* GPU time per dispatch, added up by kernel */
        uint64_t *tsv = malloc((size_t)m->n_disp * 16);
        if (tsv && lr_gpu_read(g, m->qread, (uint64_t)m->n_disp * 16, tsv) == LR_OK) {
            for (int32_t i = 0; i < m->n_disp; i++) {   /* dispatch i: timestamps a to b */
                const uint64_t a = g->ts_inside ? tsv[i] : tsv[2 * i], b = g->ts_inside ? tsv[i + 1] : tsv[2 * i + 1];
                for (int p = 0; p < P_COUNT; p++)
                    if (g->pipe[p] == m->disp[i].pipe && b > a) m->prof_ns[p] += (double)(b - a);
            }
            m->prof_tokens++;
        }
        free(tsv);
    }
    if (!out) return gpu_status(g);
    float *tmp = malloc((size_t)m->logits_bytes + 32);
    if (!tmp) return LR_ENOMEM;
    const double t0 = now_ns();
    rc = lr_gpu_read(g, m->staging, m->logits_bytes + 32, tmp);
    m->host_ns[1] += now_ns() - t0;
    if (rc == LR_OK) {
        memcpy(out, tmp, (size_t)m->logits_bytes);
        uint32_t counts[4];
        memcpy(counts, (const char *)tmp + m->logits_bytes + 4, sizeof counts);
        for (int b = 0; b < 4; b++) m->rows_read[b] += counts[b];
        for (int32_t v = 0; v < m->d.n_vocab; v++)
            if (!isfinite(out[v])) { rc = LR_ENAN; break; }
    }
    free(tmp);
    return rc == LR_OK ? gpu_status(g) : rc;
}

int32_t lr_gpu_eval(lr_gpu_model *m, const int32_t *tokens, int32_t n, int32_t pos0, float *logits, int32_t all_logits) {
    if (!m || !tokens || n < 1) return LR_EARG;
    if (m->g->failed) return LR_EGPU;
    if (pos0 < 0 || pos0 > m->n_past || n > m->n_ctx - pos0) return LR_ERANGE;
    for (int32_t t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= m->d.n_vocab) return LR_ERANGE;
    float *scratch = NULL;
    if (!logits) {   /* the counters are read with the logits: the last token still reads back */
        if (!(scratch = malloc((size_t)m->logits_bytes))) return LR_ENOMEM;
    }
    int32_t rc = LR_OK;
    for (int32_t t = 0; t < n && (rc == LR_OK || rc == LR_ENAN); t++) {
        float *out = NULL;
        if (t == n - 1) out = logits ? (all_logits ? logits + (size_t)t * m->d.n_vocab : logits) : scratch;
        else if (logits && all_logits) out = logits + (size_t)t * m->d.n_vocab;
        const int32_t r = step_token(m, tokens[t], pos0 + t, out);
        if (r != LR_OK && (rc == LR_OK || r != LR_ENAN)) rc = r;
        m->n_past = pos0 + t + 1;
    }
    free(scratch);
    m->rows_tokens += (uint64_t)n;
    return rc;
}

int32_t lr_gpu_model_rows_read(lr_gpu_model *m, uint64_t *out, int32_t reset) {
    if (!m || !out) return LR_EARG;
    for (int i = 0; i < 4; i++) out[i] = m->rows_read[i];
    out[4] = m->rows_tokens;
    if (reset) memset(m->rows_read, 0, sizeof m->rows_read), m->rows_tokens = 0;
    return LR_OK;
}

int64_t lr_gpu_model_bytes(const lr_gpu_model *m) { return m ? m->bytes : LR_EARG; }

/* copies size bytes at off of a storage buffer back to the host */
int32_t lr_gpu_read_back(lr_gpu *g, WGPUBuffer src, uint64_t off, uint64_t size, void *out) {
    WGPUBuffer st = lr_gpu_buffer(g, size, WGPUBufferUsage_MapRead | WGPUBufferUsage_CopyDst, NULL, "readback");
    if (!st) return LR_ENOMEM;
    WGPUCommandEncoder enc = lr_gpu_encoder(g);
    W.CommandEncoderCopyBufferToBuffer(enc, src, off, st, 0, (size + 3) / 4 * 4);
    lr_gpu_submit(g, enc);
    int32_t rc = lr_gpu_read(g, st, size, out);
    W.BufferRelease(st);
    return rc;
}

int32_t lr_gpu_model_selection(lr_gpu_model *m, int32_t layer, int32_t block, int32_t *idx, int32_t cap) {
    if (!m || layer < 0 || layer >= m->L || block < 0 || block > 3 || cap < 0 || (cap && !idx)) return LR_EARG;
    const int32_t n = m->width[block];
    uint32_t *buf = malloc(((size_t)n + 4) * 4);
    if (!buf) return LR_ENOMEM;
    int32_t rc = lr_gpu_read_back(m->g, m->sel, m->sel_off[4 * layer + block], ((uint64_t)n + 4) * 4, buf);
    if (rc == LR_OK) {
        rc = (int32_t)buf[0];
        for (int32_t j = 0; j < rc && j < cap; j++) idx[j] = (int32_t)buf[4 + j];
    }
    free(buf);
    return rc;
}

int32_t lr_gpu_model_read(lr_gpu_model *m, int32_t which, float *out, int32_t n) {
    if (!m || !out || which < 0 || which > 4 || n < 0) return LR_EARG;
    const int32_t qkvd = (m->d.n_heads + 2 * m->d.n_kv_heads) * m->d.head_dim;
    const WGPUBuffer b[5] = {m->x, m->qkv, m->ao, m->gu, m->hm};
    const int32_t len[5] = {m->d.dim, qkvd, m->d.n_heads * m->d.head_dim, 2 * m->d.ffn_dim, m->d.ffn_dim};
    if (n > len[which]) return LR_ERANGE;
    return lr_gpu_read_back(m->g, b[which], 0, (uint64_t)n * 4, out);
}

int64_t lr_gpu_model_profile(lr_gpu_model *m, double *out_ns, int32_t n, int32_t enable) {
    if (!m || n < 0 || (n && !out_ns)) return LR_EARG;
    for (int32_t i = 0; i < n && i < P_COUNT + 2; i++) out_ns[i] = i < P_COUNT ? m->prof_ns[i] : m->host_ns[i - P_COUNT];
    const int64_t tokens = m->prof_tokens;
    memset(m->prof_ns, 0, sizeof m->prof_ns);
    memset(m->host_ns, 0, sizeof m->host_ns);
    m->prof_tokens = 0;
    if (enable && !m->g->timestamps) return LR_ETYPE;
    if (enable && !m->qs) {
        WGPUQuerySetDescriptor qd = WGPU_QUERY_SET_DESCRIPTOR_INIT;
        qd.type = WGPUQueryType_Timestamp, qd.count = (uint32_t)(2 * m->n_disp);
        m->qs = W.DeviceCreateQuerySet(m->g->device, &qd);
        m->qres = lr_gpu_buffer(m->g, (uint64_t)m->n_disp * 16, WGPUBufferUsage_QueryResolve | WGPUBufferUsage_CopySrc,
                                NULL, "timestamps");
        m->qread = lr_gpu_buffer(m->g, (uint64_t)m->n_disp * 16, WGPUBufferUsage_MapRead | WGPUBufferUsage_CopyDst,
                                 NULL, "timestamps");
        if (!m->qs || !m->qres || !m->qread) return LR_ENOMEM;
    }
    m->profile = enable != 0;
    return tokens;
}

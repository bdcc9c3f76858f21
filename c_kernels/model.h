/* The model state shared by the decode step (forward.c) and the batched prompt path (prefill.c). */
#ifndef LAROSA_MODEL_H
#define LAROSA_MODEL_H
#include "kernels.h"
#include "threads.h"

enum { ATTN_IN = 0, ATTN_OUT = 1, MLP_IN = 2, MLP_OUT = 3 };
#define LR_BATCH 64            /* prompt tokens per batched pass */
#define LR_MAX_PARTS 16        /* most input-group ranges an integer product is split into */

struct lr_model {
    lr_model_desc d;
    lr_layer *layers;
    int32_t n_ctx, n_past;     /* KV cache capacity, positions filled */
    int32_t *k[4];             /* per block input: k of each layer (Top-K) */
    float *thr[4];             /* per block input: threshold of each layer (< 0: Top-K) */
    /* budget mode (lr_model_set_budget): a threshold's count, scaled to keep each token on plan */
    int32_t budget;
    float *plan[4], *cost[4];  /* per block input and layer: planned rows, cost of one row */
    double *remain[4];         /* planned cost from this (layer, block input) to the end */
    double over[LR_BATCH];     /* per token of a batch: cost spent above the plan so far */
    int32_t width[4];          /* per block input: its width n */
    uint64_t rows_read[4], rows_tokens;   /* selected inputs, for the bytes actually read */
    uint64_t groups_read[4];   /* groups of 32 inputs with a selected one: an _IM weight reads their scales */
    /* KV cache: [L][nkv][n_ctx] rows of one head's hd values of type_k / type_v (F32, F16, Q8_0
     * blocks of 32), k_row / v_row bytes each (lr_kv_store writes them): a head's positions are
     * one stream for attention (positions-major rows, [L][n_ctx][nkv hd], made a head's keys a
     * stride the prefetchers followed badly: SmolLM2 at 480 positions spent 30 % of a step there) */
    uint8_t *key_cache, *value_cache;
    int32_t type_k, type_v;
    size_t k_row, v_row;
    block_q8_0 *qk8;           /* [n_threads][hd / 32] a head's q as Q8_0 blocks (Q8_0 keys) */
    /* one token */
    float *x, *xn, *tmp;       /* [d] residual, normalized input, matvec output */
    float *qkv;                /* [(nh + 2 nkv) hd] */
    float *att;                /* [nh][n_ctx] attention scores */
    float *ao;                 /* [nh hd] attention output */
    float *gu, *hm;            /* [2 ff], [ff] */
    int32_t *idx;              /* [n_threads][widest] Top-K indices (lr_select's thread) */
    int32_t *iota;             /* [max width] 0, 1, 2...: the rows of a dense matvec */
    float *parts;              /* [pool shares][max matvec output] partial sums of a row-split matvec */
    /* integer kernels (_IM weights, quantized head): x quantized once per matvec */
    lr_qsel qsel;              /* the selected inputs of one matvec, quantized */
    void *qsel_buf;
    int32_t *qacc;             /* [n_threads][out_widest] int32 accumulators (64-byte aligned) */
    int8_t *hxq;               /* [d] the head's input, quantized in blocks of 32 */
    float *hdx;                /* [d / 32] */
    int32_t *hsx;              /* [d / 32] the blocks' sums of codes */
    void *head8;               /* the head's first vocab / 8 * 8 rows repacked (lr_repack_x8), or NULL */
    lr_qbatch qb;              /* a batch's inputs of one product, quantized (prefill.c) */
    void *qb_buf;
    uint8_t *bmask;            /* [B][widest] 1 where token t selected input i */
    uint8_t *qscratch;         /* [n_threads][lr_qgemm_scratch(out_widest)] (64-byte aligned) */
    float *qparts;             /* [min(n_threads, LR_MAX_PARTS)][B][out_widest] a batch's partial products */
    int32_t out_widest;
    uint32_t *topk_scratch;    /* [n_threads][widest] */
    float *keys;               /* [n_threads][widest] ranking keys (scores, CATS gate) */
    /* a batch of LR_BATCH tokens (prefill.c): row t of each is token t */
    float *bx, *bxn, *by;      /* [B][d], [B][max width], [B][max(d, 2 ff, qkv)] */
    float *bqkv, *bao, *bgu;   /* [B][qkv], [B][nh hd], [B][2 ff] */
    float *scores;             /* [n_threads][scratch_len] attention scores or a head row */
    int32_t scratch_len;       /* max(n_ctx, d) */
    int32_t widest;            /* max(d, nh hd, ff) */
    int32_t n_rot;             /* the desc's n_rot, 0 resolved to head_dim */
    double *inv_freq;          /* [hd / 2], the first n_rot / 2 used */
    float *rope_cos, *rope_sin;
    double *inv_freq_swa;      /* [hd / 2] the sliding-window layers' (desc rope_base_swa), or NULL */
    float *rope_cos_swa, *rope_sin_swa;
    lr_pool *pool;
    int32_t profile;           /* per-op timers on (lr_model_profile) */
    double prof_ns[LR_NPROF];
    int64_t prof_tokens;
    uint8_t *trace;            /* test hook: Top-K masks (lr_model_trace) */
    float *trace_keys;         /* and the keys they ranked (lr_model_trace_keys) */
    int64_t trace_keys_cap;
    int64_t trace_cap, trace_tokens;
};

void lr_rmsnorm(float *out, const float *x, int32_t n, float eps, const float *w);
/* cos / sin of position pos for the RoPE base of a layer of sliding window n_swa (0: none) */
void lr_rope_angles(const lr_model *m, int32_t pos, int32_t n_swa, float *c, float *s);
/* one token's q and k (qkv: q then k) rotated by c, s (unless the layer has no RoPE: the first n_rot
 * values of each head), then q times the attention temperature of position pos, if any (the decode
 * step and the prompt path alike) */
void lr_rope_qk(const lr_model *m, const lr_layer *L, float *qkv, int32_t pos, const float *c, const float *s);
/* one token's q, k, v after their product, before RoPE: the layer's bias and q/k norms, if any
 * (the decode step and the prompt path alike) */
void lr_qkv_extras(const lr_model *m, const lr_layer *L, float *qkv);
/* y[0:n] += b (an output bias), when b is present */
void lr_add_bias(float *y, const lr_tensor *b, int32_t n);
/* a block's output y [d] before the residual add: its bias, then its post norm (Gemma), if any */
void lr_block_out(const lr_model *m, const lr_tensor *bias, const lr_tensor *post_norm, float *y);
/* out[0:ff] = act(gu[0:ff]) * gu[ff:2 ff], the desc's activation (SwiGLU, GeGLU) */
void lr_glu(const lr_model *m, const float *gu, float *out, int32_t i0, int32_t i1);   /* out[i0:i1] */
/* the residual entering layer 0: the token's embedding row, times the desc's embd_scale */
void lr_embed(const lr_model *m, int32_t token, float *x);
/* logits [n_vocab] soft-capped by the desc's final_softcap, when set; LR_ENAN if one is not finite */
int32_t lr_logits_done(const lr_model *m, float *logits);
/* attention of one query head (q: hd floats) at position pos over cached positions 0..pos;
 * scores: pos + 1 floats of scratch, thread: whose Q8_0 scratch it uses */
void lr_attend_head(const lr_model *m, int32_t layer, int32_t pos, int32_t head, const float *q,
                    float *out, float *scores, int32_t thread);
/* the keys and values of one position (nkv hd floats each, after RoPE) into the cache, rounded to
 * its types: the one write of the decode step and the prompt path alike */
void lr_kv_write(lr_model *m, int32_t layer, int32_t pos, const float *k, const float *v);
/* The inputs of block input `block` of `layer` to read for the current token (x, n wide): their
 * indices in ascending order, and their count in *k; NULL when all are read. gate: the gate half of
 * the MLP (for a CATS key). t: token index within the current lr_eval call (for the trace). thread:
 * whose scratch it uses (prompt tokens select in parallel, one thread each). */
const int32_t *lr_select(lr_model *m, const float *x, const float *gate, int32_t layer, int32_t block,
                         int32_t t, int32_t thread, int32_t *k);
/* the number of input-group ranges an _IM product of w is split into (one per thread, at most
 * LR_MAX_PARTS and the number of groups); the decode step and the prompt path split alike */
int32_t lr_im_parts(const lr_model *m, const lr_tensor *w);
/* logits = head x (the last product of a token; quantizes x for a Q8_0 / Q4_0 head) */
void lr_head_rows(lr_model *m, const float *x, float *logits);
/* y = x W over the k rows idx (ascending; NULL: all rows) of an input-major W, as the decode step
 * computes it (its kernels and thread split): the prompt path's float products, per token */
void lr_matvec(lr_model *m, const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, float *y);
int32_t lr_prefill(lr_model *m, const int32_t *tokens, int32_t n, int32_t pos0, float *logits, int32_t all_logits);

#endif

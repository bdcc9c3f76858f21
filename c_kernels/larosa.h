/* larosa: the C side of the runtime. A decode step of a LaRoSA model (FORMAT.md) and its kernels.
 *
 * Conventions: activations are float32 row vectors. A tensor is [rows, cols] row-major; type is
 * ggml's id (F32 0, F16 1, Q4_0 2, Q8_0 8). Layer weights are input-major (row i = input i).
 * Every entry point checks its arguments and returns a negative LR_E* code instead of crashing.
 * Lines starting with '#' are skipped when cffi reads this header.
 */
#ifndef LAROSA_H
#define LAROSA_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t type;        /* LR_F32 / LR_F16 / LR_Q4_0 / LR_Q8_0 (ggml), LR_Q8_0_IM / LR_Q4_0_IM */
    int32_t rows, cols;
    const void *data;    /* NULL: tensor absent. _IM types: the codes, [rows][cols] int8 (Q8) or
                            [rows][cols / 2] packed nibbles (Q4) */
    uint64_t nbytes;     /* checked against rows, cols and type */
    const void *scale;   /* _IM types only: [rows / 32][cols] fp16 scales */
    uint64_t scale_nbytes;
} lr_tensor;

typedef struct {
    lr_tensor adapter;   /* [d, d] or absent (the residual keeps its basis) */
    lr_tensor wqkv;      /* [d, (nh + 2 nkv) hd] */
    lr_tensor wo;        /* [nh hd, d] */
    lr_tensor wgu;       /* [d, 2 ff] */
    lr_tensor wdown;     /* [ff, d] */
    lr_tensor score[4];  /* per block input, F32 [1, n] or absent: inputs ranked by |x_i| score_i */
    /* what an architecture adds to llama's layer (FORMAT.md), each F32 or absent: */
    lr_tensor bqkv;      /* [1, (nh + 2 nkv) hd] added to q, k, v (Qwen2, llama with biases) */
    lr_tensor bo, bdown; /* [1, d] added to the o / down products, before the residual add */
    lr_tensor q_norm, k_norm;  /* [1, hd] RMSNorm scales over each head of q / k, before RoPE (Qwen3, Gemma 3) */
    lr_tensor post_attn_norm, post_ffn_norm;   /* [1, d] RMSNorm scales of the o / down output before
                                                  the residual add (Gemma's sandwich norms) */
    lr_tensor attn_norm, ffn_norm;   /* [1, d] RMSNorm scales of the block inputs applied at run time, or
                                        absent (folded into wqkv / wgu) */
    int32_t n_swa;       /* > 0: a sliding-window layer: attends to the last n_swa positions (itself
                            included) and rotates by the desc's rope_base_swa; 0: all positions */
    int32_t no_rope;     /* 1: q and k are not rotated (SmolLM3's every fourth layer) */
} lr_layer;

typedef struct {
    int32_t n_vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim;
    float norm_eps, rope_base;
    lr_tensor embd;          /* [vocab, d] output-major */
    lr_tensor head;          /* [vocab, d] output-major (the same data as embd when tied) */
    lr_tensor out_adapter;   /* [d, d] or absent */
    lr_tensor out_norm;      /* [d] F32 or absent */
    lr_tensor rope_freqs;    /* [hd / 2] F32 or absent */
    const lr_layer *layers;  /* n_layers entries; copied by lr_model_new */
    int32_t mlp_out_gate_key; /* 1: the down input is ranked by |act(gate_j)| (CATS), not |m_j| */
    /* what an architecture adds (FORMAT.md "Architecture keys"); all zero: llama */
    float embd_scale;         /* the looked-up embedding row times this (Gemma: sqrt(d)); 0: 1 */
    float rope_base_swa;      /* RoPE base of the sliding-window layers (n_swa > 0) */
    float attn_softcap;       /* > 0: attention scores c tanh(s / c) (Gemma 2) */
    float final_softcap;      /* > 0: logits c tanh(z / c) */
    int32_t act;              /* the MLP's gate activation: LR_ACT_SILU (SwiGLU) or LR_ACT_GELU_TANH (GeGLU) */
    int32_t n_rot;            /* RoPE rotates the first n_rot values of each head (partial rotary, Phi-3/4;
                                 even, <= head_dim); 0: head_dim. rope_freqs then holds n_rot / 2 divisors */
    int32_t swa_no_freqs;     /* 1: the sliding-window layers do not divide by rope_freqs (Gemma 3's
                                 linear scaling is its global layers'); 0: every layer does */
    float attn_temp_scale;    /* != 0: q at position p times 1 + attn_temp_scale ln(floor(p / attn_temp_length)
                                 + 1) after RoPE (Mistral 3 / Llama 4 attention temperature) */
    int32_t attn_temp_length; /* > 0 when attn_temp_scale is set */
} lr_model_desc;

typedef struct lr_model lr_model;

/* error codes */
enum { LR_OK = 0, LR_EARG = -1, LR_ESHAPE = -2, LR_ETYPE = -3, LR_ENOMEM = -4, LR_ERANGE = -5,
       LR_ENAN = -6, LR_ETHREAD = -7 };
/* tensor types: ggml ids, and the input-major quantized types of FORMAT.md (ggml's Q8_0 / Q4_0 of
 * the output-major weight stored transposed, scales apart; rows % 32 == 0, cols % 64 == 0) */
enum { LR_F32 = 0, LR_F16 = 1, LR_Q4_0 = 2, LR_Q8_0 = 8, LR_Q8_0_IM = 108, LR_Q4_0_IM = 102 };
/* activations: SiLU; GELU in its tanh form as ggml's CPU backend computes it (input and output
 * rounded to half precision, its GGML_GELU_FP16 table; 0 below -10, x above 10) */
enum { LR_ACT_SILU = 0, LR_ACT_GELU_TANH = 1 };
/* SIMD levels */
enum { LR_SIMD_SCALAR = 0, LR_SIMD_AVX2 = 1, LR_SIMD_AVX512 = 2, LR_SIMD_NEON = 3 };

/* model: n_ctx positions of KV cache, n_threads >= 1. type_k, type_v: the cache's types (llama.cpp's
 * -ctk / -ctv): LR_F32, LR_F16 (llama.cpp's default) or LR_Q8_0 (ggml blocks of 32 along the head
 * dimension: head_dim % 32 == 0; the keys' scores then take q as Q8_0 blocks too, as ggml does).
 * err receives a message on failure. */
lr_model *lr_model_new(const lr_model_desc *desc, int32_t n_ctx, int32_t n_threads, int32_t type_k, int32_t type_v,
                       char *err, int32_t err_len);
void lr_model_free(lr_model *m);
/* The selection of every block input (attn_in, attn_out, mlp_in, mlp_out) of every layer, block
 * input major ([4][n_layers]): threshold[b][l] >= 0 keeps the inputs whose key exceeds it, a
 * negative threshold keeps the k[b][l] largest keys (Top-K; 1 <= k <= n). */
int32_t lr_model_set_selection(lr_model *m, const int32_t *k, const float *threshold);
/* Budget mode on top of thresholds (every threshold must be >= 0): plan[b][l] (1..n) rows planned,
 * cost[b][l] > 0 the cost of one row, both [4][n_layers]. Each selection keeps its threshold's count
 * scaled by (1 - D / R), D the token's cost above plan so far, R the planned cost still to come; the
 * last selection takes the rest. plan = NULL turns it off; lr_model_set_selection keeps it. */
int32_t lr_model_set_budget(lr_model *m, const float *plan, const float *cost);
/* Inputs read since the last reset, per block input summed over layers, then the tokens, then the
 * groups of 32 inputs that had a selected input, per block input summed over layers: out[9]. */
int32_t lr_model_rows_read(lr_model *m, uint64_t *out, int32_t reset);
/* Evaluates n tokens at positions pos0..pos0+n-1 (pos0 must equal the number of cached positions,
 * or be smaller to rewind). logits: n * n_vocab floats when all_logits, else n_vocab (last token),
 * or NULL. Returns LR_OK, or LR_ENAN if a logit is not finite. */
int32_t lr_eval(lr_model *m, const int32_t *tokens, int32_t n, int32_t pos0, float *logits, int32_t all_logits);
int32_t lr_model_n_ctx(const lr_model *m);
/* 1 when lr_model_new repacked the head (Q8_0 / Q4_0 on x86: lr_repack_x8), which then reads its
 * own copy: the mapped head's pages are read again only for embedding lookups of a tied head */
int32_t lr_model_head_repacked(const lr_model *m);
/* The repacked head's memory (2 MiB-aligned) and its size rounded up to 2 MiB; NULL and 0 if none */
void *lr_model_head8(const lr_model *m, int64_t *nbytes);
/* Per-op timers of the single-token decode step (off by default; the clock is read only when on).
 * Copies min(n, LR_NPROF) accumulated nanoseconds into out_ns (may be NULL) in the order of
 * LR_PROF_*, then sets the timers on (enable = 1) or off (0) and, if reset, zeroes them. Returns the
 * decode tokens timed since the last reset. */
enum { LR_PROF_ADAPTER = 0, LR_PROF_NORM = 1, LR_PROF_SELECT = 2, LR_PROF_QKV = 3, LR_PROF_ATTN = 4,
       LR_PROF_O = 5, LR_PROF_GATE_UP = 6, LR_PROF_SWIGLU = 7, LR_PROF_DOWN = 8, LR_PROF_HEAD = 9,
       LR_NPROF = 10 };
int64_t lr_model_profile(lr_model *m, double *out_ns, int32_t n, int32_t enable, int32_t reset);
/* Test hook: every Top-K decision of lr_eval is recorded into masks as 0/1 bytes, in order of
 * computation (token, layer, block input), n bytes each, until capacity is full. Returns the bytes
 * written into the previous buffer and starts recording into this one (NULL: recording off). */
int64_t lr_model_trace(lr_model *m, uint8_t *masks, int64_t capacity);
/* Test hook beside lr_model_trace: the keys each of those decisions ranked (|x_i| times the score,
 * or the CATS gate key), one float per mask byte at the same offsets, into keys (capacity floats,
 * at least the masks' capacity; NULL: off). Set it before lr_model_trace starts a recording. */
int32_t lr_model_trace_keys(lr_model *m, float *keys, int64_t capacity);

/* SIMD level used by all kernels; lr_set_simd returns LR_ERANGE if not compiled in / supported */
int32_t lr_simd_available(int32_t level);
int32_t lr_set_simd(int32_t level);
int32_t lr_get_simd(void);

/* kernels, exposed for tests and benchmarks */
int32_t lr_topk(const float *x, int32_t n, int32_t k, int32_t *idx);
/* y = sum_j x[idx[j]] W[idx[j], :] for an input-major W (F32, F16, Q8_0_IM, Q4_0_IM; the _IM types
 * quantize x to 8 bits); idx strictly ascending, or NULL with k = rows: all rows */
int32_t lr_spmv(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, float *y);
/* y[r] = W[r, :] . x for an output-major W (F32, F16; Q8_0 / Q4_0 with x quantized to 8 bits) */
int32_t lr_dot_rows(const lr_tensor *w, const float *x, float *y);
int32_t lr_get_row(const lr_tensor *w, int32_t row, float *out);
/* The prompt path's batched form of lr_spmv for the _IM types: Y[t] = lr_spmv of X[t] over the
 * inputs i with mask[t * rows + i] != 0, for t < n (X [n][rows], Y [n][cols]); bit-identical to
 * n calls of lr_spmv with those inputs as idx. */
int32_t lr_spmm(const lr_tensor *w, const float *X, const uint8_t *mask, int32_t n, float *Y);
/* Attention kernels of the KV cache, exposed for tests. lr_kv_row_bytes: bytes of n values of a
 * cache type (LR_EARG for another type, or Q8_0 with n % 32 != 0). lr_kv_store: x (n values) as
 * that type into out (lr_kv_row_bytes(type, n) bytes), the rounding of every cache write.
 * lr_attn_scores: att[t] = scale * (q . K[t]) for t < n, K rows of hd values of type_k `stride`
 * bytes apart (Q8_0: q quantized to Q8_0 first). lr_attn_values: out[0:hd] = sum_t w[t] V[t].
 * Both add in one fixed order (kernels.h), the same bits at every SIMD level. */
int64_t lr_kv_row_bytes(int32_t type, int32_t n);
int32_t lr_kv_store(int32_t type, const float *x, int32_t n, void *out);
int32_t lr_attn_scores(int32_t type_k, const float *q, const void *k, int64_t stride, int32_t n, int32_t hd,
                       float scale, float *att);
int32_t lr_attn_values(int32_t type_v, const float *w, const void *v, int64_t stride, int32_t n, int32_t hd,
                       float *out);
/* best-of-reps read bandwidth (bytes/s) of a buffer of `bytes` summed by n_threads threads; -1 on error */
double lr_read_bandwidth(int64_t bytes, int32_t n_threads, int32_t reps);
/* The same over the rows a sparse matvec reads: a buffer of `bytes` in rows of row_bytes (a multiple
 * of 64), a fraction keep of them selected at random, read in ascending order by n_threads threads
 * (contiguous shares, as the kernels split) with the kernels' software prefetch 16 rows ahead.
 * Bytes of the selected rows per second, best of reps; -1 on bad arguments or no memory. */
double lr_read_rows_bandwidth(int64_t bytes, int32_t row_bytes, double keep, int32_t n_threads, int32_t reps);

#endif

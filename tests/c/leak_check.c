/* leak_check: lr_model_new / lr_eval / lr_model_free cycles, for valgrind or LeakSanitizer.
 *
 * Builds a tiny random model (2 layers, GQA, scores and adapters present: layer 0 F32, layer 1 the
 * integer kernels' Q8_0_IM and Q4_0_IM weights, a ggml Q8_0 embedding and head) in memory and, per cycle, creates it with 1 and with 2 threads, sets a Top-K selection, evaluates
 * a prompt (the prefill path) and single tokens (the decode path), rewinds, and frees it. Each cycle
 * also takes every refusal path of lr_model_new: a bad shape, bad hyper-parameters, an out of range
 * n_ctx, and a KV cache no allocator grants (the ENOMEM path must free what it had allocated).
 * The run itself checks nothing about memory: the tool around it (valgrind --leak-check=full,
 * ASAN_OPTIONS=detect_leaks=1) does, and this program checks only that every call did what it says.
 *
 * Build: cc -O1 -g -std=c11 -D_GNU_SOURCE -pthread -I c_kernels tests/c/leak_check.c c_kernels/{kernels,
 *        qmatvec,qmatvec_x86,qmatvec_neon,simd_x86,simd_neon,threads,forward,prefill,membw}.c -lm
 * Usage: leak_check [cycles]   Output: "leak_check: N cycles, M calls ok"; exit 0 only if all were ok.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "larosa.h"

enum { VOCAB = 96, DIM = 64, LAYERS = 2, HEADS = 4, KV_HEADS = 2, HD = 16, FF = 96, CTX = 48 };

static long g_calls, g_bad;
#define EXPECT(cond) do { g_calls++; if (!(cond)) { g_bad++; fprintf(stderr, "FAIL line %d: %s\n", __LINE__, #cond); } } while (0)

static uint64_t g_rng = 12345;
static float rnd(void) {   /* uniform in [-0.5, 0.5) (xorshift64) */
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)(g_rng >> 40) / 16777216.0f - 0.5f;
}

/* every buffer handed to the model, freed at the end: the driver itself must not leak */
static void *g_bufs[64];
static int g_nbufs;

static lr_tensor make(int32_t type, int32_t rows, int32_t cols) {
    lr_tensor t = {type, rows, cols, NULL, 0, NULL, 0};
    if (type == LR_F32) {
        float *w = malloc((size_t)rows * cols * sizeof(float));
        for (size_t i = 0; i < (size_t)rows * cols; i++) w[i] = rnd() * 0.3f;
        t.data = w, t.nbytes = (uint64_t)rows * cols * 4;
    } else if (type == LR_Q8_0_IM || type == LR_Q4_0_IM) {
        /* input-major codes (Q4: two per byte, any nibble) and one fp16 scale per (group of 32
         * inputs, output): 0x2000 = 2^-7 (Q8), 0x2c00 = 2^-4 (Q4) */
        const size_t n = type == LR_Q8_0_IM ? (size_t)rows * cols : (size_t)rows * cols / 2, ns = (size_t)rows / 32 * cols;
        int8_t *w = malloc(n);
        uint16_t *d = malloc(ns * sizeof(uint16_t));
        for (size_t i = 0; i < n; i++) w[i] = (int8_t)(type == LR_Q8_0_IM ? rnd() * 60.0f : rnd() * 255.0f);
        for (size_t i = 0; i < ns; i++) d[i] = type == LR_Q8_0_IM ? 0x2000 : 0x2c00;
        t.data = w, t.nbytes = n, t.scale = d, t.scale_nbytes = ns * sizeof(uint16_t);
        g_bufs[g_nbufs++] = d;
    } else {   /* Q8_0: 32 int8 + one fp16 scale (0x2000 = 2^-7) per block */
        const size_t blocks = (size_t)rows * cols / 32;
        uint8_t *w = malloc(blocks * 34);
        for (size_t b = 0; b < blocks; b++) {
            w[b * 34] = 0x00, w[b * 34 + 1] = 0x20;
            for (int i = 0; i < 32; i++) w[b * 34 + 2 + i] = (uint8_t)(int8_t)(rnd() * 60.0f);
        }
        t.data = w, t.nbytes = blocks * 34;
    }
    g_bufs[g_nbufs++] = (void *)t.data;
    return t;
}

static lr_tensor ones(int32_t n) {
    lr_tensor t = make(LR_F32, 1, n);
    for (int32_t i = 0; i < n; i++) ((float *)t.data)[i] = 1.0f + rnd();
    return t;
}

static void one_cycle(lr_model_desc *d, int32_t threads, int32_t type_kv) {
    char err[128] = "";
    lr_model *m = lr_model_new(d, CTX, threads, type_kv, type_kv, err, sizeof(err));
    EXPECT(m != NULL);
    if (!m) { fprintf(stderr, "lr_model_new: %s\n", err); return; }
    int32_t k[4 * LAYERS];
    float thr[4 * LAYERS];
    const int32_t width[4] = {DIM, HEADS * HD, DIM, FF};
    for (int b = 0; b < 4; b++)
        for (int l = 0; l < LAYERS; l++) k[b * LAYERS + l] = width[b] * 3 / 5, thr[b * LAYERS + l] = b == 3 && l ? 0.05f : -1.0f;
    EXPECT(lr_model_set_selection(m, k, thr) == LR_OK);
    int32_t toks[40];
    for (int i = 0; i < 40; i++) toks[i] = (i * 37 + threads) % VOCAB;
    float *logits = malloc(sizeof(float) * VOCAB * 40);
    EXPECT(lr_eval(m, toks, 40, 0, logits, 1) == LR_OK);             /* prefill, more than one batch */
    for (int32_t p = 40; p < 44; p++) EXPECT(lr_eval(m, toks + p - 40, 1, p, logits, 0) == LR_OK);
    EXPECT(lr_eval(m, toks, 3, 10, logits, 0) == LR_OK);              /* rewind */
    EXPECT(lr_eval(m, toks, 1, CTX, logits, 0) == LR_ERANGE);         /* past the cache */
    uint64_t rows[9];   /* lr_model_rows_read: rows[4], tokens, groups[4] */
    EXPECT(lr_model_rows_read(m, rows, 1) == LR_OK && rows[4] == 47);   /* 40 + 4 + 3 tokens */
    free(logits);
    lr_model_free(m);
}

static void refusals(lr_model_desc *d) {
    char err[128];
    lr_layer *layers = (lr_layer *)d->layers;
    layers[1].wo.nbytes += 4;                                           /* a size that lies */
    EXPECT(lr_model_new(d, CTX, 1, LR_F16, LR_F16, err, sizeof(err)) == NULL && strstr(err, "layer 1 tensor attn_output"));
    layers[1].wo.nbytes -= 4;
    d->n_heads = 3;                                                     /* not a multiple of n_kv_heads */
    EXPECT(lr_model_new(d, CTX, 1, LR_F16, LR_F16, err, sizeof(err)) == NULL);
    d->n_heads = HEADS;
    d->n_rot = 3;                                                       /* partial rotary: odd */
    EXPECT(lr_model_new(d, CTX, 1, LR_F16, LR_F16, err, sizeof(err)) == NULL && strstr(err, "n_rot"));
    d->n_rot = 0;
    d->attn_temp_scale = 0.5f;                                          /* a temperature without its length */
    EXPECT(lr_model_new(d, CTX, 1, LR_F16, LR_F16, err, sizeof(err)) == NULL && strstr(err, "temperature"));
    d->attn_temp_scale = 0.0f;
    EXPECT(lr_model_new(d, 0, 1, LR_F16, LR_F16, err, sizeof(err)) == NULL);
    EXPECT(lr_model_new(d, CTX, 0, LR_F16, LR_F16, err, sizeof(err)) == NULL);
    EXPECT(lr_model_new(NULL, CTX, 1, LR_F16, LR_F16, err, sizeof(err)) == NULL);
    EXPECT(lr_model_new(d, CTX, 1, LR_Q4_0, LR_F16, err, sizeof(err)) == NULL && strstr(err, "KV cache types"));
    EXPECT(lr_model_new(d, CTX, 1, LR_F16, LR_Q8_0, err, sizeof(err)) == NULL && strstr(err, "multiple of 32"));
}

/* A model whose KV cache at the largest n_ctx (4 layers x 2^22 positions x 32768 floats, 2 TiB) no
 * allocator grants: lr_model_new gets some buffers, then NULL, and must free the ones it got.
 * All its weights point into one zeroed buffer: only their shapes and sizes are read. */
static void refused_kv_cache(const lr_model_desc *small) {
    enum { L = 4, H = 2048 };
    const int32_t kvd = H * HD;
    uint8_t *zero = calloc((size_t)DIM * 3 * kvd, sizeof(float));
    lr_layer layers[L];
    memset(layers, 0, sizeof(layers));
    for (int l = 0; l < L; l++) {
        layers[l].wqkv = (lr_tensor){LR_F32, DIM, 3 * kvd, zero, (uint64_t)DIM * 3 * kvd * 4};
        layers[l].wo = (lr_tensor){LR_F32, kvd, DIM, zero, (uint64_t)kvd * DIM * 4};
        layers[l].wgu = (lr_tensor){LR_F32, DIM, 2 * FF, zero, (uint64_t)DIM * 2 * FF * 4};
        layers[l].wdown = (lr_tensor){LR_F32, FF, DIM, zero, (uint64_t)FF * DIM * 4};
    }
    lr_model_desc d = *small;
    d.n_layers = L, d.n_heads = H, d.n_kv_heads = H, d.layers = layers;
    d.out_adapter.data = NULL;
    char err[128] = "";
    lr_model *m = lr_model_new(&d, 1 << 22, 1, LR_F32, LR_F32, err, sizeof(err));
    EXPECT(m == NULL && strstr(err, "out of memory"));
    lr_model_free(m);
    free(zero);
}

int main(int argc, char **argv) {
    const int cycles = argc > 1 ? atoi(argv[1]) : 10;
    lr_layer layers[LAYERS];
    memset(layers, 0, sizeof(layers));
    for (int l = 0; l < LAYERS; l++) {
        const int32_t t8 = l ? LR_Q8_0_IM : LR_F32, t4 = l ? LR_Q4_0_IM : LR_F32;
        layers[l].adapter = make(LR_F32, DIM, DIM);
        layers[l].wqkv = make(t8, DIM, (HEADS + 2 * KV_HEADS) * HD);
        layers[l].wo = make(t4, HEADS * HD, DIM);
        layers[l].wgu = make(t8, DIM, 2 * FF);
        layers[l].wdown = make(t4, FF, DIM);
        const int32_t width[4] = {DIM, HEADS * HD, DIM, FF};
        for (int b = 0; b < 4; b++) layers[l].score[b] = ones(width[b]);
    }
    lr_model_desc d;
    memset(&d, 0, sizeof(d));
    d.n_vocab = VOCAB, d.dim = DIM, d.n_layers = LAYERS, d.n_heads = HEADS, d.n_kv_heads = KV_HEADS;
    d.head_dim = HD, d.ffn_dim = FF, d.norm_eps = 1e-5f, d.rope_base = 10000.0f;
    d.embd = make(LR_Q8_0, VOCAB, DIM);
    d.head = d.embd;
    d.out_adapter = make(LR_F32, DIM, DIM);
    d.out_norm = ones(DIM);
    d.layers = layers;
    for (int c = 0; c < cycles; c++) {
        one_cycle(&d, 1, LR_F32);
        one_cycle(&d, 2, LR_F16);
        refusals(&d);
        refused_kv_cache(&d);
    }
    for (int i = 0; i < g_nbufs; i++) free(g_bufs[i]);
    printf("leak_check: %d cycles, %ld calls ok, %ld failed\n", cycles, g_calls - g_bad, g_bad);
    return g_bad != 0;
}

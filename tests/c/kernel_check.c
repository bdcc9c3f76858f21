/* kernel_check: every SIMD kernel level available on this machine against the scalar reference.
 *
 * For each level that lr_simd_available() reports, switches with lr_set_simd() and compares the
 * public kernel entry points against the scalar level on random data:
 * - lr_spmv (input-major) for F32, F16, Q8_0_IM and Q4_0_IM: random weights (the _IM types: random
 *   codes and a random finite fp16 scale per group of 32 inputs and output, subnormal, zero and
 *   negative ones included), random ascending row subsets with k = 0 (y must be all zero), 1, a
 *   random k, rows, and idx = NULL (dense); column counts that reach every tile, chunk and tail
 *   path of the float kernels (AVX-512 256/16/1, AVX2 64/8/1, NEON 32/1) and, for the _IM types,
 *   1, 2, 3, 5 and 17 chunks of 64 columns over 1, 2 and 5 groups of 32 inputs (passes of 8 and of
 *   4 selected rows, groups padded to whole quads);
 * - lr_dot_rows (output-major) for F32, F16, Q8_0 and Q4_0 (x quantized to 8 bits per block of 32);
 * - lr_spmm (the prompt path, _IM types) against lr_spmv of each token, bit for bit: a dense token,
 *   one of a single input, one of none and random ones, up to the largest batch;
 * - the column and row slices that the threaded forward pass hands to the kernel tables (float
 *   spmv: c0, c1 multiples of 32; qspmv and qgemm: of 64, qgemm with a row stride wider than the
 *   tensor; dot rows and qdot: r0, r1), including that nothing outside a slice or past the end of y
 *   is written, with scratch buffers full of garbage;
 * - NaN and Inf inputs: a selected one makes every output non-finite (the integer kernels: NaN,
 *   through the group's or block's scale), an unselected one changes nothing;
 * - the attention kernels of the KV cache (lr_kv_store, lr_attn_scores, lr_attn_values) for F32,
 *   F16 and Q8_0 caches: the same bits at every level, and a double reference (check_attention);
 * - the refusals: ggml Q8_0 / Q4_0 in lr_spmv, _IM in lr_dot_rows, float weights in lr_spmm, _IM
 *   shapes that are not whole groups and chunks, a missing scale table, an unsorted idx.
 * The integer kernels (_IM types; Q8_0 / Q4_0 rows) add exactly and scale in one fixed order, so
 * every level must give the scalar level's bits (both NaN counts as equal); float kernels must
 * agree within |a - b| <= 1e-4 * (1 + sum |terms|), terms being the products summed for that
 * output. The scalar level itself is checked against a double-precision reference computed here
 * from an independent decoding of the formats and, for the integer kernels, an independent 8-bit
 * quantization of x, within the same tolerance. lr_topk is checked exactly against a sort by |x|
 * descending, ties by lower index.
 * On AArch64 the NEON integer kernels have two paths, SDOT and baseline NEON: the first line says
 * which one this run uses (dotprod=yes|no); LAROSA_NO_DOTPROD=1 forces the baseline.
 *
 * Build: cc -O2 -std=c11 -D_GNU_SOURCE -pthread -I c_kernels tests/c/kernel_check.c \
 *           c_kernels/{kernels,qmatvec,qmatvec_x86,qmatvec_neon,simd_x86,simd_neon}.c -lm
 * Usage: kernel_check [seed] [-q] [--no-exhaustive]
 *   -q: print only failures and the summaries; --no-exhaustive: skip the checks of all 65536 fp16
 *   patterns (the slow part under emulation with sanitizers)
 * Output: one line per check ("PASS ..." / "FAIL ..."), then "LEVEL <name> checks=N failures=F" per
 * level and "SUMMARY levels=... checks=N failures=F". Exit status 0 only when everything passed.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "larosa.h"

#if defined(__aarch64__)
int lr_neon_dotprod(void);   /* qmatvec_neon.c: 1 when the NEON integer kernels use SDOT */
#endif

#define TOL 1e-4
#define GUARD 24                   /* floats past the end of every output buffer */
#define SENTINEL_BITS 0x7fc0dead   /* a NaN no kernel produces: marks "not written" */

static const char *LEVEL_NAME[4] = {"scalar", "avx2", "avx512", "neon"};
static const char *type_name(int32_t t) {
    switch (t) {
    case LR_F32: return "F32";
    case LR_F16: return "F16";
    case LR_Q8_0: return "Q8_0";
    case LR_Q4_0: return "Q4_0";
    case LR_Q8_0_IM: return "Q8_0_IM";
    case LR_Q4_0_IM: return "Q4_0_IM";
    default: return "?";
    }
}
static int is_im(int32_t t) { return t == LR_Q8_0_IM || t == LR_Q4_0_IM; }
static int is_float(int32_t t) { return t == LR_F32 || t == LR_F16; }

static int g_quiet = 0, g_exhaustive = 1;
static long g_checks[4], g_fail[4], g_other_checks, g_other_fail;

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

/* 64-byte aligned scratch (the integer kernels' acc / qgemm scratch) full of garbage */
static void *garbage_scratch(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    memset(p, 0xa5, (n + 63) / 64 * 64);
    return p;
}

/* ---- deterministic random numbers (splitmix64) ----------------------------------------------- */

static uint64_t g_rng;
static uint64_t rnd(void) {
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static int32_t rnd_below(int32_t n) { return (int32_t)(rnd() % (uint64_t)n); }
static float rnd_uniform(float lo, float hi) { return lo + (hi - lo) * (float)((double)(rnd() >> 40) * (1.0 / 16777216.0)); }

/* a random finite half: mostly moderate magnitudes, sometimes zero, subnormal or large */
static uint16_t rnd_half(int allow_large) {
    const uint16_t sign = (uint16_t)((rnd() & 1) << 15), mant = (uint16_t)(rnd() & 0x3ff);
    const int32_t u = rnd_below(32);
    uint16_t exp;
    if (u == 0) return sign;                                  /* +-0 */
    if (u == 1) exp = 0;                                      /* subnormal (or zero) */
    else if (u == 2 && allow_large) exp = (uint16_t)(21 + rnd_below(5));   /* up to 2^10 */
    else exp = (uint16_t)(8 + rnd_below(10));                 /* 2^-7 .. 2^2 */
    return (uint16_t)(sign | (exp << 10) | mant);
}

/* ---- an independent decoding of the formats, in double -------------------------------------- */

static double half_value(uint16_t h) {
    const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? ldexp((double)m, -24) : e < 31 ? ldexp((double)(1024 + m), e - 25) : m ? NAN : INFINITY;
    return (h & 0x8000) ? -v : v;
}

/* the byte layout weight() decodes (ggml's): 2-byte fp16 scale, then the quants */
_Static_assert(sizeof(block_q8_0) == 34 && sizeof(block_q4_0) == 18, "ggml block sizes");

/* W[r, c] as a double, straight from the bytes */
static double weight(const lr_tensor *w, int32_t r, int32_t c) {
    const uint8_t *base = (const uint8_t *)w->data;
    switch (w->type) {
    case LR_F32: {
        float f;
        memcpy(&f, base + ((size_t)r * (size_t)w->cols + (size_t)c) * 4, 4);
        return f;
    }
    case LR_F16: {
        uint16_t h;
        memcpy(&h, base + ((size_t)r * (size_t)w->cols + (size_t)c) * 2, 2);
        return half_value(h);
    }
    case LR_Q8_0: {
        const uint8_t *blk = base + ((size_t)r * (size_t)(w->cols / 32) + (size_t)(c / 32)) * 34;
        uint16_t d;
        memcpy(&d, blk, 2);
        return half_value(d) * (double)(int8_t)blk[2 + c % 32];
    }
    case LR_Q4_0: {   /* 2-byte scale, then 16 bytes: value t in the low nibble of byte t, 16 + t high */
        const uint8_t *blk = base + ((size_t)r * (size_t)(w->cols / 32) + (size_t)(c / 32)) * 18;
        uint16_t d;
        memcpy(&d, blk, 2);
        const int t = c % 32, q = t < 16 ? (blk[2 + t] & 0x0f) : (blk[2 + t - 16] >> 4);
        return half_value(d) * (double)(q - 8);
    }
    case LR_Q8_0_IM:    /* codes [rows][cols] int8; scales [rows / 32][cols] fp16 */
    case LR_Q4_0_IM: {  /* codes [rows][cols / 2]: per 64 columns 32 bytes, byte i = column i low
                           nibble, column 32 + i high nibble, each q + 8 */
        uint16_t d;
        memcpy(&d, (const uint8_t *)w->scale + ((size_t)(r / 32) * (size_t)w->cols + (size_t)c) * 2, 2);
        int q;
        if (w->type == LR_Q8_0_IM) {
            q = (int8_t)base[(size_t)r * (size_t)w->cols + (size_t)c];
        } else {
            const uint8_t b = base[(size_t)r * (size_t)(w->cols / 2) + (size_t)(c / 64) * 32 + (size_t)(c % 32)];
            q = (c % 64 < 32 ? b & 0x0f : b >> 4) - 8;
        }
        return half_value(d) * (double)q;
    }
    }
    return NAN;
}

/* x as the integer kernels take it, from the spec: per group of 32 values (the selected ones,
 * sel[i] != 0), dx = max |x| / 127 in float (NaN if one is not finite), q = x / dx rounded half to
 * even (in float, as x * (1 / dx)); xs[i] = dx * q in double, 0 where not selected */
static void quantize_ref(const float *x, int32_t n, const uint8_t *sel, double *xs) {
    for (int32_t g = 0; g < n / 32; g++) {
        float amax = 0.0f;
        int finite = 1;
        for (int32_t i = 32 * g; i < 32 * g + 32; i++) {
            if (!sel[i]) continue;
            const float a = fabsf(x[i]);
            if (!(a <= FLT_MAX)) finite = 0;
            else if (a > amax) amax = a;
        }
        const float dx = finite ? amax / 127.0f : NAN, inv = finite && dx > 0.0f ? 1.0f / dx : 0.0f;
        for (int32_t i = 32 * g; i < 32 * g + 32; i++) {
            float q = sel[i] ? nearbyintf(x[i] * inv) : 0.0f;
            q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
            xs[i] = sel[i] ? (double)dx * (double)q : 0.0;
        }
    }
}

/* ---- random tensors -------------------------------------------------------------------------- */

typedef struct {
    lr_tensor t;
    uint8_t *alloc, *salloc;
} matrix;

/* Data deliberately not vector-aligned (offset by one element; the struct fields of the quant
 * blocks and the fp16 scale tables need 2-byte alignment) and ending exactly at the end of its
 * allocation, so an address sanitizer build sees any read past the tensor or its scale table. */
static matrix make_matrix(int32_t type, int32_t rows, int32_t cols, int fill) {
    matrix m;
    const uint64_t nbytes = lr_row_bytes(type, cols) * (uint64_t)rows;
    const size_t off = type == LR_F32 ? 4 : is_im(type) ? 1 : 2;
    m.alloc = xmalloc(off + nbytes);
    uint8_t *p = m.alloc + off;
    const int64_t n = (int64_t)rows * cols;
    if (!fill) {
        memset(p, 0, nbytes);
    } else if (type == LR_F32) {
        for (int64_t i = 0; i < n; i++) {
            const float f = rnd_uniform(-2.0f, 2.0f);
            memcpy(p + 4 * i, &f, 4);
        }
    } else if (type == LR_F16) {
        for (int64_t i = 0; i < n; i++) {
            const uint16_t h = rnd_half(1);
            memcpy(p + 2 * i, &h, 2);
        }
    } else if (is_im(type)) {   /* any codes (Q8: -128 included) */
        for (uint64_t i = 0; i < nbytes; i++) p[i] = (uint8_t)rnd();
    } else {   /* any quant bytes, a fresh fp16 scale for every block */
        for (uint64_t i = 0; i < nbytes; i++) p[i] = (uint8_t)rnd();
        const size_t bsz = type == LR_Q8_0 ? 34 : 18;
        for (int64_t b = 0; b < n / 32; b++) {
            const uint16_t h = rnd_half(0);
            memcpy(p + (size_t)b * bsz, &h, 2);
        }
    }
    m.t.type = type;
    m.t.rows = rows;
    m.t.cols = cols;
    m.t.data = p;
    m.t.nbytes = nbytes;
    m.t.scale = NULL;
    m.t.scale_nbytes = 0;
    m.salloc = NULL;
    if (is_im(type)) {   /* a random finite scale per (group, output) */
        const uint64_t sn = (uint64_t)(rows / 32) * (uint64_t)cols * 2;
        m.salloc = xmalloc(2 + sn);
        for (uint64_t i = 0; i < sn / 2; i++) {
            const uint16_t h = fill ? rnd_half(0) : 0;
            memcpy(m.salloc + 2 + 2 * i, &h, 2);
        }
        m.t.scale = m.salloc + 2;
        m.t.scale_nbytes = sn;
    }
    return m;
}

static void free_matrix(matrix *m) {
    free(m->alloc);
    free(m->salloc);
}

static float *make_vector(int32_t n) {
    float *x = xmalloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int32_t i = 0; i < n; i++) x[i] = rnd_below(64) == 0 ? 0.0f : rnd_uniform(-1.5f, 1.5f);
    return x;
}

static void fill_sentinel(float *y, int64_t n) {
    const uint32_t bits = SENTINEL_BITS;
    for (int64_t i = 0; i < n; i++) memcpy(&y[i], &bits, 4);
}

static float *make_output(int64_t n) {   /* n floats + GUARD, all set to the sentinel */
    float *y = xmalloc(sizeof(float) * (size_t)(n + GUARD));
    fill_sentinel(y, n + GUARD);
    return y;
}

static uint32_t bits_of(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}
static int is_sentinel(float v) { return bits_of(v) == SENTINEL_BITS; }
/* the same result: the same bits, or both NaN (payloads may differ between instructions) */
static int same_bits(float a, float b) { return bits_of(a) == bits_of(b) || (isnan(a) && isnan(b)); }

/* a random ascending subset of k of the rows 0..n-1 (perm: a permutation of them) */
static void subset(const int32_t *perm, int32_t k, int32_t *idx) {
    memcpy(idx, perm, sizeof(int32_t) * (size_t)k);
    for (int32_t i = 1; i < k; i++)   /* insertion sort */
        for (int32_t j = i; j > 0 && idx[j - 1] > idx[j]; j--) {
            const int32_t t = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = t;
        }
}

static int32_t *make_perm(int32_t n) {
    int32_t *perm = xmalloc(sizeof(int32_t) * (size_t)n);
    for (int32_t i = 0; i < n; i++) perm[i] = i;
    for (int32_t i = n - 1; i > 0; i--) {   /* Fisher-Yates */
        const int32_t j = rnd_below(i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    return perm;
}

/* ---- comparison ------------------------------------------------------------------------------ */

/* Compares got[lo:hi) with want (bit for bit when exact, else relative to mag, the sum of |terms|)
 * and with the double reference ref (relative to mag), either of which may be NULL, and checks that
 * got is still the sentinel outside [lo, hi) up to n + GUARD. Returns 0 on success, else fills why.
 * err receives the worst |got - want| / (1 + mag). */
static int compare(const float *got, const float *want, const double *ref, const double *mag, int32_t n,
                   int32_t lo, int32_t hi, int exact, double *err, char *why, size_t why_len) {
    *err = 0.0;
    for (int32_t i = 0; i < n + GUARD; i++) {
        if (i >= lo && i < hi) continue;
        if (!is_sentinel(got[i])) {
            snprintf(why, why_len, "wrote y[%d] outside [%d, %d) (n=%d)", i, lo, hi, n);
            return 1;
        }
    }
    for (int32_t i = lo; i < hi; i++) {
        if (is_sentinel(got[i])) {
            snprintf(why, why_len, "y[%d] not written", i);
            return 1;
        }
        const double bound = TOL * (1.0 + mag[i]);
        const double d = want ? fabs((double)got[i] - (double)want[i]) : 0.0;
        const double dr = ref ? fabs((double)got[i] - ref[i]) : 0.0;
        if (!(d <= bound) || !(dr <= bound) || (exact && want && !same_bits(got[i], want[i]))) {
            snprintf(why, why_len, "y[%d] = %.9g (0x%08x), scalar %.9g (0x%08x), exact %.9g, bound %.3g%s", i,
                     (double)got[i], (unsigned)bits_of(got[i]), want ? (double)want[i] : NAN,
                     want ? (unsigned)bits_of(want[i]) : 0u, ref ? ref[i] : NAN, bound,
                     exact ? " (bits must match)" : "");
            return 1;
        }
        const double e = (d > dr ? d : dr) / (1.0 + mag[i]);
        if (e > *err) *err = e;
    }
    return 0;
}

static void report(int32_t level, int failed, const char *what, double err, const char *why) {
    g_checks[level]++;
    if (failed) g_fail[level]++;
    if (failed)
        printf("FAIL level=%s %s: %s\n", LEVEL_NAME[level], what, why);
    else if (!g_quiet)
        printf("PASS level=%s %s err=%.2e\n", LEVEL_NAME[level], what, err);
}

static void report_other(int failed, const char *what, const char *why) {
    g_other_checks++;
    if (failed) g_other_fail++;
    if (failed)
        printf("FAIL %s: %s\n", what, why);
    else if (!g_quiet)
        printf("PASS %s\n", what);
}

/* ---- the checks ------------------------------------------------------------------------------ */

static int32_t g_levels[4], g_nlevels;   /* g_levels[0] is the scalar level */

static void use_level(int32_t level) {
    if (lr_set_simd(level) != LR_OK || lr_get_simd() != level) {
        printf("FAIL cannot switch to level %s\n", LEVEL_NAME[level]);
        exit(1);
    }
}

/* the double reference of lr_spmv over the k rows idx (NULL: all): y[c] = sum xs[i] W[i, c], with
 * xs = x (float types) or x quantized as the integer kernels take it */
static void ref_spmv(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, double *ref, double *mag) {
    const int32_t rows = w->rows;
    uint8_t *sel = xmalloc((size_t)rows);
    double *xs = xmalloc(sizeof(double) * (size_t)rows);
    memset(sel, 0, (size_t)rows);
    for (int32_t j = 0; j < k; j++) sel[idx ? idx[j] : j] = 1;
    if (is_im(w->type)) quantize_ref(x, rows, sel, xs);
    else for (int32_t i = 0; i < rows; i++) xs[i] = sel[i] ? (double)x[i] : 0.0;
    for (int32_t c = 0; c < w->cols; c++) {
        double s = 0.0, a = 0.0;
        for (int32_t j = 0; j < k; j++) {
            const int32_t i = idx ? idx[j] : j;
            const double term = xs[i] * weight(w, i, c);
            s += term;
            a += fabs(term);
        }
        ref[c] = s;
        mag[c] = a;
    }
    free(sel);
    free(xs);
}

/* the scalar level's output goes to want, the others' to got */
static float *level_out(int32_t level, float *want, float *got, int64_t n) {
    float *out = level == LR_SIMD_SCALAR ? want : got;
    fill_sentinel(out, n + GUARD);
    return out;
}

/* idx modes: k rows of a random ascending subset, or NULL for all rows */
enum { K_ZERO, K_ONE, K_RANDOM, K_ALL_IDX, K_DENSE, K_MODES };
static const char *KMODE_NAME[K_MODES] = {"k=0", "k=1", "k=random", "k=rows", "idx=NULL"};

static void check_spmv(int32_t type, int32_t rows, int32_t cols) {
    matrix m = make_matrix(type, rows, cols, 1);
    float *x = make_vector(rows);
    int32_t *perm = make_perm(rows), *idx = xmalloc(sizeof(int32_t) * (size_t)rows);
    double *ref = xmalloc(sizeof(double) * (size_t)cols), *mag = xmalloc(sizeof(double) * (size_t)cols);
    float *want = make_output(cols), *got = make_output(cols);
    const int exact = !is_float(type);
    char what[160], why[240];
    double err = 0.0;
    for (int mode = 0; mode < K_MODES; mode++) {
        const int32_t k = mode == K_ZERO ? 0 : mode == K_ONE ? 1 : mode == K_RANDOM ? 1 + rnd_below(rows) : rows;
        subset(perm, k, idx);
        const int32_t *ip = mode == K_DENSE ? NULL : idx;
        ref_spmv(&m.t, x, ip, k, ref, mag);
        for (int32_t li = 0; li < g_nlevels; li++) {
            const int32_t level = g_levels[li];
            float *out = level_out(level, want, got, cols);
            use_level(level);
            snprintf(what, sizeof what, "lr_spmv %s rows=%d cols=%d %s (k=%d)", type_name(type), rows, cols,
                     KMODE_NAME[mode], k);
            const int32_t rc = lr_spmv(&m.t, x, ip, k, out);
            int failed = rc != LR_OK;
            if (failed) snprintf(why, sizeof why, "returned %d", rc);
            else failed = compare(out, level == LR_SIMD_SCALAR ? NULL : want, ref, mag, cols, 0, cols, exact, &err,
                                  why, sizeof why);
            for (int32_t c = 0; !failed && k == 0 && c < cols; c++)   /* nothing selected: exactly zero */
                if (bits_of(out[c]) != 0) {
                    failed = 1;
                    snprintf(why, sizeof why, "k=0: y[%d] = %.9g, not +0", c, (double)out[c]);
                }
            report(level, failed, what, err, why);
        }
    }
    /* the column slices of the threaded forward pass, through the kernel tables, split into 2 and 3
     * parts the way forward.c does: float weights in multiples of 32 (the last part ending at cols),
     * the integer kernels in whole chunks of 64 (x quantized once, lr_qsel) */
    const int32_t k = 1 + rnd_below(rows);
    subset(perm, k, idx);
    ref_spmv(&m.t, x, idx, k, ref, mag);
    lr_qsel s;
    void *sbuf = is_im(type) ? lr_qsel_new(rows, &s) : NULL;
    if (is_im(type) && !sbuf) { fprintf(stderr, "out of memory\n"); exit(2); }
    if (is_im(type)) lr_qsel_build(x, idx, k, &s);
    for (int nth = 2; nth <= 3; nth++) {
        for (int ith = 0; ith < nth; ith++) {
            int32_t c0, c1;
            if (is_im(type)) {
                const int32_t chunks = cols / 64;
                c0 = chunks * ith / nth * 64, c1 = chunks * (ith + 1) / nth * 64;
            } else {
                const int32_t units = (cols + QK - 1) / QK, per = (units + nth - 1) / nth;
                c0 = ith * per * QK, c1 = (ith + 1) * per * QK;
                if (c1 > cols) c1 = cols;
            }
            if (c0 >= c1) continue;
            snprintf(what, sizeof what, "%s %s rows=%d cols=%d k=%d c=[%d,%d)", is_im(type) ? "qspmv slice" : "spmv slice",
                     type_name(type), rows, cols, k, c0, c1);
            for (int32_t li = 0; li < g_nlevels; li++) {
                const int32_t level = g_levels[li];
                float *out = level_out(level, want, got, cols);
                use_level(level);
                if (is_im(type)) {
                    int32_t *acc = garbage_scratch((size_t)(c1 - c0) * sizeof(int32_t));
                    lr_qkernels()->qspmv[lr_type_slot(type)](&m.t, &s, out, c0, c1, acc);
                    free(acc);
                } else {
                    lr_kernels()->spmv[lr_type_slot(type)](&m.t, x, idx, k, out, c0, c1);
                }
                const int failed = compare(out, level == LR_SIMD_SCALAR ? NULL : want, ref, mag, cols, c0, c1, exact,
                                           &err, why, sizeof why);
                report(level, failed, what, err, why);
            }
        }
    }
    free(sbuf);
    free_matrix(&m);
    free(x);
    free(perm);
    free(idx);
    free(ref);
    free(mag);
    free(want);
    free(got);
}

/* lr_spmm of n tokens against lr_spmv of each, and the qgemm column slices of the prompt path */
static void check_spmm(int32_t type, int32_t rows, int32_t cols, int32_t n) {
    matrix m = make_matrix(type, rows, cols, 1);
    float *X = xmalloc(sizeof(float) * (size_t)n * (size_t)rows);
    uint8_t *mask = xmalloc((size_t)n * (size_t)rows);
    int32_t *idx = xmalloc(sizeof(int32_t) * (size_t)rows);
    for (int32_t t = 0; t < n; t++) {   /* each token its own magnitude and density */
        const float scale = ldexpf(1.0f, rnd_below(20) - 10);
        const int32_t density = 1 + rnd_below(100);
        for (int32_t i = 0; i < rows; i++) {
            X[(size_t)t * rows + i] = scale * rnd_uniform(-1.5f, 1.5f);
            mask[(size_t)t * rows + i] = t == 0 ? 1 : t == 1 || t == 2 ? 0 : rnd_below(100) < density;
        }
    }
    if (n > 1) mask[(size_t)rows + rnd_below(rows)] = 1;   /* token 1: one input; token 2: none */
    const int64_t ny = (int64_t)n * cols, ldy = cols + 64, nb = (int64_t)n * ldy;
    float *want = make_output(ny), *got = make_output(ny), *ys = make_output(ny), *yb = make_output(nb);
    lr_qbatch b;
    void *bbuf = lr_qbatch_new(n, rows, &b);
    if (!bbuf) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (int32_t t = 0; t < n; t++) lr_qbatch_row(&b, t, rows, X + (size_t)t * rows, mask + (size_t)t * rows);
    char what[160], why[240] = "";
    for (int32_t li = 0; li < g_nlevels; li++) {
        const int32_t level = g_levels[li];
        use_level(level);
        float *Y = level_out(level, want, got, ny);
        fill_sentinel(ys, ny + GUARD);
        int32_t rc = lr_spmm(&m.t, X, mask, n, Y);
        int failed = rc != LR_OK;
        if (failed) snprintf(why, sizeof why, "lr_spmm returned %d", rc);
        for (int32_t t = 0; !failed && t < n; t++) {
            int32_t k = 0;
            for (int32_t i = 0; i < rows; i++)
                if (mask[(size_t)t * rows + i]) idx[k++] = i;
            rc = lr_spmv(&m.t, X + (size_t)t * rows, idx, k, ys + (size_t)t * cols);
            if (rc != LR_OK) {
                failed = 1;
                snprintf(why, sizeof why, "lr_spmv of token %d returned %d", t, rc);
            }
        }
        for (int64_t i = 0; !failed && i < ny + GUARD; i++) {
            const int bad = i >= ny ? !is_sentinel(Y[i])
                          : !same_bits(Y[i], ys[i]) || (level != LR_SIMD_SCALAR && !same_bits(Y[i], want[i]));
            if (bad) {
                failed = 1;
                snprintf(why, sizeof why, "Y[%d][%d] = %.9g (0x%08x), lr_spmv %.9g (0x%08x), scalar %.9g (0x%08x)",
                         (int)(i / cols), (int)(i % cols), (double)Y[i], (unsigned)bits_of(Y[i]), (double)ys[i],
                         (unsigned)bits_of(ys[i]), (double)want[i], (unsigned)bits_of(want[i]));
            }
        }
        snprintf(what, sizeof what, "lr_spmm %s rows=%d cols=%d n=%d", type_name(type), rows, cols, n);
        report(level, failed, what, 0.0, why);
        /* the column slices of the prompt path (prefill.c), into rows ldy > cols apart */
        void *scratch = garbage_scratch((size_t)lr_qgemm_scratch(cols));
        for (int nth = 2; nth <= 3; nth++) {
            for (int ith = 0; ith < nth; ith++) {
                const int32_t chunks = cols / 64, c0 = chunks * ith / nth * 64, c1 = chunks * (ith + 1) / nth * 64;
                if (c0 >= c1) continue;
                fill_sentinel(yb, nb + GUARD);
                lr_qkernels()->qgemm[lr_type_slot(type)](&m.t, &b, yb, (int32_t)ldy, c0, c1, scratch);
                failed = 0;
                for (int64_t i = 0; !failed && i < nb + GUARD; i++) {
                    const int64_t t = i / ldy, c = i % ldy;
                    const int inside = t < n && c >= c0 && c < c1;
                    if (inside ? !same_bits(yb[i], want[t * cols + c]) : !is_sentinel(yb[i])) {
                        failed = 1;
                        snprintf(why, sizeof why, "Y[%d][%d] = %.9g (0x%08x), %s", (int)t, (int)c, (double)yb[i],
                                 (unsigned)bits_of(yb[i]), inside ? "not the scalar lr_spmm's bits" : "outside the slice");
                    }
                }
                snprintf(what, sizeof what, "qgemm slice %s rows=%d cols=%d n=%d c=[%d,%d) ldy=%d", type_name(type),
                         rows, cols, n, c0, c1, (int)ldy);
                report(level, failed, what, 0.0, why);
            }
        }
        free(scratch);
    }
    free(bbuf);
    free_matrix(&m);
    free(X);
    free(mask);
    free(idx);
    free(want);
    free(got);
    free(ys);
    free(yb);
}

static void check_dot(int32_t type, int32_t rows, int32_t cols) {
    matrix m = make_matrix(type, rows, cols, 1);
    float *x = make_vector(cols);
    double *ref = xmalloc(sizeof(double) * (size_t)rows), *mag = xmalloc(sizeof(double) * (size_t)rows);
    double *xs = xmalloc(sizeof(double) * (size_t)cols);
    uint8_t *all = xmalloc((size_t)cols);
    float *want = make_output(rows), *got = make_output(rows);
    const int quant = !is_float(type);
    memset(all, 1, (size_t)cols);
    if (quant) quantize_ref(x, cols, all, xs);
    else for (int32_t c = 0; c < cols; c++) xs[c] = x[c];
    for (int32_t r = 0; r < rows; r++) {
        double s = 0.0, a = 0.0;
        for (int32_t c = 0; c < cols; c++) {
            const double term = weight(&m.t, r, c) * xs[c];
            s += term;
            a += fabs(term);
        }
        ref[r] = s;
        mag[r] = a;
    }
    /* x of the integer kernels, as the head hands it (codes, scales, the blocks' sums) */
    int8_t *xq = xmalloc((size_t)cols);
    float *dx = xmalloc(sizeof(float) * (size_t)(cols / QK + 1));
    int32_t *sx = xmalloc(sizeof(int32_t) * (size_t)(cols / QK + 1));
    if (quant) lr_quantize_blocks(x, cols, xq, dx, sx);
    const lr_qx qx = {xq, dx, sx};
    /* the whole tensor through lr_dot_rows, then row slices [r0, r1) through the table */
    int32_t ranges[4][2] = {{0, rows}, {0, rows / 2}, {rows / 2, rows}, {rows / 3, rows - rows / 3}};
    for (int ri = 0; ri < 4; ri++) {
        const int32_t r0 = ranges[ri][0], r1 = ranges[ri][1];
        if (ri > 0 && (r0 >= r1 || rows < 3)) continue;
        char what[160], why[240];
        double err = 0.0;
        for (int32_t li = 0; li < g_nlevels; li++) {
            const int32_t level = g_levels[li];
            float *out = level_out(level, want, got, rows);
            use_level(level);
            int failed = 0;
            if (ri == 0) {
                snprintf(what, sizeof what, "lr_dot_rows %s rows=%d cols=%d", type_name(type), rows, cols);
                const int32_t rc = lr_dot_rows(&m.t, x, out);
                if (rc != LR_OK) {
                    failed = 1;
                    snprintf(why, sizeof why, "returned %d", rc);
                }
            } else {
                snprintf(what, sizeof what, "%s %s rows=%d cols=%d r=[%d,%d)", quant ? "qdot slice" : "dot_rows slice",
                         type_name(type), rows, cols, r0, r1);
                if (quant) lr_qkernels()->qdot[lr_type_slot(type)](&m.t, &qx, out, r0, r1);
                else lr_kernels()->dot_rows[lr_type_slot(type)](&m.t, x, out, r0, r1);
            }
            if (!failed)
                failed = compare(out, level == LR_SIMD_SCALAR ? NULL : want, ref, mag, rows, r0, r1, quant, &err, why,
                                 sizeof why);
            report(level, failed, what, err, why);
        }
    }
    /* the head's kernels over rows repacked 8 at a time (lr_repack_x8), groups [g0, g1): the same
     * bits as the scalar qdot8 and as qdot on the rows as stored, at every level that has them */
    if (quant && rows >= 8) {
        void *w8 = xmalloc((size_t)lr_x8_bytes(&m.t));
        lr_repack_x8(&m.t, w8);
        const int32_t G = rows / 8, granges[3][2] = {{0, G}, {0, G / 2}, {G / 2, G}};
        use_level(LR_SIMD_SCALAR);
        lr_qkernels()->qdot[lr_type_slot(type)](&m.t, &qx, want, 0, rows);   /* rows as stored */
        for (int gi = 0; gi < 3; gi++) {
            const int32_t g0 = granges[gi][0], g1 = granges[gi][1];
            if (g0 >= g1) continue;
            for (int32_t li = 0; li < g_nlevels; li++) {
                const int32_t level = g_levels[li];
                use_level(level);
                const qdot8_fn dot8 = lr_qkernels()->qdot8[lr_type_slot(type)];
                char what[160], why[240];
                double err = 0.0;
                fill_sentinel(got, rows + GUARD);
                if (dot8) dot8(&m.t, w8, &qx, got, g0, g1);
                else lr_qkernels()->qdot[lr_type_slot(type)](&m.t, &qx, got, 8 * g0, 8 * g1);   /* as the head runs there */
                snprintf(what, sizeof what, "qdot8%s %s rows=%d cols=%d g=[%d,%d)", dot8 ? "" : " (rows as stored)",
                         type_name(type), rows, cols, g0, g1);
                const int failed = compare(got, want, ref, mag, rows, 8 * g0, 8 * g1, 1, &err, why, sizeof why);
                report(level, failed, what, err, why);
            }
        }
        free(w8);
    }
    free_matrix(&m);
    free(x);
    free(xs);
    free(all);
    free(xq);
    free(dx);
    free(sx);
    free(ref);
    free(mag);
    free(want);
    free(got);
}

/* ---- NaN and Inf inputs ------------------------------------------------------------------------
 * A non-finite input that is read makes every output non-finite: the float kernels through
 * inf * w and NaN * w, the integer ones through the scale of its group (dx = NaN), so every output
 * is NaN, even where the codes are zero. One that is not read (not selected) changes nothing: the
 * result has the bits it has with that input set to 0. */

static int all_nonfinite(const float *y, int32_t n, int nan_only) {
    for (int32_t i = 0; i < n; i++)
        if (nan_only ? !isnan(y[i]) : isfinite(y[i])) return 0;
    return 1;
}

static void check_nonfinite(void) {
    static const int32_t spmv_types[] = {LR_F32, LR_F16, LR_Q8_0_IM, LR_Q4_0_IM};
    static const int32_t dot_types[] = {LR_F32, LR_F16, LR_Q8_0, LR_Q4_0};
    static const float bads[2] = {NAN, INFINITY};
    const int32_t rows = 64, bad_at = 40;
    for (int b = 0; b < 2; b++) {
        const char *bad_name = b ? "Inf" : "NaN";
        for (int ti = 0; ti < 4; ti++) {   /* lr_spmv: dense, then rows 0..31 (bad_at not read) */
            const int32_t type = spmv_types[ti], cols = is_im(type) ? 128 : 77;
            matrix m = make_matrix(type, rows, cols, 1);
            float *x = make_vector(rows), *y = make_output(cols), *y0 = make_output(cols);
            float *want = make_output(cols);
            int32_t idx[32];
            for (int32_t i = 0; i < 32; i++) idx[i] = i;
            char what[160], why[240] = "";
            for (int32_t li = 0; li < g_nlevels; li++) {
                const int32_t level = g_levels[li];
                use_level(level);
                int failed = 0;
                x[bad_at] = bads[b];
                const int32_t rc = lr_spmv(&m.t, x, NULL, rows, y);
                if (rc != LR_OK || !all_nonfinite(y, cols, is_im(type))) {
                    failed = 1;
                    snprintf(why, sizeof why, "rc %d, y[0] = %g: a %s input read must make every output %s", rc,
                             (double)y[0], bad_name, is_im(type) ? "NaN" : "non-finite");
                }
                if (!failed && level == LR_SIMD_SCALAR) memcpy(want, y, sizeof(float) * (size_t)cols);
                for (int32_t c = 0; !failed && is_im(type) && c < cols; c++)
                    if (!same_bits(y[c], want[c])) failed = 1, snprintf(why, sizeof why, "y[%d] differs from scalar", c);
                const int32_t rc1 = lr_spmv(&m.t, x, idx, 32, y);
                x[bad_at] = 0.0f;
                const int32_t rc0 = lr_spmv(&m.t, x, idx, 32, y0);
                for (int32_t c = 0; !failed && c < cols; c++)
                    if (rc1 != LR_OK || rc0 != LR_OK || !isfinite(y[c]) || bits_of(y[c]) != bits_of(y0[c])) {
                        failed = 1;
                        snprintf(why, sizeof why, "input %d not selected: y[%d] = %g, with it 0: %g", bad_at, c,
                                 (double)y[c], (double)y0[c]);
                    }
                snprintf(what, sizeof what, "nonfinite lr_spmv %s %s input", type_name(type), bad_name);
                report(level, failed, what, 0.0, why);
            }
            if (is_im(type)) {   /* lr_spmm: token 0 reads the bad input, token 1 does not */
                float X[2 * 64];
                uint8_t mask[2 * 64];
                float *Y = make_output(2 * cols);
                memcpy(X, x, sizeof(float) * 64);
                memcpy(X + 64, x, sizeof(float) * 64);
                X[bad_at] = X[64 + bad_at] = bads[b];
                for (int32_t i = 0; i < 64; i++) mask[i] = 1, mask[64 + i] = i < 32;
                for (int32_t li = 0; li < g_nlevels; li++) {
                    const int32_t level = g_levels[li];
                    use_level(level);
                    x[bad_at] = 0.0f;
                    const int32_t rc = lr_spmm(&m.t, X, mask, 2, Y), rc0 = lr_spmv(&m.t, x, idx, 32, y0);
                    int failed = rc != LR_OK || rc0 != LR_OK || !all_nonfinite(Y, cols, 1);
                    for (int32_t c = 0; !failed && c < cols; c++) failed = bits_of(Y[cols + c]) != bits_of(y0[c]);
                    snprintf(why, sizeof why, "token 0 must be all NaN, token 1 lr_spmv's (rc %d)", rc);
                    snprintf(what, sizeof what, "nonfinite lr_spmm %s %s input", type_name(type), bad_name);
                    report(level, failed, what, 0.0, why);
                }
                free(Y);
            }
            free_matrix(&m);
            free(x);
            free(y);
            free(y0);
            free(want);
        }
        for (int ti = 0; ti < 4; ti++) {   /* lr_dot_rows: every row reads every input */
            const int32_t type = dot_types[ti], cols = is_float(type) ? 77 : 96, drows = 9;
            matrix m = make_matrix(type, drows, cols, 1);
            float *x = make_vector(cols), *y = make_output(drows);
            x[cols - 3] = bads[b];
            char what[160], why[240] = "";
            for (int32_t li = 0; li < g_nlevels; li++) {
                const int32_t level = g_levels[li];
                use_level(level);
                const int32_t rc = lr_dot_rows(&m.t, x, y);
                const int failed = rc != LR_OK || !all_nonfinite(y, drows, !is_float(type));
                snprintf(why, sizeof why, "rc %d, y[0] = %g: a %s input must make every row %s", rc, (double)y[0],
                         bad_name, is_float(type) ? "non-finite" : "NaN");
                snprintf(what, sizeof what, "nonfinite lr_dot_rows %s %s input", type_name(type), bad_name);
                report(level, failed, what, 0.0, why);
            }
            free_matrix(&m);
            free(x);
            free(y);
        }
    }
}

/* ---- refusals --------------------------------------------------------------------------------- */

static void expect_rc(const char *what, int32_t rc, int32_t want) {
    char why[80];
    snprintf(why, sizeof why, "returned %d, expected %d", rc, want);
    report_other(rc != want, what, why);
}

static void check_refusals(void) {
    float x[128] = {0}, y[128 + 64];
    uint8_t mask[64];
    memset(mask, 1, sizeof mask);
    const int32_t unsorted[2] = {3, 2};
    matrix q8 = make_matrix(LR_Q8_0, 64, 64, 1), im = make_matrix(LR_Q8_0_IM, 64, 128, 1);
    matrix f16 = make_matrix(LR_F16, 64, 64, 1);
    expect_rc("lr_spmv Q8_0 (ggml, output-major) -> LR_ETYPE", lr_spmv(&q8.t, x, NULL, 64, y), LR_ETYPE);
    q8.t.type = LR_Q4_0, q8.t.nbytes = 64 * 2 * 18;
    expect_rc("lr_spmv Q4_0 (ggml, output-major) -> LR_ETYPE", lr_spmv(&q8.t, x, NULL, 64, y), LR_ETYPE);
    expect_rc("lr_dot_rows Q8_0_IM -> LR_ETYPE", lr_dot_rows(&im.t, x, y), LR_ETYPE);
    expect_rc("lr_spmm F16 -> LR_ETYPE", lr_spmm(&f16.t, x, mask, 1, y), LR_ETYPE);
    expect_rc("lr_spmv unsorted idx -> LR_ERANGE", lr_spmv(&im.t, x, unsorted, 2, y), LR_ERANGE);
    expect_rc("lr_spmm n=0 -> LR_ERANGE", lr_spmm(&im.t, x, mask, 0, y), LR_ERANGE);
    expect_rc("lr_spmm n=65 -> LR_ERANGE", lr_spmm(&im.t, x, mask, LR_QGEMM_TOKENS + 1, y), LR_ERANGE);
    lr_tensor t = im.t;
    t.cols = 96, t.nbytes = 64 * 96, t.scale_nbytes = 2 * 96 * 2;                  /* not whole chunks of 64 */
    expect_rc("lr_spmv Q8_0_IM cols=96 -> LR_ESHAPE", lr_spmv(&t, x, NULL, 64, y), LR_ESHAPE);
    t = im.t;
    t.rows = 48, t.nbytes = 48 * 128, t.scale_nbytes = 128 * 2;                    /* not whole groups of 32 */
    expect_rc("lr_spmv Q8_0_IM rows=48 -> LR_ESHAPE", lr_spmv(&t, x, NULL, 48, y), LR_ESHAPE);
    t = im.t;
    t.scale = NULL;
    expect_rc("lr_spmv Q8_0_IM without scales -> LR_ESHAPE", lr_spmv(&t, x, NULL, 64, y), LR_ESHAPE);
    t = im.t;
    t.scale_nbytes -= 2;
    expect_rc("lr_spmv Q8_0_IM short scale table -> LR_ESHAPE", lr_spmv(&t, x, NULL, 64, y), LR_ESHAPE);
    t = im.t;
    t.type = LR_Q4_0_IM;                                                            /* the Q8 size */
    expect_rc("lr_spmv Q4_0_IM with Q8 bytes -> LR_ESHAPE", lr_spmv(&t, x, NULL, 64, y), LR_ESHAPE);
    free_matrix(&q8);
    free_matrix(&im);
    free_matrix(&f16);
}

/* ---- exact decoding of every fp16 pattern ------------------------------------------------------
 * The relative tolerance above cannot see a wrong subnormal (|h| < 2^-14), so the half decoders
 * are checked bit for bit, with inputs that make the result exact in any order:
 * - F16 spmv: one row, x = 1: y = 0 + 1 * W[0, c].
 * - _IM spmv: every half is the scale of one column (32 rows, group 0); x = 127 at row 0 (codes 0)
 *   and 1 at row 1, so dx = 1 and xq = x: y = fmaf(q, d * 1, 0) = d q exactly (19 bits), inf and
 *   NaN included (inf * 0 = NaN as in double).
 * - dot_rows: every finite half once, as the only nonzero of its row (F16) or as the scale of every
 *   block of its row with one quant 1 (Q8_0 / Q4_0), against x = 127 at the first column of each
 *   block and 1 elsewhere (again dx = 1): y = h x_c exactly. */

static int same_value(float got, double want) {
    return isnan(want) ? isnan(got) : (double)got == want;
}

/* y against want over n values and the sentinel past them */
static int check_exact(const float *y, const double *want, int32_t n, int32_t rc, char *why, size_t len) {
    if (rc != LR_OK) {
        snprintf(why, len, "returned %d", rc);
        return 1;
    }
    for (int32_t c = 0; c < n; c++)
        if (!same_value(y[c], want[c])) {
            snprintf(why, len, "y[%d] = %.9g, exact %.9g", c, (double)y[c], want[c]);
            return 1;
        }
    for (int32_t c = n; c < n + GUARD; c++)
        if (!is_sentinel(y[c])) {
            snprintf(why, len, "wrote y[%d] past the end", c);
            return 1;
        }
    return 0;
}

static void check_exact_spmv(int32_t type) {
    const int32_t n = 65536, rows = type == LR_F16 ? 1 : 32, cols = n;
    matrix m = make_matrix(type, rows, cols, 0);
    uint8_t *p = (uint8_t *)m.t.data;
    float *x = xmalloc(sizeof(float) * (size_t)rows);
    for (int32_t i = 0; i < rows; i++) x[i] = 0.0f;
    if (type == LR_F16) {
        for (int32_t h = 0; h < n; h++) {
            const uint16_t hb = (uint16_t)h;
            memcpy(p + 2 * (size_t)h, &hb, 2);
        }
        x[0] = 1.0f;
    } else {
        for (int32_t h = 0; h < n; h++) {   /* group 0's scale of column h is h */
            const uint16_t hb = (uint16_t)h;
            memcpy((uint8_t *)m.t.scale + 2 * (size_t)h, &hb, 2);
        }
        const size_t rb = lr_row_bytes(type, cols);
        for (size_t i = 0; i < rb; i++) {
            /* row 0: zero codes; row 1: Q8 codes -128, 127, -16..15 along the columns, Q4 every
             * nibble value; the rest (x = 0) random */
            p[i] = type == LR_Q8_0_IM ? 0 : 0x88;
            p[rb + i] = type == LR_Q8_0_IM ? (uint8_t)(int8_t)(i % 32 == 0 ? -128 : i % 32 == 1 ? 127 : (int)(i % 32) - 16)
                                           : (uint8_t)((i % 16) | ((15 - i % 16) << 4));
        }
        for (size_t i = 2 * rb; i < rb * (size_t)rows; i++) p[i] = (uint8_t)rnd();
        x[0] = 127.0f;
        x[1] = 1.0f;
    }
    double *want = xmalloc(sizeof(double) * (size_t)cols);
    float *y = make_output(cols);
    for (int32_t c = 0; c < cols; c++) want[c] = weight(&m.t, type == LR_F16 ? 0 : 1, c);
    const int32_t idx[2] = {0, 1}, k = type == LR_F16 ? 1 : 2;
    for (int32_t li = 0; li < g_nlevels; li++) {
        const int32_t level = g_levels[li];
        use_level(level);
        for (int dense = 0; dense < 2; dense++) {
            char what[160], why[200] = "";
            fill_sentinel(y, cols + GUARD);
            const int32_t rc = lr_spmv(&m.t, x, dense ? NULL : idx, dense ? rows : k, y);
            const int failed = check_exact(y, want, cols, rc, why, sizeof why);
            snprintf(what, sizeof what, "exact halves: lr_spmv %s, all 65536 %s, %s", type_name(type),
                     type == LR_F16 ? "values" : "scales", dense ? "idx=NULL" : type == LR_F16 ? "k=1" : "k=2");
            report(level, failed, what, 0.0, why);
        }
    }
    free_matrix(&m);
    free(x);
    free(want);
    free(y);
}

static void check_exact_dot(int32_t type) {
    const int32_t cols = type == LR_F16 ? 40 : 96, rows = 63488;   /* the finite halves */
    matrix m = make_matrix(type, rows, cols, 0);
    uint8_t *p = (uint8_t *)m.t.data;
    int32_t r = 0;
    for (int32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 0x1f) == 0x1f) continue;
        const uint16_t hb = (uint16_t)h;
        const int32_t c = (int32_t)((r * 7) % cols);
        if (type == LR_F16) {
            memcpy(p + ((size_t)r * (size_t)cols + (size_t)c) * 2, &hb, 2);
        } else {   /* all scales of the row are h; one nonzero quant (1) at column c */
            const size_t bsz = type == LR_Q8_0 ? 34 : 18;
            uint8_t *row = p + (size_t)r * (size_t)(cols / QK) * bsz;
            for (int32_t b = 0; b < cols / QK; b++) {
                memcpy(row + (size_t)b * bsz, &hb, 2);
                if (type == LR_Q4_0) memset(row + (size_t)b * bsz + 2, 0x88, 16);   /* q - 8 = 0 */
            }
            uint8_t *q = row + (size_t)(c / QK) * bsz + 2;
            const int t = c % QK;
            if (type == LR_Q8_0) q[t] = 1;
            else if (t < 16) q[t] = (uint8_t)((q[t] & 0xf0) | 9);
            else q[t - 16] = (uint8_t)((q[t - 16] & 0x0f) | (9 << 4));
        }
        r++;
    }
    float *x = xmalloc(sizeof(float) * (size_t)cols);
    double *want = xmalloc(sizeof(double) * (size_t)rows);
    float *y = make_output(rows);
    for (int32_t c = 0; c < cols; c++) x[c] = c % QK == 0 ? 127.0f : 1.0f;
    for (int32_t i = 0; i < rows; i++) {
        want[i] = 0.0;
        for (int32_t c = 0; c < cols; c++) want[i] += weight(&m.t, i, c) * (double)x[c];
    }
    for (int32_t li = 0; li < g_nlevels; li++) {
        const int32_t level = g_levels[li];
        use_level(level);
        char what[160], why[200] = "";
        fill_sentinel(y, rows + GUARD);
        const int32_t rc = lr_dot_rows(&m.t, x, y);
        const int failed = check_exact(y, want, rows, rc, why, sizeof why);
        snprintf(what, sizeof what, "exact halves: lr_dot_rows %s, all %d finite %s", type_name(type), rows,
                 type == LR_F16 ? "values" : "scales");
        report(level, failed, what, 0.0, why);
    }
    free_matrix(&m);
    free(x);
    free(want);
    free(y);
}


/* ---- attention over the KV cache ---------------------------------------------------------------
 * lr_kv_store (the rounding of every cache write) against independent rules: F16 the nearest half,
 * ties to an even mantissa, 65520 and up to inf; Q8_0 ggml's (d = max |x| / 127 stored as a half,
 * codes round(x / d) half away from zero). lr_attn_scores / lr_attn_values of every cache type at
 * every level: the scalar level's bits exactly (kernels.h fixes one order for all levels), and a
 * double reference from an independent decoding of the stored rows (Q8_0 keys: q quantized by the
 * same independent rule), within TOL (1 + sum |terms|). Rows are a head's slice of wider cache rows
 * (stride > row bytes, not at offset 0), the last one ending at the end of its allocation. */

/* ggml's Q8_0 rule, written out independently: codes[] and the half scale */
static uint16_t q8_0_ref(const float *x, int8_t *codes) {
    float amax = 0.0f;
    for (int i = 0; i < 32; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < 32; i++) {
        const float v = x[i] * id;
        codes[i] = (int8_t)(v < 0.0f ? -floorf(-v + 0.5f) : floorf(v + 0.5f));
    }
    uint16_t h;
    lr_kv_store(LR_F16, &d, 1, &h);   /* the half rounding is checked on its own (check_kv_store) */
    return h;
}

/* value i of a stored row, in double */
static double kv_value(int32_t type, const uint8_t *row, int32_t i) {
    if (type == LR_F32) {
        float f;
        memcpy(&f, row + 4 * (size_t)i, 4);
        return f;
    }
    if (type == LR_F16) {
        uint16_t h;
        memcpy(&h, row + 2 * (size_t)i, 2);
        return half_value(h);
    }
    const uint8_t *blk = row + (size_t)(i / 32) * 34;
    uint16_t d;
    memcpy(&d, blk, 2);
    return half_value(d) * (double)(int8_t)blk[2 + i % 32];
}

static void check_kv_store(void) {
    char why[200] = "";
    /* F16: every half round-trips; every float between two halves goes to the nearer (ties: even) */
    int failed = 0;
    for (int32_t h = 0; h < 65536 && !failed; h++) {
        const double v = half_value((uint16_t)h);
        const float f = (float)v;
        uint16_t got;
        lr_kv_store(LR_F16, &f, 1, &got);
        if (isnan(v) ? !isnan(half_value(got)) : got != h) {
            failed = 1;
            snprintf(why, sizeof why, "half 0x%04x stored as 0x%04x", h, got);
        }
    }
    report_other(failed, "lr_kv_store F16: all 65536 halves round-trip", why);
    failed = 0;
    for (int32_t k = 0; k < 400000 && !failed; k++) {
        float f;
        if (k < 200000) {   /* random bits over the whole float range */
            const uint32_t u = (uint32_t)rnd();
            memcpy(&f, &u, 4);
        } else if (k < 300000) {   /* the half range, subnormals included */
            f = ldexpf(rnd_uniform(-1.0f, 1.0f), rnd_below(44) - 27);
        } else {   /* exact midpoints between two neighbouring finite halves */
            const uint16_t h = (uint16_t)(rnd_below(0x7bff) | (rnd() & 1) << 15);
            f = (float)((half_value(h) + half_value((uint16_t)(h + 1))) / 2);
        }
        uint16_t got;
        lr_kv_store(LR_F16, &f, 1, &got);
        const double x = f, g = half_value(got);
        int ok;
        if (isnan(x)) {
            ok = isnan(g);
        } else if (fabs(x) >= 65520.0) {
            ok = isinf(g) && (g > 0) == (x > 0);
        } else {   /* nearer than both neighbours, an even mantissa at a tie, the sign kept */
            const double lo = half_value((uint16_t)(got - 1)), hi = half_value((uint16_t)(got + 1));
            const double e = fabs(x - g);
            ok = !isnan(g) && !isinf(g) && (signbit(g) == signbit(x) || g == 0.0) &&
                 ((got & 0x7fff) == 0 || e <= fabs(x - lo)) && ((got & 0x7fff) == 0x7bff || e <= fabs(x - hi)) &&
                 !(((got & 0x7fff) != 0 && e == fabs(x - lo)) && (got & 1)) &&
                 !(((got & 0x7fff) != 0x7bff && e == fabs(x - hi)) && (got & 1));
        }
        if (!ok) {
            failed = 1;
            snprintf(why, sizeof why, "%.9g stored as 0x%04x (%.9g)", x, got, g);
        }
    }
    report_other(failed, "lr_kv_store F16: 400000 floats to the nearest half, ties to even", why);
    /* Q8_0 against the rule, on blocks with zeros, ties (x / d = k + 1/2) and wide ranges */
    failed = 0;
    for (int32_t k = 0; k < 2000 && !failed; k++) {
        float x[64];
        const float range = ldexpf(1.0f, rnd_below(20) - 10);
        for (int i = 0; i < 64; i++) x[i] = rnd_below(16) == 0 ? 0.0f : rnd_uniform(-range, range);
        if (k % 4 == 1) for (int i = 1; i < 32; i++) x[i] = (float)(rnd_below(255) - 127) * 0.5f, x[0] = 127.0f;   /* d = 1: halves tie */
        if (k % 4 == 2) for (int i = 32; i < 64; i++) x[i] = 0.0f;   /* an all-zero block */
        block_q8_0 got[2];
        lr_kv_store(LR_Q8_0, x, 64, got);
        for (int b = 0; b < 2 && !failed; b++) {
            int8_t codes[32];
            const uint16_t d = q8_0_ref(x + 32 * b, codes);
            if (d != got[b].d || memcmp(codes, got[b].qs, 32)) {
                failed = 1;
                snprintf(why, sizeof why, "block %d of case %d: scale 0x%04x want 0x%04x or codes differ", b, (int)k,
                         got[b].d, d);
            }
        }
    }
    report_other(failed, "lr_kv_store Q8_0: 2000 rows of 2 blocks against ggml's rule", why);
    /* non-finite values: no crash, a non-finite scale, codes within [-127, 127] */
    {
        float x[32];
        for (int i = 0; i < 32; i++) x[i] = rnd_uniform(-1.0f, 1.0f);
        const float bad[2] = {NAN, INFINITY};
        failed = 0;
        for (int j = 0; j < 2; j++) {
            x[5] = bad[j];
            block_q8_0 b;
            lr_kv_store(LR_Q8_0, x, 32, &b);
            int in_range = 1;
            for (int i = 0; i < 32; i++) in_range &= b.qs[i] >= -127;
            if (isfinite(half_value(b.d)) || !in_range) {
                failed = 1;
                snprintf(why, sizeof why, "x[5] = %g: scale %g", (double)bad[j], half_value(b.d));
            }
        }
        report_other(failed, "lr_kv_store Q8_0: NaN / Inf give a non-finite scale", why);
    }
    /* refusals */
    float x[32] = {0};
    uint8_t out[256];
    int32_t rc = lr_kv_store(LR_Q4_0, x, 32, out);
    snprintf(why, sizeof why, "returned %d", rc);
    report_other(rc != LR_ETYPE, "lr_kv_store Q4_0 -> LR_ETYPE", why);
    rc = lr_kv_store(LR_Q8_0, x, 31, out);
    snprintf(why, sizeof why, "returned %d", rc);
    report_other(rc != LR_ESHAPE, "lr_kv_store Q8_0 n=31 -> LR_ESHAPE", why);
    rc = lr_attn_scores(LR_F16, x, out, 2, 1, 4, 1.0f, x);   /* stride below a row */
    snprintf(why, sizeof why, "returned %d", rc);
    report_other(rc != LR_ESHAPE, "lr_attn_scores stride < row -> LR_ESHAPE", why);
    rc = lr_attn_values(LR_F32, x, out, 16, 0, 4, x);
    snprintf(why, sizeof why, "returned %d", rc);
    report_other(rc != LR_ESHAPE, "lr_attn_values n=0 -> LR_ESHAPE", why);
    rc = lr_attn_values(LR_Q8_0, x, out, 64, 1, 16, x);
    snprintf(why, sizeof why, "returned %d", rc);
    report_other(rc != LR_ESHAPE, "lr_attn_values Q8_0 hd=16 -> LR_ESHAPE", why);
}

/* n positions of a cache with 2 kv heads, head 1 checked: K or V rows stored from random floats */
static uint8_t *make_cache(int32_t type, int32_t n, int32_t hd, int64_t *stride, uint8_t **alloc) {
    const int64_t row = lr_kv_row_bytes(type, hd);
    *stride = 2 * row;
    const size_t bytes = (size_t)(*stride) * (size_t)n;
    *alloc = xmalloc(bytes);
    float *x = xmalloc(sizeof(float) * (size_t)hd);
    for (int32_t t = 0; t < n; t++)
        for (int h = 0; h < 2; h++) {
            for (int32_t i = 0; i < hd; i++) x[i] = rnd_below(50) == 0 ? 0.0f : rnd_uniform(-2.0f, 2.0f);
            lr_kv_store(type, x, hd, *alloc + (size_t)t * (size_t)(*stride) + (size_t)h * (size_t)row);
        }
    free(x);
    return *alloc + row;   /* head 1: its last row ends at the end of the allocation */
}

static void check_attention(int32_t type, int32_t hd, int32_t n) {
    int64_t stride;
    uint8_t *alloc;
    const uint8_t *kv = make_cache(type, n, hd, &stride, &alloc);
    float *q = make_vector(hd), *w = xmalloc(sizeof(float) * (size_t)n);
    for (int32_t t = 0; t < n; t++) w[t] = rnd_uniform(0.0f, 1.0f);
    const float scale = 1.0f / sqrtf((float)hd);
    const int32_t big = n > hd ? n : hd;
    double *ref = xmalloc(sizeof(double) * (size_t)big), *mag = xmalloc(sizeof(double) * (size_t)big);
    float *want = make_output(big), *got = make_output(big);
    double *qs = xmalloc(sizeof(double) * (size_t)hd);   /* q as the scores take it */
    for (int32_t i = 0; i < hd; i++) qs[i] = q[i];
    if (type == LR_Q8_0)
        for (int32_t b = 0; b < hd / 32; b++) {
            int8_t codes[32];
            const double d = half_value(q8_0_ref(q + 32 * b, codes));
            for (int i = 0; i < 32; i++) qs[32 * b + i] = d * codes[i];
        }
    char what[160], why[240];
    double err = 0.0;
    for (int32_t t = 0; t < n; t++) {   /* scores */
        double s = 0.0, a = 0.0;
        for (int32_t i = 0; i < hd; i++) {
            const double term = qs[i] * kv_value(type, kv + (size_t)t * (size_t)stride, i);
            s += term, a += fabs(term);
        }
        ref[t] = s * scale, mag[t] = a * scale;
    }
    for (int32_t li = 0; li < g_nlevels; li++) {
        const int32_t level = g_levels[li];
        float *out = level_out(level, want, got, n);
        use_level(level);
        snprintf(what, sizeof what, "lr_attn_scores %s hd=%d n=%d", type_name(type), hd, n);
        const int32_t rc = lr_attn_scores(type, q, kv, stride, n, hd, scale, out);
        int failed = rc != LR_OK;
        if (failed) snprintf(why, sizeof why, "returned %d", rc);
        else failed = compare(out, level == LR_SIMD_SCALAR ? NULL : want, ref, mag, n, 0, n, 1, &err, why, sizeof why);
        report(level, failed, what, err, why);
    }
    for (int32_t i = 0; i < hd; i++) {   /* values */
        double s = 0.0, a = 0.0;
        for (int32_t t = 0; t < n; t++) {
            const double term = (double)w[t] * kv_value(type, kv + (size_t)t * (size_t)stride, i);
            s += term, a += fabs(term);
        }
        ref[i] = s, mag[i] = a;
    }
    for (int32_t li = 0; li < g_nlevels; li++) {
        const int32_t level = g_levels[li];
        float *out = level_out(level, want, got, hd);
        use_level(level);
        snprintf(what, sizeof what, "lr_attn_values %s hd=%d n=%d", type_name(type), hd, n);
        const int32_t rc = lr_attn_values(type, w, kv, stride, n, hd, out);
        int failed = rc != LR_OK;
        if (failed) snprintf(why, sizeof why, "returned %d", rc);
        else failed = compare(out, level == LR_SIMD_SCALAR ? NULL : want, ref, mag, hd, 0, hd, 1, &err, why, sizeof why);
        report(level, failed, what, err, why);
    }
    free(alloc);
    free(q);
    free(w);
    free(ref);
    free(mag);
    free(want);
    free(got);
    free(qs);
}

/* ---- Top-K ----------------------------------------------------------------------------------- */

static const float *g_sort_x;
/* by |x| descending (NaN above everything, all NaNs equal), ties by lower index */
static int by_magnitude(const void *pa, const void *pb) {
    const int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    const float xa = g_sort_x[a], xb = g_sort_x[b];
    const int na = isnan(xa), nb = isnan(xb);
    if (na != nb) return na ? -1 : 1;
    if (!na) {
        const float fa = fabsf(xa), fb = fabsf(xb);
        if (fa != fb) return fa > fb ? -1 : 1;
    }
    return (a > b) - (a < b);
}
static int ascending(const void *pa, const void *pb) {
    const int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return (a > b) - (a < b);
}

static void check_topk_case(const char *kind, const float *x, int32_t n, int32_t k) {
    int32_t *want = malloc(sizeof(int32_t) * (size_t)n), *got = malloc(sizeof(int32_t) * (size_t)(n + 1));
    if (!want || !got) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (int32_t i = 0; i < n; i++) want[i] = i;
    g_sort_x = x;
    qsort(want, (size_t)n, sizeof(int32_t), by_magnitude);
    qsort(want, (size_t)k, sizeof(int32_t), ascending);
    for (int32_t i = 0; i <= n; i++) got[i] = -7;
    const int32_t rc = lr_topk(x, n, k, got);
    char what[120], why[200] = "";
    snprintf(what, sizeof what, "lr_topk %s n=%d k=%d", kind, n, k);
    int failed = rc != k;
    if (failed) snprintf(why, sizeof why, "returned %d", rc);
    for (int32_t i = 0; !failed && i < k; i++)
        if (got[i] != want[i]) {
            failed = 1;
            snprintf(why, sizeof why, "idx[%d] = %d, expected %d", i, got[i], want[i]);
        }
    for (int32_t i = k; !failed && i <= n; i++)
        if (got[i] != -7) {
            failed = 1;
            snprintf(why, sizeof why, "wrote idx[%d] past k", i);
        }
    report_other(failed, what, why);
    free(want);
    free(got);
}

static void check_topk(void) {   /* every level: the reference at scalar, topk.c's search above */
    static const int32_t sizes[] = {1, 2, 3, 17, 64, 257, 1000, 4096, 8960};
    for (int32_t li = 0; li < g_nlevels; li++)
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        use_level(g_levels[li]);
        const int32_t n = sizes[si];
        float *x = malloc(sizeof(float) * (size_t)n);
        if (!x) { fprintf(stderr, "out of memory\n"); exit(2); }
        for (int kind = 0; kind < 4; kind++) {
            const char *name = "";
            for (int32_t i = 0; i < n; i++) {
                switch (kind) {
                case 0: name = "random"; x[i] = rnd_uniform(-3.0f, 3.0f); break;
                case 1:   /* few distinct magnitudes: many ties at the threshold, +-x and +-0 tie */
                    name = "ties";
                    x[i] = (float)(rnd_below(5)) * 0.25f * ((rnd() & 1) ? -1.0f : 1.0f);
                    break;
                case 2: {   /* keys that differ only in low bytes, subnormals, infinities */
                    name = "bits";
                    uint32_t u = 0x3f800000u + (uint32_t)rnd_below(300);
                    const int32_t r = rnd_below(16);
                    if (r == 0) u = (uint32_t)rnd_below(1000);          /* subnormal */
                    if (r == 1) u = 0x7f800000u;                        /* inf */
                    if (r == 2) u = 0x00000000u;
                    u |= (uint32_t)(rnd() & 1) << 31;
                    memcpy(&x[i], &u, 4);
                    break;
                }
                default:   /* magnitudes spread over many exponents, with some NaNs */
                    name = "wide+nan";
                    x[i] = rnd_below(40) == 0 ? NAN : ldexpf(rnd_uniform(-1.0f, 1.0f), rnd_below(60) - 30);
                    break;
                }
            }
            const int32_t ks[] = {1, n - 1, n / 2, 1 + rnd_below(n), n};
            for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
                int dup = ks[ki] < 1;
                for (size_t kj = 0; kj < ki; kj++) dup |= ks[kj] == ks[ki];
                char kind_level[64];
                snprintf(kind_level, sizeof kind_level, "%s %s", LEVEL_NAME[g_levels[li]], name);
                if (!dup) check_topk_case(kind_level, x, n, ks[ki]);
            }
        }
        free(x);
    }
    /* argument errors */
    float x[4] = {1, 2, 3, 4};
    int32_t idx[4];
    char why[80];
    int32_t rc = lr_topk(x, 4, 0, idx);
    snprintf(why, sizeof why, "returned %d", rc);
    report_other(rc != LR_EARG, "lr_topk k=0 -> LR_EARG", why);
    rc = lr_topk(x, 4, 5, idx);
    snprintf(why, sizeof why, "returned %d", rc);
    report_other(rc != LR_EARG, "lr_topk k>n -> LR_EARG", why);
}


/* ---- main ------------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    uint64_t seed = 20250701;
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "-q")) g_quiet = 1;
        else if (!strcmp(argv[a], "--no-exhaustive")) g_exhaustive = 0;
        else seed = strtoull(argv[a], NULL, 0);
    }
    g_rng = seed;
    setvbuf(stdout, NULL, _IOLBF, 0);

#if defined(__aarch64__)
    printf("kernel_check arch=aarch64 seed=%llu dotprod=%s\n", (unsigned long long)seed, lr_neon_dotprod() ? "yes" : "no");
#elif defined(__x86_64__)
    printf("kernel_check arch=x86_64 seed=%llu\n", (unsigned long long)seed);
#else
    printf("kernel_check arch=other seed=%llu\n", (unsigned long long)seed);
#endif
    printf("levels:");
    for (int32_t l = 0; l < 4; l++) {
        const int avail = lr_simd_available(l);
        printf(" %s=%s", LEVEL_NAME[l], avail ? "yes" : "no");
        if (avail) g_levels[g_nlevels++] = l;
        /* lr_set_simd must refuse exactly the levels that are not available */
        const int32_t rc = lr_set_simd(l);
        if ((rc == LR_OK) != (avail != 0)) {
            printf("\nFAIL lr_set_simd(%s) returned %d, available=%d\n", LEVEL_NAME[l], rc, avail);
            g_other_fail++;
        }
        g_other_checks++;
    }
    printf("\n");
    {
        const int32_t rc = lr_set_simd(4), rc2 = lr_set_simd(-1);
        g_other_checks++;
        if (rc != LR_ERANGE || rc2 != LR_ERANGE) {
            printf("FAIL lr_set_simd(4 / -1) returned %d / %d\n", rc, rc2);
            g_other_fail++;
        }
    }

    /* float weights: every tile / chunk / tail combination (AVX-512 256/16/1, AVX2 64/8/1, NEON 32/1) */
    static const int32_t fcols[] = {1, 3, 8, 16, 31, 40, 77, 96, 255, 256, 288, 300, 544, 1056};
    static const int32_t spmv_rows[] = {1, 7, 150};
    static const int32_t dot_rows[] = {1, 5, 37};
    /* _IM: 1, 2, 3, 5 and 17 chunks of 64 columns; 1, 2 and 5 groups of 32 inputs */
    static const int32_t im_cols[] = {64, 128, 192, 320, 1088};
    static const int32_t im_rows[] = {32, 64, 160};
    /* ggml Q8_0 / Q4_0 rows: 1, 2, 3, 9, 17 and 33 blocks */
    static const int32_t qcols[] = {32, 64, 96, 288, 544, 1056};
    for (int32_t type = LR_F32; type <= LR_F16; type++)
        for (size_t ci = 0; ci < sizeof fcols / sizeof fcols[0]; ci++) {
            for (size_t ri = 0; ri < 3; ri++) check_spmv(type, spmv_rows[ri], fcols[ci]);
            for (size_t ri = 0; ri < 3; ri++) check_dot(type, dot_rows[ri], fcols[ci]);
        }
    static const int32_t im_types[] = {LR_Q8_0_IM, LR_Q4_0_IM}, q_types[] = {LR_Q8_0, LR_Q4_0};
    for (size_t ti = 0; ti < 2; ti++) {
        for (size_t ci = 0; ci < sizeof im_cols / sizeof im_cols[0]; ci++)
            for (size_t ri = 0; ri < 3; ri++) check_spmv(im_types[ti], im_rows[ri], im_cols[ci]);
        /* batches: one token, a few, the largest (LR_QGEMM_TOKENS) */
        check_spmm(im_types[ti], 32, 64, 1);
        check_spmm(im_types[ti], 64, 192, 5);
        check_spmm(im_types[ti], 96, 1088, 3);
        check_spmm(im_types[ti], 160, 320, LR_QGEMM_TOKENS);
        for (size_t ci = 0; ci < sizeof qcols / sizeof qcols[0]; ci++)
            for (size_t ri = 0; ri < 3; ri++) check_dot(q_types[ti], dot_rows[ri], qcols[ci]);
    }
    check_nonfinite();
    if (g_exhaustive) {
        check_exact_spmv(LR_F16);
        check_exact_spmv(LR_Q8_0_IM);
        check_exact_spmv(LR_Q4_0_IM);
        check_exact_dot(LR_F16);
        check_exact_dot(LR_Q8_0);
        check_exact_dot(LR_Q4_0);
    }
    check_refusals();
    check_topk();
    /* attention: head sizes with every vector tail (16 / 8 / 4 lanes) for F32 / F16, whole blocks
     * for Q8_0; positions 1 .. 4 and past (passes of 4 and of 2, and the rest) */
    check_kv_store();
    static const int32_t hds[] = {2, 6, 16, 32, 40, 64, 72, 96, 100, 128, 256};
    static const int32_t ns[] = {1, 2, 3, 4, 5, 7, 64, 333};
    for (int32_t type = LR_F32; type <= LR_F16; type++)
        for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++)
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) check_attention(type, hds[hi], ns[ni]);
    for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++)
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
            if (hds[hi] % 32 == 0) check_attention(LR_Q8_0, hds[hi], ns[ni]);

    long checks = g_other_checks, fails = g_other_fail;
    for (int32_t li = 0; li < g_nlevels; li++) {
        const int32_t l = g_levels[li];
        printf("LEVEL %s checks=%ld failures=%ld\n", LEVEL_NAME[l], g_checks[l], g_fail[l]);
        checks += g_checks[l];
        fails += g_fail[l];
    }
    printf("OTHER checks=%ld failures=%ld\n", g_other_checks, g_other_fail);
    printf("SUMMARY levels=");
    for (int32_t li = 0; li < g_nlevels; li++) printf("%s%s", li ? "," : "", LEVEL_NAME[g_levels[li]]);
    printf(" checks=%ld failures=%ld\n", checks, fails);
    return fails ? 1 : 0;
}

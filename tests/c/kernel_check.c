/* kernel_check: every SIMD kernel level available on this machine against the scalar reference.
 *
 * For each level that lr_simd_available() reports, switches with lr_set_simd() and compares
 * lr_spmv and lr_dot_rows (the public entry points) for F32, F16, Q8_0 and Q4_0 against the scalar
 * level on random data: random weights, random quant blocks with random fp16 scales (subnormal,
 * zero and negative ones included), random unsorted row subsets with k = 0, 1, a random k, rows,
 * and idx = NULL (dense), and column counts that reach every tile, chunk and tail path of the
 * AVX-512 (256/16/1), AVX2 (64/8/1) and NEON (32/1) kernels. It also checks the column and row
 * slices that the threaded forward pass hands to the kernel tables (c0, c1 multiples of 32; r0, r1),
 * including that nothing outside a slice or past the end of y is written. The scalar level itself is
 * checked against a double-precision reference computed here from an independent decoding of the
 * formats. Tolerance: |a - b| <= 1e-4 * (1 + sum |terms|), terms being the products summed for
 * that output. lr_topk is checked exactly against a sort by |x| descending, ties by lower index.
 *
 * Build: cc -O2 -std=c11 -D_GNU_SOURCE -pthread -I c_kernels tests/c/kernel_check.c \
 *           c_kernels/kernels.c c_kernels/simd_x86.c c_kernels/simd_neon.c -lm
 * Usage: kernel_check [seed] [-q] [--no-exhaustive]
 *   -q: print only failures and the summaries; --no-exhaustive: skip the checks of all 65536 fp16
 *   patterns (the slow part under emulation with sanitizers)
 * Output: one line per check ("PASS ..." / "FAIL ..."), then "LEVEL <name> checks=N failures=F" per
 * level and "SUMMARY levels=... checks=N failures=F". Exit status 0 only when everything passed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "larosa.h"

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
    default: return "?";
    }
}

static int g_quiet = 0, g_exhaustive = 1;
static long g_checks[4], g_fail[4], g_other_checks, g_other_fail;

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
    }
    return NAN;
}

/* ---- random tensors -------------------------------------------------------------------------- */

typedef struct {
    lr_tensor t;
    uint8_t *alloc;
} matrix;

/* Data deliberately not vector-aligned (offset by one element; the struct fields of the quant
 * blocks need 2-byte alignment) and ending exactly at the end of its allocation, so an address
 * sanitizer build sees any read past the tensor. */
static matrix make_matrix(int32_t type, int32_t rows, int32_t cols, int fill) {
    matrix m;
    const uint64_t nbytes = lr_row_bytes(type, cols) * (uint64_t)rows;
    const size_t off = type == LR_F32 ? 4 : 2;
    m.alloc = malloc(off + nbytes);
    if (!m.alloc) { fprintf(stderr, "out of memory\n"); exit(2); }
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
    return m;
}

static float *make_vector(int32_t n) {
    float *x = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!x) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (int32_t i = 0; i < n; i++) x[i] = rnd_below(64) == 0 ? 0.0f : rnd_uniform(-1.5f, 1.5f);
    return x;
}

static float *make_output(int32_t n) {   /* n floats + GUARD, all set to the sentinel */
    float *y = malloc(sizeof(float) * (size_t)(n + GUARD));
    if (!y) { fprintf(stderr, "out of memory\n"); exit(2); }
    const uint32_t bits = SENTINEL_BITS;
    for (int32_t i = 0; i < n + GUARD; i++) memcpy(&y[i], &bits, 4);
    return y;
}

static int is_sentinel(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return u == SENTINEL_BITS;
}

/* ---- comparison ------------------------------------------------------------------------------ */

/* Compares got[lo:hi) with want (and, when ref is given, the double reference), relative to mag
 * (the sum of |terms|), and checks that got is still the sentinel outside [lo, hi) up to n + GUARD.
 * Returns 0 on success, else fills why. err receives the worst |got - want| / (1 + mag). */
static int compare(const float *got, const float *want, const double *ref, const double *mag, int32_t n,
                   int32_t lo, int32_t hi, double *err, char *why, size_t why_len) {
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
        if (!(d <= bound) || !(dr <= bound)) {   /* negated: NaN fails */
            snprintf(why, why_len, "y[%d] = %.9g, scalar %.9g, exact %.9g, bound %.3g", i, (double)got[i],
                     want ? (double)want[i] : NAN, ref ? ref[i] : NAN, bound);
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

static int32_t g_levels[4], g_nlevels;

static void use_level(int32_t level) {
    if (lr_set_simd(level) != LR_OK || lr_get_simd() != level) {
        printf("FAIL cannot switch to level %s\n", LEVEL_NAME[level]);
        exit(1);
    }
}

/* idx modes: k rows of a random permutation (unsorted), or NULL for all rows */
enum { K_ZERO, K_ONE, K_RANDOM, K_ALL_IDX, K_DENSE, K_MODES };
static const char *KMODE_NAME[K_MODES] = {"k=0", "k=1", "k=random", "k=rows", "idx=NULL"};

static void check_spmv(int32_t type, int32_t rows, int32_t cols) {
    matrix m = make_matrix(type, rows, cols, 1);
    float *x = make_vector(rows);
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)rows);
    double *ref = malloc(sizeof(double) * (size_t)cols), *mag = malloc(sizeof(double) * (size_t)cols);
    float *want = make_output(cols), *got = make_output(cols);
    if (!perm || !ref || !mag) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (int32_t i = 0; i < rows; i++) perm[i] = i;
    for (int32_t i = rows - 1; i > 0; i--) {   /* Fisher-Yates */
        const int32_t j = rnd_below(i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int mode = 0; mode < K_MODES; mode++) {
        const int32_t k = mode == K_ZERO ? 0 : mode == K_ONE ? 1 : mode == K_RANDOM ? 1 + rnd_below(rows) : rows;
        const int32_t *idx = mode == K_DENSE ? NULL : perm;
        for (int32_t c = 0; c < cols; c++) {
            double s = 0.0, a = 0.0;
            for (int32_t j = 0; j < k; j++) {
                const int32_t i = idx ? idx[j] : j;
                const double term = (double)x[i] * weight(&m.t, i, c);
                s += term;
                a += fabs(term);
            }
            ref[c] = s;
            mag[c] = a;
        }
        char what[160], why[200];
        double err = 0.0;
        for (int32_t li = 0; li < g_nlevels; li++) {
            const int32_t level = g_levels[li];
            float *out = level == LR_SIMD_SCALAR ? want : got;
            const uint32_t bits = SENTINEL_BITS;
            for (int32_t i = 0; i < cols + GUARD; i++) memcpy(&out[i], &bits, 4);
            use_level(level);
            snprintf(what, sizeof what, "lr_spmv %s rows=%d cols=%d %s (k=%d)", type_name(type), rows, cols,
                     KMODE_NAME[mode], k);
            const int32_t rc = lr_spmv(&m.t, x, idx, k, out);
            int failed = rc != LR_OK;
            if (failed) snprintf(why, sizeof why, "returned %d", rc);
            else failed = compare(out, level == LR_SIMD_SCALAR ? NULL : want, ref, mag, cols, 0, cols, &err,
                                  why, sizeof why);
            report(level, failed, what, err, why);
        }
    }
    /* the column slices of the threaded forward pass, through the kernel tables: split into
     * 2 and 3 parts the way forward.c does (multiples of 32, the last one ending at cols) */
    {
        const int32_t k = rows > 1 ? 1 + rnd_below(rows) : 1;
        for (int32_t c = 0; c < cols; c++) {
            double s = 0.0, a = 0.0;
            for (int32_t j = 0; j < k; j++) {
                const double term = (double)x[perm[j]] * weight(&m.t, perm[j], c);
                s += term;
                a += fabs(term);
            }
            ref[c] = s;
            mag[c] = a;
        }
        for (int nth = 2; nth <= 3; nth++) {
            const int32_t units = (cols + QK - 1) / QK, per = (units + nth - 1) / nth;
            for (int ith = 0; ith < nth; ith++) {
                int32_t c0 = ith * per * QK, c1 = (ith + 1) * per * QK;
                if (c1 > cols) c1 = cols;
                if (c0 >= c1) continue;
                char what[160], why[200];
                double err = 0.0;
                for (int32_t li = 0; li < g_nlevels; li++) {
                    const int32_t level = g_levels[li];
                    float *out = level == LR_SIMD_SCALAR ? want : got;
                    const uint32_t bits = SENTINEL_BITS;
                    for (int32_t i = 0; i < cols + GUARD; i++) memcpy(&out[i], &bits, 4);
                    use_level(level);
                    lr_kernels()->spmv[lr_type_slot(type)](&m.t, x, perm, k, out, c0, c1);
                    snprintf(what, sizeof what, "spmv slice %s rows=%d cols=%d k=%d c=[%d,%d)", type_name(type),
                             rows, cols, k, c0, c1);
                    const int failed = compare(out, level == LR_SIMD_SCALAR ? NULL : want, ref, mag, cols, c0,
                                               c1, &err, why, sizeof why);
                    report(level, failed, what, err, why);
                }
            }
        }
    }
    free(m.alloc);
    free(x);
    free(perm);
    free(ref);
    free(mag);
    free(want);
    free(got);
}

static void check_dot(int32_t type, int32_t rows, int32_t cols) {
    matrix m = make_matrix(type, rows, cols, 1);
    float *x = make_vector(cols);
    double *ref = malloc(sizeof(double) * (size_t)rows), *mag = malloc(sizeof(double) * (size_t)rows);
    float *want = make_output(rows), *got = make_output(rows);
    if (!ref || !mag) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (int32_t r = 0; r < rows; r++) {
        double s = 0.0, a = 0.0;
        for (int32_t c = 0; c < cols; c++) {
            const double term = weight(&m.t, r, c) * (double)x[c];
            s += term;
            a += fabs(term);
        }
        ref[r] = s;
        mag[r] = a;
    }
    /* the whole tensor through lr_dot_rows, then row slices [r0, r1) through the table */
    int32_t ranges[4][2] = {{0, rows}, {0, rows / 2}, {rows / 2, rows}, {rows / 3, rows - rows / 3}};
    for (int ri = 0; ri < 4; ri++) {
        const int32_t r0 = ranges[ri][0], r1 = ranges[ri][1];
        if (ri > 0 && (r0 >= r1 || rows < 3)) continue;
        char what[160], why[200];
        double err = 0.0;
        for (int32_t li = 0; li < g_nlevels; li++) {
            const int32_t level = g_levels[li];
            float *out = level == LR_SIMD_SCALAR ? want : got;
            const uint32_t bits = SENTINEL_BITS;
            for (int32_t i = 0; i < rows + GUARD; i++) memcpy(&out[i], &bits, 4);
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
                snprintf(what, sizeof what, "dot_rows slice %s rows=%d cols=%d r=[%d,%d)", type_name(type), rows,
                         cols, r0, r1);
                lr_kernels()->dot_rows[lr_type_slot(type)](&m.t, x, out, r0, r1);
            }
            if (!failed)
                failed = compare(out, level == LR_SIMD_SCALAR ? NULL : want, ref, mag, rows, r0, r1, &err, why,
                                 sizeof why);
            report(level, failed, what, err, why);
        }
    }
    free(m.alloc);
    free(x);
    free(ref);
    free(mag);
    free(want);
    free(got);
}

/* ---- exact decoding of every fp16 pattern ------------------------------------------------------
 * The relative tolerance above cannot see a wrong subnormal (|h| < 2^-14), so the half decoders
 * are checked bit for bit: with one row and x = 1, spmv returns 0 + 1 * W[0, c] (quantized:
 * 0 + (1 * d) * q, exact since d * q needs at most 19 bits), the same in any summation order. Every
 * one of the 65536 halves is used as an F16 weight and as a Q8_0 / Q4_0 scale (inf and NaN
 * included: the result must then be inf or NaN as in double arithmetic). dot_rows gets every finite
 * half once, as the only nonzero of its row, against x = 1. */

static int same_value(float got, double want) {
    return isnan(want) ? isnan(got) : (double)got == want;
}

static void check_exact_spmv(int32_t type) {
    const int32_t n = 65536, cols = type == LR_F16 ? n : n * QK;
    matrix m = make_matrix(type, 1, cols, 0);
    uint8_t *p = (uint8_t *)m.t.data;
    for (int32_t h = 0; h < n; h++) {
        const uint16_t hb = (uint16_t)h;
        if (type == LR_F16) {
            memcpy(p + 2 * (size_t)h, &hb, 2);
        } else if (type == LR_Q8_0) {   /* scale h, quants -16..15 and the extremes */
            uint8_t *blk = p + 34 * (size_t)h;
            memcpy(blk, &hb, 2);
            for (int t = 0; t < QK; t++) blk[2 + t] = (uint8_t)(int8_t)(t == 0 ? -128 : t == 1 ? 127 : t - 16);
        } else {                        /* scale h, every nibble value twice */
            uint8_t *blk = p + 18 * (size_t)h;
            memcpy(blk, &hb, 2);
            for (int t = 0; t < QK / 2; t++) blk[2 + t] = (uint8_t)(t | ((15 - t) << 4));
        }
    }
    double *want = malloc(sizeof(double) * (size_t)cols);
    float *y = make_output(cols);
    if (!want) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (int32_t c = 0; c < cols; c++) want[c] = weight(&m.t, 0, c);
    const float one = 1.0f;
    const int32_t idx0 = 0;
    for (int32_t li = 0; li < g_nlevels; li++) {
        const int32_t level = g_levels[li];
        use_level(level);
        for (int dense = 0; dense < 2; dense++) {
            char what[160], why[200] = "";
            const uint32_t bits = SENTINEL_BITS;
            for (int32_t i = 0; i < cols + GUARD; i++) memcpy(&y[i], &bits, 4);
            const int32_t rc = lr_spmv(&m.t, &one, dense ? NULL : &idx0, 1, y);
            int failed = rc != LR_OK;
            if (failed) snprintf(why, sizeof why, "returned %d", rc);
            for (int32_t c = 0; !failed && c < cols; c++)
                if (!same_value(y[c], want[c])) {
                    failed = 1;
                    snprintf(why, sizeof why, "y[%d] = %.9g, exact %.9g (half 0x%04x)", c, (double)y[c], want[c],
                             (unsigned)(type == LR_F16 ? c : c / QK));
                }
            for (int32_t c = cols; !failed && c < cols + GUARD; c++)
                if (!is_sentinel(y[c])) {
                    failed = 1;
                    snprintf(why, sizeof why, "wrote y[%d] past the end", c);
                }
            snprintf(what, sizeof what, "exact halves: lr_spmv %s, all 65536 %s, %s", type_name(type),
                     type == LR_F16 ? "values" : "scales", dense ? "idx=NULL" : "k=1");
            report(level, failed, what, 0.0, why);
        }
    }
    free(m.alloc);
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
    float *x = malloc(sizeof(float) * (size_t)cols);
    double *want = malloc(sizeof(double) * (size_t)rows);
    float *y = make_output(rows);
    if (!x || !want) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (int32_t c = 0; c < cols; c++) x[c] = 1.0f;
    for (int32_t i = 0; i < rows; i++) {
        want[i] = 0.0;
        for (int32_t c = 0; c < cols; c++) want[i] += weight(&m.t, i, c);
    }
    for (int32_t li = 0; li < g_nlevels; li++) {
        const int32_t level = g_levels[li];
        use_level(level);
        char what[160], why[200] = "";
        const uint32_t bits = SENTINEL_BITS;
        for (int32_t i = 0; i < rows + GUARD; i++) memcpy(&y[i], &bits, 4);
        const int32_t rc = lr_dot_rows(&m.t, x, y);
        int failed = rc != LR_OK;
        if (failed) snprintf(why, sizeof why, "returned %d", rc);
        for (int32_t i = 0; !failed && i < rows; i++)
            if (!same_value(y[i], want[i])) {
                failed = 1;
                snprintf(why, sizeof why, "y[%d] = %.9g, exact %.9g", i, (double)y[i], want[i]);
            }
        for (int32_t i = rows; !failed && i < rows + GUARD; i++)
            if (!is_sentinel(y[i])) {
                failed = 1;
                snprintf(why, sizeof why, "wrote y[%d] past the end", i);
            }
        snprintf(what, sizeof what, "exact halves: lr_dot_rows %s, all %d finite %s", type_name(type), rows,
                 type == LR_F16 ? "values" : "scales");
        report(level, failed, what, 0.0, why);
    }
    free(m.alloc);
    free(x);
    free(want);
    free(y);
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

static void check_topk(void) {
    static const int32_t sizes[] = {1, 2, 3, 17, 64, 257, 1000, 4096};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
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
                if (!dup) check_topk_case(name, x, n, ks[ki]);
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
    const char *arch = "aarch64";
#elif defined(__x86_64__)
    const char *arch = "x86_64";
#else
    const char *arch = "other";
#endif
    printf("kernel_check arch=%s seed=%llu\n", arch, (unsigned long long)seed);
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

    /* columns: every tile / chunk / tail combination of the float kernels (AVX-512 256/16/1,
     * AVX2 64/8/1, NEON 32/1) and of the quantized ones (blocks: 1, 2, 3, 9, 17, 33) */
    static const int32_t fcols[] = {1, 3, 8, 16, 31, 40, 77, 96, 255, 256, 288, 300, 544, 1056};
    static const int32_t qcols[] = {32, 64, 96, 288, 544, 1056};
    static const int32_t spmv_rows[] = {1, 7, 150};
    static const int32_t dot_rows[] = {1, 5, 37};
    static const int32_t types[] = {LR_F32, LR_F16, LR_Q8_0, LR_Q4_0};
    for (size_t ti = 0; ti < 4; ti++) {
        const int32_t type = types[ti];
        const int quant = type == LR_Q8_0 || type == LR_Q4_0;
        const int32_t *cols = quant ? qcols : fcols;
        const size_t ncols = quant ? sizeof qcols / sizeof qcols[0] : sizeof fcols / sizeof fcols[0];
        for (size_t ci = 0; ci < ncols; ci++) {
            for (size_t ri = 0; ri < 3; ri++) check_spmv(type, spmv_rows[ri], cols[ci]);
            for (size_t ri = 0; ri < 3; ri++) check_dot(type, dot_rows[ri], cols[ci]);
        }
    }
    for (size_t ti = 0; g_exhaustive && ti < 4; ti++) {
        if (types[ti] != LR_F32) check_exact_spmv(types[ti]);
        if (types[ti] != LR_F32) check_exact_dot(types[ti]);
    }
    check_topk();

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

/* Memory read bandwidth of this machine: n_threads threads sum a buffer far larger than the
 * caches. Benchmarks report achieved weight bandwidth against this figure. lr_read_rows_bandwidth
 * reads only a random subset of fixed-size rows, the access pattern of a sparse matvec: each
 * selected row is a new stream, which the memory system serves more slowly than one sequential
 * stream; it bounds what any kernel reading those rows can reach. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kernels.h"
#include "threads.h"

/* The probes' buffers on 2 MiB pages where the kernel offers them, as the model's weights are
 * (runtime/hugepages.py): the bound they give is for the same page size. */
static void *probe_alloc(size_t bytes) {
    const size_t huge = (size_t)2 << 20;
    void *p = aligned_alloc(huge, (bytes + huge - 1) / huge * huge);
#ifdef MADV_HUGEPAGE
    if (p) madvise(p, (bytes + huge - 1) / huge * huge, MADV_HUGEPAGE);
#endif
    return p;
}

typedef struct { const uint64_t *buf; size_t n; uint64_t sums[2048]; } bw_job;   /* one per share */

static void bw_task(void *p, int ith, int nth, int thread) {
    bw_job *j = p;
    const size_t per = (j->n + (size_t)nth - 1) / (size_t)nth, a = (size_t)ith * per;
    const size_t b = a + per < j->n ? a + per : j->n;
    uint64_t s = 0;
    for (size_t i = a; i < b; i++) s ^= j->buf[i];   /* xor is associative: this vectorizes */
    j->sums[ith] = s;
}

/* fn over the pool once (page faults, thread start), then reps times: bytes / the fastest run */
static double best_rate(lr_pool *pool, lr_task_fn fn, void *job, double bytes, int32_t reps) {
    lr_pool_run(pool, fn, job);
    double best = 0.0;
    for (int32_t r = 0; r < reps; r++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        lr_pool_run(pool, fn, job);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        const double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        if (s > 0 && bytes / s > best) best = bytes / s;
    }
    return best;
}

double lr_read_bandwidth(int64_t bytes, int32_t n_threads, int32_t reps) {
    if (bytes < (1 << 20) || n_threads < 1 || n_threads > 512 || reps < 1) return -1.0;
    const size_t n = (size_t)bytes / sizeof(uint64_t);
    uint64_t *buf = probe_alloc(n * sizeof(uint64_t));
    lr_pool *pool = lr_pool_new(n_threads);
    if (!buf || !pool) {
        free(buf);
        lr_pool_free(pool);
        return -1.0;
    }
    for (size_t i = 0; i < n; i++) buf[i] = i * 0x9e3779b97f4a7c15ull;
    bw_job j = {buf, n, {0}};
    const double best = best_rate(pool, bw_task, &j, (double)n * sizeof(uint64_t), reps);
    lr_pool_free(pool);
    free(buf);
    return best;   /* bytes per second, best of reps */
}

typedef struct { const uint8_t *buf; const int32_t *sel; int32_t n_sel, row_bytes; uint64_t sums[2048]; } rows_job;

static void rows_task(void *p, int ith, int nth, int thread) {
    rows_job *j = p;
    const int32_t per = (j->n_sel + nth - 1) / nth, a = ith * per, b = a + per < j->n_sel ? a + per : j->n_sel;
    const size_t words = (size_t)j->row_bytes / sizeof(uint64_t);
    uint64_t s = 0;
    for (int32_t r = a; r < b; r++) {
        const uint64_t *row = (const uint64_t *)(j->buf + (size_t)j->sel[r] * (size_t)j->row_bytes);
        if (r + 16 < b) {   /* the kernels' prefetch: the row 16 selected rows ahead, every line */
            const uint8_t *ahead = j->buf + (size_t)j->sel[r + 16] * (size_t)j->row_bytes;
            for (int32_t o = 0; o < j->row_bytes; o += 64) __builtin_prefetch(ahead + o, 0, 2);
        }
        for (size_t i = 0; i < words; i++) s ^= row[i];
    }
    j->sums[ith] = s;
}

double lr_read_rows_bandwidth(int64_t bytes, int32_t row_bytes, double keep, int32_t n_threads, int32_t reps) {
    if (bytes < (1 << 20) || row_bytes < 64 || row_bytes % 64 || bytes / row_bytes > INT32_MAX ||
        !(keep > 0.0 && keep <= 1.0) || n_threads < 1 || n_threads > 512 || reps < 1) return -1.0;
    const int32_t rows = (int32_t)(bytes / row_bytes);
    uint8_t *buf = probe_alloc((size_t)rows * (size_t)row_bytes);
    int32_t *sel = malloc((size_t)rows * sizeof(int32_t));
    lr_pool *pool = lr_pool_new(n_threads);
    if (!buf || !sel || !pool) {
        free(buf);
        free(sel);
        lr_pool_free(pool);
        return -1.0;
    }
    memset(buf, 0x5a, (size_t)rows * (size_t)row_bytes);
    uint64_t h = 0x9e3779b97f4a7c15ull;   /* xorshift: each row kept with probability keep */
    int32_t n_sel = 0;
    for (int32_t r = 0; r < rows; r++) {
        h ^= h << 13, h ^= h >> 7, h ^= h << 17;
        if ((double)(h >> 11) * 0x1.0p-53 < keep) sel[n_sel++] = r;
    }
    rows_job j = {buf, sel, n_sel, row_bytes, {0}};
    const double best = best_rate(pool, rows_task, &j, (double)n_sel * row_bytes, reps);
    lr_pool_free(pool);
    free(buf);
    free(sel);
    return best;
}

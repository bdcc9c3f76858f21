/* Memory read bandwidth of this machine: n_threads threads sum a buffer far larger than the
 * caches. Benchmarks report achieved weight bandwidth against this figure. */
#include <stdlib.h>
#include <time.h>

#include "kernels.h"
#include "threads.h"

typedef struct { const uint64_t *buf; size_t n; uint64_t sums[2048]; } bw_job;   /* one per share */

static void bw_task(void *p, int ith, int nth, int thread) {
    bw_job *j = p;
    const size_t per = (j->n + (size_t)nth - 1) / (size_t)nth, a = (size_t)ith * per;
    const size_t b = a + per < j->n ? a + per : j->n;
    uint64_t s = 0;
    for (size_t i = a; i < b; i++) s ^= j->buf[i];   /* xor is associative: this vectorizes */
    j->sums[ith] = s;
}

double lr_read_bandwidth(int64_t bytes, int32_t n_threads, int32_t reps) {
    if (bytes < (1 << 20) || n_threads < 1 || n_threads > 512 || reps < 1) return -1.0;
    const size_t n = (size_t)bytes / sizeof(uint64_t);
    uint64_t *buf = malloc(n * sizeof(uint64_t));
    lr_pool *pool = lr_pool_new(n_threads);
    if (!buf || !pool) {
        free(buf);
        lr_pool_free(pool);
        return -1.0;
    }
    for (size_t i = 0; i < n; i++) buf[i] = i * 0x9e3779b97f4a7c15ull;
    bw_job j = {buf, n, {0}};
    lr_pool_run(pool, bw_task, &j);   /* warm-up: page faults, thread start */
    double best = 0.0;
    for (int32_t r = 0; r < reps; r++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        lr_pool_run(pool, bw_task, &j);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        const double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        if (s > 0 && (double)n * sizeof(uint64_t) / s > best) best = (double)n * sizeof(uint64_t) / s;
    }
    lr_pool_free(pool);
    free(buf);
    return best;   /* bytes per second, best of reps */
}

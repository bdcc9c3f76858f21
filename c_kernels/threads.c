/* A persistent pool of worker threads. lr_pool_run(fn) splits a job into shares, calls
 * fn(ctx, share, n_shares) for each, and returns when all are done. Shares are taken from a shared
 * counter by every thread, the caller included: when a worker is descheduled (a busy laptop, more
 * threads than free cores) the others take its shares instead of waiting a whole time slice for it.
 * fn also gets the index of the thread running it, for per-thread scratch memory.
 * Workers spin briefly for the next job, which is what a decode step with hundreds of short parallel
 * sections needs, then sleep on a condition variable so an idle model costs no CPU. */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "threads.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#define SPIN_ROUNDS 100000
#define SHARES_PER_THREAD 4

struct lr_pool {
    int n;                       /* threads including the caller */
    pthread_t *threads;
    lr_task_fn fn;               /* the current job, written before `next` is released */
    void *ctx;
    int n_shares;
    atomic_int next;             /* next share to take */
    atomic_int done;             /* shares finished */
    atomic_int generation;       /* bumped once per job: wakes the workers */
    atomic_int sleepers;
    atomic_int stop;
    pthread_mutex_t lock;
    pthread_cond_t wake;
};

typedef struct { lr_pool *pool; int thread; } worker_arg;

/* takes and runs shares until none is left */
static void work(lr_pool *pool, int thread) {
    for (;;) {
        const int s = atomic_fetch_add_explicit(&pool->next, 1, memory_order_acq_rel);
        if (s >= pool->n_shares) return;
        pool->fn(pool->ctx, s, pool->n_shares, thread);
        atomic_fetch_add_explicit(&pool->done, 1, memory_order_release);
    }
}

static void *worker(void *p) {
    lr_pool *pool = ((worker_arg *)p)->pool;
    const int thread = ((worker_arg *)p)->thread;
    free(p);
    int seen = 0;   /* the generation at creation; a job posted before we get here is not missed */
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pool->generation, memory_order_acquire) == seen) {
            if (++spins < SPIN_ROUNDS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&pool->lock);
            atomic_fetch_add(&pool->sleepers, 1);
            while (atomic_load(&pool->generation) == seen) pthread_cond_wait(&pool->wake, &pool->lock);
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->lock);
        }
        seen = atomic_load(&pool->generation);
        if (atomic_load(&pool->stop)) return NULL;
        work(pool, thread);
    }
}

lr_pool *lr_pool_new(int n_threads) {
    if (n_threads < 1) return NULL;
    lr_pool *pool = calloc(1, sizeof(*pool));
    if (!pool) return NULL;
    pool->n = n_threads;
    atomic_store(&pool->next, 1 << 30);   /* no job yet: nothing to take */
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!pool->threads) {
        free(pool);
        return NULL;
    }
    /* workers never take signals: Ctrl-C must reach the application's main thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 1; i < n_threads; i++) {
        worker_arg *a = malloc(sizeof(*a));
        if (a) {
            a->pool = pool;
            a->thread = i;
        }
        if (!a || pthread_create(&pool->threads[i], NULL, worker, a) != 0) {
            free(a);
            pool->n = i;          /* stop the ones already started */
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            lr_pool_free(pool);
            return NULL;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pool;
}

void lr_pool_run(lr_pool *pool, lr_task_fn fn, void *ctx) {
    if (pool->n == 1) {
        fn(ctx, 0, 1, 0);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n_shares = pool->n * SHARES_PER_THREAD;
    atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->next, 0, memory_order_release);   /* publishes fn, ctx, n_shares */
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->lock);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->lock);
    }
    work(pool, 0);
    int spins = 0;   /* only shares already taken by a running worker are left */
    while (atomic_load_explicit(&pool->done, memory_order_acquire) < pool->n_shares)
        if (++spins < SPIN_ROUNDS) cpu_relax(); else sched_yield();
}

int lr_pool_size(const lr_pool *pool) { return pool->n; }
int lr_pool_shares(const lr_pool *pool) { return pool->n == 1 ? 1 : pool->n * SHARES_PER_THREAD; }

void lr_pool_free(lr_pool *pool) {
    if (!pool) return;
    atomic_store(&pool->stop, 1);
    atomic_fetch_add(&pool->generation, 1);
    pthread_mutex_lock(&pool->lock);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 1; i < pool->n; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    free(pool->threads);
    free(pool);
}

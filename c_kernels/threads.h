/* Persistent thread pool: lr_pool_run calls fn(ctx, share, n_shares, thread) for every share of a
 * job, on all threads (the caller is thread 0); thread < lr_pool_size() indexes per-thread scratch. */
#ifndef LAROSA_THREADS_H
#define LAROSA_THREADS_H

typedef struct lr_pool lr_pool;
typedef void (*lr_task_fn)(void *ctx, int share, int n_shares, int thread);

lr_pool *lr_pool_new(int n_threads);
void lr_pool_run(lr_pool *pool, lr_task_fn fn, void *ctx);
int lr_pool_size(const lr_pool *pool);
int lr_pool_shares(const lr_pool *pool);   /* n_shares of every job */
void lr_pool_free(lr_pool *pool);

#endif

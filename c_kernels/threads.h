/* Persistent thread pool: lr_pool_run calls fn(ctx, ith, nth) on all nth threads, caller included. */
#ifndef LAROSA_THREADS_H
#define LAROSA_THREADS_H

typedef struct lr_pool lr_pool;
typedef void (*lr_task_fn)(void *ctx, int ith, int nth);

lr_pool *lr_pool_new(int n_threads);
void lr_pool_run(lr_pool *pool, lr_task_fn fn, void *ctx);
int lr_pool_size(const lr_pool *pool);
void lr_pool_free(lr_pool *pool);

#endif

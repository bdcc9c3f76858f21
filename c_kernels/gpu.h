/* The GPU decode step: a LaRoSA model on a WebGPU device (wgpu-native: Vulkan, Metal, DX12),
 * one submission per token. Read by cffi after larosa.h (c_kernels/build.py); lines starting
 * with '#' are skipped there.
 *
 * wgpu-native is not linked: lr_gpu_open loads it at run time from the path given (the library
 * that the `wgpu` Python package ships), so that the rest of larosa works without it. The WGSL
 * kernels are read from shader_dir (c_kernels/shaders). Every entry point checks its arguments
 * and returns a negative code (larosa.h's LR_E*, or LR_EGPU with the device's message in
 * lr_gpu_error) instead of crashing. */
#ifndef LAROSA_GPU_H
#define LAROSA_GPU_H
#include <stdint.h>

typedef struct lr_gpu lr_gpu;              /* a device, its pipelines */
typedef struct lr_gpu_model lr_gpu_model;  /* a model's weights, KV cache and step on a device */

enum { LR_EGPU = -8 };                     /* the device or wgpu-native reported an error */

/* Opens the first high-performance adapter of the primary backends (Vulkan, Metal, DX12) with the
 * adapter's own limits (not WebGPU's defaults: its 128 MiB storage-binding limit is smaller than
 * a 7B model's head). NULL on failure, err receives why. */
lr_gpu *lr_gpu_open(const char *lib_path, const char *shader_dir, char *err, int32_t err_len);
void lr_gpu_close(lr_gpu *g);
/* "device | backend | driver" of the adapter */
int32_t lr_gpu_adapter_info(const lr_gpu *g, char *out, int32_t len);
/* the last error the device reported (empty if none) */
int32_t lr_gpu_error(const lr_gpu *g, char *out, int32_t len);
/* best-of-reps bandwidth (bytes/s, read + written) of device-to-device copies of `bytes`; -1 on error */
double lr_gpu_copy_bandwidth(lr_gpu *g, int64_t bytes, int32_t reps);
/* the selection kernel of the models made from now on and of lr_gpu_test_select: 1 select_sg.wgsl
 * (subgroup operations; the default where the adapter grants them, unless LAROSA_GPU_SUBGROUPS=0),
 * 0 select.wgsl; LR_ETYPE when the adapter has no subgroups. on < 0: which one is in use (1, 0) */
int32_t lr_gpu_use_subgroups(lr_gpu *g, int32_t on);
/* the Q8_0 / Q4_0 matvec of the models made from now on and of lr_gpu_test_spmv: 2 mv_q8d / mv_q4d
 * (integer dots; the default, unless LAROSA_GPU_PIPELINED is 0 or 1), 1 mv_q8p / mv_q4p, 0 mv_q8 /
 * mv_q4; on < 0: which one is in use */
int32_t lr_gpu_use_pipelined_matvec(lr_gpu *g, int32_t on);
/* the adapter's maxStorageBufferBindingSize (bytes) */
int64_t lr_gpu_max_binding(const lr_gpu *g);

/* The model of desc on the device: every weight uploaded once (desc's memory is not kept), a KV
 * cache of n_ctx positions of type_k / type_v (LR_F32 or LR_F16). Dense until a selection is set.
 * The model keeps g, which must outlive it. */
lr_gpu_model *lr_gpu_model_new(lr_gpu *g, const lr_model_desc *desc, int32_t n_ctx, int32_t type_k, int32_t type_v,
                               char *err, int32_t err_len);
void lr_gpu_model_free(lr_gpu_model *m);
/* as lr_model_set_selection / lr_model_set_budget (larosa.h) */
int32_t lr_gpu_model_set_selection(lr_gpu_model *m, const int32_t *k, const float *threshold);
int32_t lr_gpu_model_set_budget(lr_gpu_model *m, const float *plan, const float *cost);
/* as lr_eval: tokens are evaluated one at a time (the decode step), back to back in the queue;
 * logits are read back for the last token, or for every token when all_logits */
int32_t lr_gpu_eval(lr_gpu_model *m, const int32_t *tokens, int32_t n, int32_t pos0, float *logits, int32_t all_logits);
int32_t lr_gpu_model_rows_read(lr_gpu_model *m, uint64_t *out, int32_t reset);
/* bytes of the device buffers (weights, KV cache, activations) */
int64_t lr_gpu_model_bytes(const lr_gpu_model *m);
/* the inputs (ascending) that block input `block` of `layer` selected for the last token: their
 * count, at most cap of them into idx */
int32_t lr_gpu_model_selection(lr_gpu_model *m, int32_t layer, int32_t block, int32_t *idx, int32_t cap);

/* Per-kernel GPU time (timestamp queries while on: between the dispatches of the step's one pass
 * where the adapter grants timestamps inside passes, else each dispatch in its own pass): copies
 * min(n, 21) accumulated nanoseconds into out_ns in the order select, mv_q8, mv_q4, mv_f16, mv_f32,
 * red_store, red_add, red_swiglu, attend (with RoPE and the KV row), head_prep, head_q8, head_q4,
 * head_f16, head_f32, mv_q8p, mv_q4p, mv_q8d, mv_q4d, select1 (select_sg for n <= 4096), then the
 * host's nanoseconds encoding the step's commands and waiting for the logits (counted with
 * profiling off too); resets them, sets profiling on (enable 1) or off; returns the tokens timed,
 * or LR_ETYPE when the adapter has no timestamp queries */
int64_t lr_gpu_model_profile(lr_gpu_model *m, double *out_ns, int32_t n, int32_t enable);

/* Test hook: the last token's activations of the last layer: which 0 x (the residual, d), 1 q k v
 * after RoPE of q ((nh + 2 nkv) hd), 2 attention output (nh hd), 3 gate and up (2 ff), 4 swiglu (ff) */
int32_t lr_gpu_model_read(lr_gpu_model *m, int32_t which, float *out, int32_t n);

/* Kernel tests. lr_gpu_test_select: select.wgsl on x (n), score / gate optional (NULL), mode 0 Top-K
 * (k), 1 threshold (thr), 3 all; norm: RMS-normalize x first; quant: values as Q8_0 codes. Returns
 * the count; idx, vals (count each) and dx (n / 32, when quant) receive the selection.
 * lr_gpu_test_spmv: y = x W over the k rows idx (ascending) of an input-major W, as the decode step
 * computes it (x quantized per group of 32 selected inputs for the _IM types, as lr_spmv).
 * lr_gpu_test_head: logits = W RMSNorm(x) g (g optional) for an output-major head. */
int32_t lr_gpu_test_select(lr_gpu *g, const float *x, const float *score, const float *gate, int32_t n, int32_t mode,
                           int32_t k, float thr, int32_t quant, int32_t norm, float eps, int32_t *idx, float *vals,
                           float *dx);
int32_t lr_gpu_test_spmv(lr_gpu *g, const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, float *y);
int32_t lr_gpu_test_head(lr_gpu *g, const lr_tensor *w, const float *x, const float *gnorm, float eps, float *logits);

#endif

/* Shared by gpu_device.c (wgpu-native, device, pipelines) and gpu.c (the model and its step). */
#ifndef LAROSA_GPU_INTERNAL_H
#define LAROSA_GPU_INTERNAL_H
#define WGPU_SKIP_DECLARATIONS   /* nothing is linked: every function comes from dlsym */
#include "webgpu/webgpu.h"
#include "webgpu/wgpu.h"

#include "larosa.h"
#include "gpu.h"

/* the WebGPU functions used, as X(name): W.name has webgpu.h's type WGPUProc<name> */
#define WGPU_FUNCS(X)                                                                                \
    X(WGPUProcCreateInstance, CreateInstance) X(WGPUProcInstanceRequestAdapter, InstanceRequestAdapter) \
    X(WGPUProcInstanceProcessEvents, InstanceProcessEvents) X(WGPUProcInstanceRelease, InstanceRelease) \
    X(WGPUProcAdapterGetInfo, AdapterGetInfo) X(WGPUProcAdapterInfoFreeMembers, AdapterInfoFreeMembers) \
    X(WGPUProcAdapterGetLimits, AdapterGetLimits) X(WGPUProcAdapterRequestDevice, AdapterRequestDevice) \
    X(WGPUProcAdapterRelease, AdapterRelease) X(WGPUProcDeviceGetQueue, DeviceGetQueue)              \
    X(WGPUProcDeviceRelease, DeviceRelease)                                                          \
    X(WGPUProcDeviceCreateBindGroupLayout, DeviceCreateBindGroupLayout)                              \
    X(WGPUProcDeviceCreatePipelineLayout, DeviceCreatePipelineLayout)                                \
    X(WGPUProcDeviceCreateShaderModule, DeviceCreateShaderModule)                                    \
    X(WGPUProcDeviceCreateComputePipeline, DeviceCreateComputePipeline)                              \
    X(WGPUProcDeviceCreateBuffer, DeviceCreateBuffer) X(WGPUProcDeviceCreateBindGroup, DeviceCreateBindGroup) \
    X(WGPUProcDeviceCreateCommandEncoder, DeviceCreateCommandEncoder)                                \
    X(WGPUProcShaderModuleRelease, ShaderModuleRelease) X(WGPUProcComputePipelineRelease, ComputePipelineRelease) \
    X(WGPUProcPipelineLayoutRelease, PipelineLayoutRelease)                                          \
    X(WGPUProcBindGroupLayoutRelease, BindGroupLayoutRelease) X(WGPUProcBindGroupRelease, BindGroupRelease) \
    X(WGPUProcBufferGetMappedRange, BufferGetMappedRange)                                            \
    X(WGPUProcBufferGetConstMappedRange, BufferGetConstMappedRange) X(WGPUProcBufferUnmap, BufferUnmap) \
    X(WGPUProcBufferMapAsync, BufferMapAsync) X(WGPUProcBufferRelease, BufferRelease)                \
    X(WGPUProcBufferDestroy, BufferDestroy) X(WGPUProcQueueRelease, QueueRelease)                    \
    X(WGPUProcQueueSubmit, QueueSubmit) X(WGPUProcQueueWriteBuffer, QueueWriteBuffer)                \
    X(WGPUProcCommandEncoderBeginComputePass, CommandEncoderBeginComputePass)                        \
    X(WGPUProcCommandEncoderCopyBufferToBuffer, CommandEncoderCopyBufferToBuffer)                    \
    X(WGPUProcCommandEncoderClearBuffer, CommandEncoderClearBuffer)                                  \
    X(WGPUProcCommandEncoderFinish, CommandEncoderFinish) X(WGPUProcCommandEncoderRelease, CommandEncoderRelease) \
    X(WGPUProcCommandBufferRelease, CommandBufferRelease)                                            \
    X(WGPUProcComputePassEncoderSetPipeline, ComputePassEncoderSetPipeline)                          \
    X(WGPUProcComputePassEncoderSetBindGroup, ComputePassEncoderSetBindGroup)                        \
    X(WGPUProcComputePassEncoderDispatchWorkgroups, ComputePassEncoderDispatchWorkgroups)            \
    X(WGPUProcComputePassEncoderEnd, ComputePassEncoderEnd)                                          \
    X(WGPUProcComputePassEncoderRelease, ComputePassEncoderRelease)                                  \
    X(WGPUProcAdapterHasFeature, AdapterHasFeature) X(WGPUProcDeviceCreateQuerySet, DeviceCreateQuerySet)   \
    X(WGPUProcCommandEncoderResolveQuerySet, CommandEncoderResolveQuerySet)                          \
    X(WGPUProcQuerySetRelease, QuerySetRelease)                                                      \
    X(lr_proc_device_poll, DevicePoll) X(lr_proc_get_version, GetVersion)                             \
    X(lr_proc_pass_timestamp, ComputePassEncoderWriteTimestamp)

/* wgpu.h's native functions have no proc types */
typedef WGPUBool (*lr_proc_device_poll)(WGPUDevice, WGPUBool, WGPUSubmissionIndex const *);
typedef uint32_t (*lr_proc_get_version)(void);
typedef void (*lr_proc_pass_timestamp)(WGPUComputePassEncoder, WGPUQuerySet, uint32_t);

typedef struct {
#define X(type, name) type name;
    WGPU_FUNCS(X)
#undef X
} wgpu_api;
extern wgpu_api W;

/* bind group layouts (gpu_device.c's LAYOUTS) and pipelines (PIPES), one per kernel entry point */
enum { L_SELECT, L_MATVEC, L_REDUCE, L_ATTN, L_HEAD, L_COUNT };
enum { P_SELECT, P_MV_Q8, P_MV_Q4, P_MV_F16, P_MV_F32, P_RED_STORE, P_RED_ADD, P_RED_SWIGLU, P_ATTEND,
       P_HEAD_PREP, P_HEAD_Q8, P_HEAD_Q4, P_HEAD_F16, P_HEAD_F32, P_MV_Q8P, P_MV_Q4P, P_MV_Q8D, P_MV_Q4D, P_SELECT1,
       P_COUNT };

struct lr_gpu {
    void *lib;
    WGPUInstance instance;
    WGPUAdapter adapter;
    WGPUDevice device;
    WGPUQueue queue;
    WGPULimits limits;
    WGPUBindGroupLayout bgl[L_COUNT];
    WGPUPipelineLayout pl[L_COUNT];
    WGPUComputePipeline pipe[P_COUNT];
    char info[400];
    int failed;          /* the device reported an error: every later call returns LR_EGPU */
    int timestamps;      /* TimestampQuery granted: per-dispatch GPU times (lr_gpu_model_profile) */
    int ts_inside;       /* TimestampQueryInsidePasses granted: those times in the step's one pass */
    int subgroups;       /* subgroup operations granted: pipe[P_SELECT] may be select_sg.wgsl */
    WGPUComputePipeline sel_plain, sel_sg;   /* the two selections; pipe[P_SELECT] is one of them */
    /* pipe[P_SELECT1]: select_sg.wgsl with ONE (n <= 4096: keys in registers), or NULL */
    int mv_pipelined;    /* Q8_0 / Q4_0 matvecs: mv_q8d / mv_q4d (2, the default), mv_q8p / mv_q4p (1) or
                          * mv_q8 / mv_q4 (0) */
    int32_t models;      /* models on the device: lr_gpu_close waits for the last one's free */
    int closing;
    char error[1024];
};

typedef struct { WGPUBuffer buf; uint64_t off, size; } lr_gpu_slice;   /* size 0: the rest */
typedef struct { WGPUComputePipeline pipe; WGPUBindGroup bg; uint32_t x, y; } lr_gpu_dispatch;

/* workgroups of a head part of rows rows: head.wgsl's head_q8 / head_q4 take 64 rows (HR), the
 * float heads 8 */
static inline uint32_t lr_head_groups(int pipe, int32_t rows) {
    return pipe == P_HEAD_Q8 || pipe == P_HEAD_Q4 ? (uint32_t)(rows + 63) / 64 : (uint32_t)(rows + 7) / 8;
}

#define RED_COLS 32u   /* output columns per reduce.wgsl workgroup (its COLS) */
#define SLOT 256u   /* bytes per uniform slot (minUniformBufferOffsetAlignment <= 256) */
#define STORAGE (WGPUBufferUsage_Storage | WGPUBufferUsage_CopyDst | WGPUBufferUsage_CopySrc)

/* weights on the device (gpu.c): an input-major weight as stored (scale: the _IM types' table), and
 * the output-major head in parts of at most the storage-binding limit, Q8_0 / Q4_0 repacked */
typedef struct { WGPUBuffer codes, scale; int32_t type, rows, cols; } gweight;
typedef struct { WGPUBuffer codes, scale; int32_t row0, rows; } head_part;
int32_t lr_gpu_upload_weight(lr_gpu *g, const lr_tensor *t, gweight *w, int64_t *bytes, const char *what, char *err,
                             int32_t len);
void lr_gpu_free_weight(gweight *w);
int32_t lr_gpu_upload_head(lr_gpu *g, const lr_tensor *t, head_part **parts, int32_t *n_parts, int64_t *bytes,
                           char *err, int32_t len);
/* size bytes at off of a storage buffer, copied back to the host (waits) */
int32_t lr_gpu_read_back(lr_gpu *g, WGPUBuffer src, uint64_t off, uint64_t size, void *out);

/* the selection pipeline for n inputs: P_SELECT1 where select_sg.wgsl is in use and n <= 4096 */
int lr_gpu_select_pipe(const lr_gpu *g, int32_t n);
/* the matvec pipeline for a weight type, as g's settings choose */
int lr_gpu_mv_pipe(const lr_gpu *g, int32_t type);
void lr_gpu_flush(lr_gpu *g);
void lr_gpu_release(lr_gpu *g);   /* a model's free: closes g if lr_gpu_close came first */
/* a buffer of size bytes (rounded up to 16), filled with data when not NULL */
WGPUBuffer lr_gpu_buffer(lr_gpu *g, uint64_t size, WGPUBufferUsage usage, const void *data, const char *label);
/* a storage buffer mapped for filling: write into the returned pointer, then W.BufferUnmap */
void *lr_gpu_map_new(lr_gpu *g, uint64_t size, WGPUBuffer *out);
WGPUBindGroup lr_gpu_bind(lr_gpu *g, int layout, const lr_gpu_slice *s);
/* maps a MapRead buffer, waits, copies size bytes out */
int32_t lr_gpu_read(lr_gpu *g, WGPUBuffer staging, uint64_t size, void *out);
/* the dispatches in one compute pass of enc; with a query set, timestamp i + 1 after dispatch i
 * and 0 before the first (g->ts_inside), or else each dispatch in its own pass between the
 * timestamps 2 i and 2 i + 1 */
void lr_gpu_run(lr_gpu *g, const lr_gpu_dispatch *d, int32_t n, WGPUCommandEncoder enc, WGPUQuerySet qs);
WGPUCommandEncoder lr_gpu_encoder(lr_gpu *g);
void lr_gpu_submit(lr_gpu *g, WGPUCommandEncoder enc);   /* finishes, submits and releases enc */

#endif

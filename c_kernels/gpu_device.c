/* The device side of the GPU path: wgpu-native loaded at run time (dlopen), an adapter and device
 * with the adapter's limits, the WGSL pipelines with explicit bind group layouts, and the small
 * helpers that gpu.c's model uses (buffers, bind groups, submit and read back). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpu_internal.h"

/* ---- wgpu-native's functions, looked up by name ---------------------------------------------- */

wgpu_api W;

static int load_api(void *lib) {
#define X(type, name)                                                                                \
    if (!(W.name = (type)dlsym(lib, "wgpu" #name))) return 0;
    WGPU_FUNCS(X)
#undef X
    return 1;
}

static void set_err(char *err, int32_t len, const char *msg) {
    if (err && len > 0) snprintf(err, (size_t)len, "%s", msg);
}

static WGPUStringView sv(const char *s) { return (WGPUStringView){s, s ? strlen(s) : 0}; }

static void copy_sv(char *out, size_t cap, WGPUStringView v) {
    size_t n = v.data ? (v.length == WGPU_STRLEN ? strlen(v.data) : v.length) : 0;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(out, v.data, n);
    out[n] = 0;
}

/* ---- callbacks -------------------------------------------------------------------------------- */

static void on_error(WGPUDevice const *dev, WGPUErrorType type, WGPUStringView msg, void *u1, void *u2) {
    (void)dev, (void)u2;
    lr_gpu *g = u1;
    if (type == WGPUErrorType_NoError) return;
    g->failed = 1;
    if (!g->error[0]) copy_sv(g->error, sizeof g->error, msg);   /* keep the first: the others follow from it */
}

static void on_lost(WGPUDevice const *dev, WGPUDeviceLostReason reason, WGPUStringView msg, void *u1, void *u2) {
    (void)dev, (void)u2;
    lr_gpu *g = u1;
    if (reason == WGPUDeviceLostReason_Destroyed || reason == WGPUDeviceLostReason_CallbackCancelled) return;
    g->failed = 1;
    char m[400];
    copy_sv(m, sizeof m, msg);
    snprintf(g->error, sizeof g->error, "device lost: %s", m);
}

typedef struct { int done, ok; void *obj; char msg[400]; } wait_slot;

static void on_adapter(WGPURequestAdapterStatus st, WGPUAdapter a, WGPUStringView msg, void *u1, void *u2) {
    (void)u2;
    wait_slot *w = u1;
    w->done = 1, w->ok = st == WGPURequestAdapterStatus_Success, w->obj = a;
    copy_sv(w->msg, sizeof w->msg, msg);
}

static void on_device(WGPURequestDeviceStatus st, WGPUDevice d, WGPUStringView msg, void *u1, void *u2) {
    (void)u2;
    wait_slot *w = u1;
    w->done = 1, w->ok = st == WGPURequestDeviceStatus_Success, w->obj = d;
    copy_sv(w->msg, sizeof w->msg, msg);
}

static void on_map(WGPUMapAsyncStatus st, WGPUStringView msg, void *u1, void *u2) {
    (void)u2;
    wait_slot *w = u1;
    w->done = 1, w->ok = st == WGPUMapAsyncStatus_Success;
    copy_sv(w->msg, sizeof w->msg, msg);
}

/* ---- pipelines -------------------------------------------------------------------------------- */

/* binding kinds per layout, one letter per binding: u uniform, r read-only storage, w storage */
static const char *LAYOUTS[L_COUNT] = {"urrrwww", "urrrw", "urrrww", "urwrrwwww", "urrwrrw"};
static const struct { const char *file, *entry; int layout; } PIPES[P_COUNT] = {
    {"select.wgsl", "main", L_SELECT},
    {"matvec.wgsl", "mv_q8", L_MATVEC}, {"matvec.wgsl", "mv_q4", L_MATVEC},
    {"matvec.wgsl", "mv_f16", L_MATVEC}, {"matvec.wgsl", "mv_f32", L_MATVEC},
    {"reduce.wgsl", "red_store", L_REDUCE}, {"reduce.wgsl", "red_add", L_REDUCE},
    {"reduce.wgsl", "red_swiglu", L_REDUCE},
    {"attn.wgsl", "attend", L_ATTN},
    {"head.wgsl", "head_prep", L_HEAD}, {"head.wgsl", "head_q8", L_HEAD}, {"head.wgsl", "head_q4", L_HEAD},
    {"head.wgsl", "head_f16", L_HEAD}, {"head.wgsl", "head_f32", L_HEAD},
    {"matvec.wgsl", "mv_q8p", L_MATVEC}, {"matvec.wgsl", "mv_q4p", L_MATVEC},
    {"matvec.wgsl", "mv_q8d", L_MATVEC}, {"matvec.wgsl", "mv_q4d", L_MATVEC},
};

static char *read_file(const char *dir, const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n > 0 && n < (1 << 22) && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
            else buf[n] = 0;
        }
    }
    fclose(f);
    return buf;
}

static WGPUComputePipeline make_pipeline(lr_gpu *g, const char *dir, const char *file, const char *entry, int layout,
                                         const char *flag);

static int make_pipelines(lr_gpu *g, const char *dir, char *err, int32_t len) {
    char msg[1400];
    for (int l = 0; l < L_COUNT; l++) {
        WGPUBindGroupLayoutEntry e[12];
        const int n = (int)strlen(LAYOUTS[l]);
        for (int b = 0; b < n; b++) {
            e[b] = (WGPUBindGroupLayoutEntry)WGPU_BIND_GROUP_LAYOUT_ENTRY_INIT;
            e[b].binding = (uint32_t)b;
            e[b].visibility = WGPUShaderStage_Compute;
            e[b].buffer.type = LAYOUTS[l][b] == 'u' ? WGPUBufferBindingType_Uniform
                             : LAYOUTS[l][b] == 'r' ? WGPUBufferBindingType_ReadOnlyStorage : WGPUBufferBindingType_Storage;
        }
        WGPUBindGroupLayoutDescriptor d = WGPU_BIND_GROUP_LAYOUT_DESCRIPTOR_INIT;
        d.entryCount = (size_t)n, d.entries = e;
        g->bgl[l] = W.DeviceCreateBindGroupLayout(g->device, &d);
        WGPUPipelineLayoutDescriptor pd = WGPU_PIPELINE_LAYOUT_DESCRIPTOR_INIT;
        pd.bindGroupLayoutCount = 1, pd.bindGroupLayouts = &g->bgl[l];
        g->pl[l] = W.DeviceCreatePipelineLayout(g->device, &pd);
    }
    const char *loaded_name[P_COUNT] = {0};
    WGPUShaderModule mods[P_COUNT] = {0};
    int nmods = 0, rc = 1;
    for (int p = 0; p < P_COUNT && rc; p++) {
        if (p == P_SELECT1) continue;   /* below, with subgroups */
        WGPUShaderModule mod = NULL;
        const char *file = PIPES[p].file;
        for (int i = 0; i < nmods; i++)
            if (!strcmp(loaded_name[i], file)) mod = mods[i];
        if (!mod) {
            char *src = read_file(dir, file);
            if (!src) {
                snprintf(msg, sizeof msg, "cannot read the shader %s/%s", dir, PIPES[p].file);
                set_err(err, len, msg);
                rc = 0;
                break;
            }
            WGPUShaderSourceWGSL wgsl = WGPU_SHADER_SOURCE_WGSL_INIT;
            wgsl.code = sv(src);
            WGPUShaderModuleDescriptor md = WGPU_SHADER_MODULE_DESCRIPTOR_INIT;
            md.nextInChain = &wgsl.chain;
            md.label = sv(PIPES[p].file);
            mod = W.DeviceCreateShaderModule(g->device, &md);
            free(src);
            loaded_name[nmods] = file, mods[nmods++] = mod;
        }
        WGPUComputePipelineDescriptor cd = WGPU_COMPUTE_PIPELINE_DESCRIPTOR_INIT;
        cd.layout = g->pl[PIPES[p].layout];
        cd.compute.module = mod;
        cd.compute.entryPoint = sv(PIPES[p].entry);
        g->pipe[p] = W.DeviceCreateComputePipeline(g->device, &cd);
        lr_gpu_flush(g);
        if (g->failed) {
            snprintf(msg, sizeof msg, "shader %s (%s): %s", PIPES[p].file, PIPES[p].entry, g->error);
            set_err(err, len, msg);
            rc = 0;
        }
    }
    for (int i = 0; i < nmods; i++) W.ShaderModuleRelease(mods[i]);
    g->sel_plain = g->pipe[P_SELECT];
    /* "0": the matvecs without prefetch, "1": with prefetch but no integer dots (timing) */
    const char *mv_env = getenv("LAROSA_GPU_PIPELINED");
    g->mv_pipelined = mv_env && (!strcmp(mv_env, "0") || !strcmp(mv_env, "1")) ? atoi(mv_env) : 2;
    /* the selection with subgroup operations (select_sg.wgsl): 1024 threads, 12 KiB of workgroup
     * memory, subgroups of 4 lanes or more (WebGPU's minimum) */
    if (rc && g->subgroups && g->limits.maxComputeInvocationsPerWorkgroup >= 1024 &&
        g->limits.maxComputeWorkgroupSizeX >= 1024 && g->limits.maxComputeWorkgroupStorageSize >= 16384) {
        g->sel_sg = make_pipeline(g, dir, "select_sg.wgsl", "main", L_SELECT, NULL);
        /* n <= 4096 (3 of the 4 selections of a 7B layer): a lane's keys stay in registers; a
         * pipeline of its own, so that the others keep their registers (H200: 14.7 against 16.3 us
         * at n = 4096; the one kernel with both paths took 33.8 against 29.1 at 11008) */
        if (g->sel_sg) g->pipe[P_SELECT1] = make_pipeline(g, dir, "select_sg.wgsl", "main", L_SELECT, "ONE");
        const char *env = getenv("LAROSA_GPU_SUBGROUPS");   /* "0": the plain selection (timing) */
        if (g->sel_sg && !(env && !strcmp(env, "0"))) g->pipe[P_SELECT] = g->sel_sg;
        if (g->failed) {
            snprintf(msg, sizeof msg, "shader select_sg.wgsl: %s", g->error);
            set_err(err, len, msg);
            rc = 0;
        }
    }
    return rc;
}

/* one pipeline of a shader file of its own */
/* flag: an override constant set to true (NULL: none) */
static WGPUComputePipeline make_pipeline(lr_gpu *g, const char *dir, const char *file, const char *entry, int layout,
                                         const char *flag) {
    char *src = read_file(dir, file);
    if (!src) return NULL;
    WGPUShaderSourceWGSL wgsl = WGPU_SHADER_SOURCE_WGSL_INIT;
    wgsl.code = sv(src);
    WGPUShaderModuleDescriptor md = WGPU_SHADER_MODULE_DESCRIPTOR_INIT;
    md.nextInChain = &wgsl.chain;
    md.label = sv(file);
    WGPUShaderModule mod = W.DeviceCreateShaderModule(g->device, &md);
    free(src);
    WGPUComputePipelineDescriptor cd = WGPU_COMPUTE_PIPELINE_DESCRIPTOR_INIT;
    cd.layout = g->pl[layout];
    cd.compute.module = mod;
    cd.compute.entryPoint = sv(entry);
    WGPUConstantEntry ce = WGPU_CONSTANT_ENTRY_INIT;
    if (flag) {
        ce.key = sv(flag), ce.value = 1.0;
        cd.compute.constantCount = 1, cd.compute.constants = &ce;
    }
    WGPUComputePipeline p = W.DeviceCreateComputePipeline(g->device, &cd);
    W.ShaderModuleRelease(mod);
    lr_gpu_flush(g);
    return p;
}

int32_t lr_gpu_use_pipelined_matvec(lr_gpu *g, int32_t on) {
    if (!g) return LR_EARG;
    if (on < 0) return g->mv_pipelined;
    g->mv_pipelined = on < 0 ? 0 : on > 2 ? 2 : on;
    return LR_OK;
}

int lr_gpu_mv_pipe(const lr_gpu *g, int32_t type) {
    if (type == LR_Q8_0_IM) return g->mv_pipelined == 2 ? P_MV_Q8D : g->mv_pipelined ? P_MV_Q8P : P_MV_Q8;
    if (type == LR_Q4_0_IM) return g->mv_pipelined == 2 ? P_MV_Q4D : g->mv_pipelined ? P_MV_Q4P : P_MV_Q4;
    return type == LR_F16 ? P_MV_F16 : P_MV_F32;
}

int lr_gpu_select_pipe(const lr_gpu *g, int32_t n) {
    return n <= 4096 && g->pipe[P_SELECT1] && g->pipe[P_SELECT] == g->sel_sg ? P_SELECT1 : P_SELECT;
}

int32_t lr_gpu_use_subgroups(lr_gpu *g, int32_t on) {
    if (!g) return LR_EARG;
    if (on < 0) return g->pipe[P_SELECT] == g->sel_sg && g->sel_sg;
    if (on && !g->sel_sg) return LR_ETYPE;
    g->pipe[P_SELECT] = on ? g->sel_sg : g->sel_plain;
    return LR_OK;
}

/* ---- open / close ----------------------------------------------------------------------------- */

static void destroy(lr_gpu *g);

lr_gpu *lr_gpu_open(const char *lib_path, const char *shader_dir, char *err, int32_t err_len) {
    char msg[600];
    if (!lib_path || !shader_dir) { set_err(err, err_len, "no library path or shader folder"); return NULL; }
    void *lib = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(msg, sizeof msg, "cannot load wgpu-native (%s): %s", lib_path, dlerror());
        set_err(err, err_len, msg);
        return NULL;
    }
    if (!load_api(lib)) {
        set_err(err, err_len, "wgpu-native lacks a function of webgpu.h as larosa was built against it "
                              "(another wgpu version than the `gpu` extra's)");
        dlclose(lib);
        return NULL;
    }
    lr_gpu *g = calloc(1, sizeof *g);
    if (!g) { dlclose(lib); set_err(err, err_len, "out of memory"); return NULL; }
    g->lib = lib;
    WGPUInstanceExtras extras;
    memset(&extras, 0, sizeof extras);
    extras.chain.sType = (WGPUSType)WGPUSType_InstanceExtras;
    extras.backends = WGPUInstanceBackend_Primary;   /* Vulkan, Metal, DX12: not GL */
    WGPUInstanceDescriptor idesc = WGPU_INSTANCE_DESCRIPTOR_INIT;
    idesc.nextInChain = &extras.chain;
    g->instance = W.CreateInstance(&idesc);
    if (!g->instance) { set_err(err, err_len, "wgpuCreateInstance failed"); lr_gpu_close(g); return NULL; }

    wait_slot ws = {0};
    WGPURequestAdapterOptions ao = WGPU_REQUEST_ADAPTER_OPTIONS_INIT;
    ao.powerPreference = WGPUPowerPreference_HighPerformance;
    WGPURequestAdapterCallbackInfo aci = WGPU_REQUEST_ADAPTER_CALLBACK_INFO_INIT;
    aci.mode = WGPUCallbackMode_AllowProcessEvents, aci.callback = on_adapter, aci.userdata1 = &ws;
    W.InstanceRequestAdapter(g->instance, &ao, aci);
    for (int i = 0; i < 1000 && !ws.done; i++) W.InstanceProcessEvents(g->instance);
    if (!ws.ok || !ws.obj) {
        snprintf(msg, sizeof msg, "no WebGPU adapter (Vulkan, Metal or DX12 device)%s%s", ws.msg[0] ? ": " : "", ws.msg);
        set_err(err, err_len, msg);
        destroy(g);
        return NULL;
    }
    g->adapter = ws.obj;
    WGPUAdapterInfo info = WGPU_ADAPTER_INFO_INIT;
    if (W.AdapterGetInfo(g->adapter, &info) == WGPUStatus_Success) {
        char dev[200], drv[200];
        copy_sv(dev, sizeof dev, info.device);
        copy_sv(drv, sizeof drv, info.description);
        static const char *backends[] = {"?", "null", "WebGPU", "D3D11", "D3D12", "Metal", "Vulkan", "OpenGL", "OpenGLES"};
        const unsigned b = (unsigned)info.backendType;
        snprintf(g->info, sizeof g->info, "%s | %s | %s", dev, b < 9 ? backends[b] : "?", drv);
        W.AdapterInfoFreeMembers(info);
    }
    g->limits = (WGPULimits)WGPU_LIMITS_INIT;
    if (W.AdapterGetLimits(g->adapter, &g->limits) != WGPUStatus_Success) {
        set_err(err, err_len, "cannot read the adapter's limits");
        destroy(g);
        return NULL;
    }
    ws = (wait_slot){0};
    WGPUDeviceDescriptor dd = WGPU_DEVICE_DESCRIPTOR_INIT;
    dd.requiredLimits = &g->limits;   /* the adapter's, not the defaults */
    WGPUFeatureName feats[3];
    size_t nf = 0;
    if ((g->timestamps = W.AdapterHasFeature(g->adapter, WGPUFeatureName_TimestampQuery) != 0))
        feats[nf++] = WGPUFeatureName_TimestampQuery;
    /* timestamps between a pass's dispatches: the profile of the step as it runs (one pass) */
    if (g->timestamps && (g->ts_inside = W.AdapterHasFeature(g->adapter,
                                                            (WGPUFeatureName)WGPUNativeFeature_TimestampQueryInsidePasses) != 0))
        feats[nf++] = (WGPUFeatureName)WGPUNativeFeature_TimestampQueryInsidePasses;
    if ((g->subgroups = W.AdapterHasFeature(g->adapter, (WGPUFeatureName)WGPUNativeFeature_Subgroup) != 0))
        feats[nf++] = (WGPUFeatureName)WGPUNativeFeature_Subgroup;
    dd.requiredFeatureCount = nf, dd.requiredFeatures = feats;
    dd.uncapturedErrorCallbackInfo.callback = on_error;
    dd.uncapturedErrorCallbackInfo.userdata1 = g;
    dd.deviceLostCallbackInfo.mode = WGPUCallbackMode_AllowProcessEvents;
    dd.deviceLostCallbackInfo.callback = on_lost;
    dd.deviceLostCallbackInfo.userdata1 = g;
    WGPURequestDeviceCallbackInfo dci = WGPU_REQUEST_DEVICE_CALLBACK_INFO_INIT;
    dci.mode = WGPUCallbackMode_AllowProcessEvents, dci.callback = on_device, dci.userdata1 = &ws;
    W.AdapterRequestDevice(g->adapter, &dd, dci);
    for (int i = 0; i < 1000 && !ws.done; i++) W.InstanceProcessEvents(g->instance);
    if (!ws.ok || !ws.obj) {
        snprintf(msg, sizeof msg, "cannot open the device: %s", ws.msg);
        set_err(err, err_len, msg);
        destroy(g);
        return NULL;
    }
    g->device = ws.obj;
    g->queue = W.DeviceGetQueue(g->device);
    if (!make_pipelines(g, shader_dir, err, err_len)) {
        destroy(g);
        return NULL;
    }
    return g;
}

static void destroy(lr_gpu *g) {
    for (int p = 0; p < P_COUNT; p++)
        if (g->pipe[p] && (p != P_SELECT || (g->pipe[p] != g->sel_plain && g->pipe[p] != g->sel_sg)))
            W.ComputePipelineRelease(g->pipe[p]);
    if (g->sel_plain) W.ComputePipelineRelease(g->sel_plain);
    if (g->sel_sg) W.ComputePipelineRelease(g->sel_sg);
    for (int l = 0; l < L_COUNT; l++) {
        if (g->pl[l]) W.PipelineLayoutRelease(g->pl[l]);
        if (g->bgl[l]) W.BindGroupLayoutRelease(g->bgl[l]);
    }
    if (g->queue) W.QueueRelease(g->queue);
    if (g->device) W.DeviceRelease(g->device);
    if (g->adapter) W.AdapterRelease(g->adapter);
    if (g->instance) W.InstanceRelease(g->instance);
    /* the library stays loaded: wgpu-native's threads may still run its code */
    free(g);
}

/* Python may free the device before its models (at exit, in any order): the last one closes it */
void lr_gpu_close(lr_gpu *g) {
    if (!g) return;
    if (g->models > 0) g->closing = 1;
    else destroy(g);
}

void lr_gpu_release(lr_gpu *g) {
    if (--g->models == 0 && g->closing) destroy(g);
}

int32_t lr_gpu_adapter_info(const lr_gpu *g, char *out, int32_t len) {
    if (!g || !out || len < 1) return LR_EARG;
    snprintf(out, (size_t)len, "%s", g->info);
    return LR_OK;
}

int32_t lr_gpu_error(const lr_gpu *g, char *out, int32_t len) {
    if (!g || !out || len < 1) return LR_EARG;
    snprintf(out, (size_t)len, "%s", g->error);
    return LR_OK;
}

int64_t lr_gpu_max_binding(const lr_gpu *g) { return g ? (int64_t)g->limits.maxStorageBufferBindingSize : LR_EARG; }

/* ---- helpers for gpu.c -------------------------------------------------------------------------- */

void lr_gpu_flush(lr_gpu *g) {   /* runs callbacks: errors of the calls so far reach g->error */
    W.DevicePoll(g->device, 0, NULL);
    W.InstanceProcessEvents(g->instance);
}

WGPUBuffer lr_gpu_buffer(lr_gpu *g, uint64_t size, WGPUBufferUsage usage, const void *data, const char *label) {
    WGPUBufferDescriptor d = WGPU_BUFFER_DESCRIPTOR_INIT;
    d.label = sv(label);
    d.size = (size + 15) / 16 * 16;
    d.usage = usage;
    d.mappedAtCreation = data != NULL;
    WGPUBuffer b = W.DeviceCreateBuffer(g->device, &d);
    if (!b) return NULL;
    if (data) {
        void *p = W.BufferGetMappedRange(b, 0, (size_t)d.size);
        if (!p) { W.BufferRelease(b); return NULL; }
        memcpy(p, data, (size_t)size);
        if (d.size > size) memset((char *)p + size, 0, (size_t)(d.size - size));
        W.BufferUnmap(b);
    }
    return b;
}

void *lr_gpu_map_new(lr_gpu *g, uint64_t size, WGPUBuffer *out) {
    WGPUBufferDescriptor d = WGPU_BUFFER_DESCRIPTOR_INIT;
    d.size = (size + 15) / 16 * 16;
    d.usage = WGPUBufferUsage_Storage | WGPUBufferUsage_CopyDst | WGPUBufferUsage_CopySrc;
    d.mappedAtCreation = 1;
    *out = W.DeviceCreateBuffer(g->device, &d);
    if (!*out) return NULL;
    void *p = W.BufferGetMappedRange(*out, 0, (size_t)d.size);
    if (!p) { W.BufferRelease(*out); *out = NULL; }
    return p;
}

WGPUBindGroup lr_gpu_bind(lr_gpu *g, int layout, const lr_gpu_slice *s) {
    WGPUBindGroupEntry e[12];
    const int n = (int)strlen(LAYOUTS[layout]);
    for (int b = 0; b < n; b++) {
        e[b] = (WGPUBindGroupEntry)WGPU_BIND_GROUP_ENTRY_INIT;
        e[b].binding = (uint32_t)b;
        e[b].buffer = s[b].buf;
        e[b].offset = s[b].off;
        e[b].size = s[b].size ? s[b].size : WGPU_WHOLE_SIZE;
    }
    WGPUBindGroupDescriptor d = WGPU_BIND_GROUP_DESCRIPTOR_INIT;
    d.layout = g->bgl[layout], d.entryCount = (size_t)n, d.entries = e;
    return W.DeviceCreateBindGroup(g->device, &d);
}

int32_t lr_gpu_read(lr_gpu *g, WGPUBuffer staging, uint64_t size, void *out) {
    wait_slot ws = {0};
    WGPUBufferMapCallbackInfo ci = WGPU_BUFFER_MAP_CALLBACK_INFO_INIT;
    ci.mode = WGPUCallbackMode_AllowProcessEvents, ci.callback = on_map, ci.userdata1 = &ws;
    W.BufferMapAsync(staging, WGPUMapMode_Read, 0, (size_t)((size + 15) / 16 * 16), ci);
    while (!ws.done && !g->failed) {
        W.DevicePoll(g->device, 1, NULL);
        W.InstanceProcessEvents(g->instance);
    }
    if (!ws.ok) {
        if (!g->error[0]) snprintf(g->error, sizeof g->error, "reading back failed: %s", ws.msg);
        g->failed = 1;
        return LR_EGPU;
    }
    const void *p = W.BufferGetConstMappedRange(staging, 0, (size_t)((size + 15) / 16 * 16));
    if (p) memcpy(out, p, (size_t)size);
    W.BufferUnmap(staging);
    return p ? LR_OK : LR_EGPU;
}

void lr_gpu_run(lr_gpu *g, const lr_gpu_dispatch *d, int32_t n, WGPUCommandEncoder enc, WGPUQuerySet qs) {
    WGPUComputePassDescriptor pd = WGPU_COMPUTE_PASS_DESCRIPTOR_INIT;
    if (qs && g->ts_inside) {   /* profiling: a timestamp after each dispatch of the one pass */
        WGPUComputePassEncoder pass = W.CommandEncoderBeginComputePass(enc, &pd);
        W.ComputePassEncoderWriteTimestamp(pass, qs, 0);
        for (int32_t i = 0; i < n; i++) {
            W.ComputePassEncoderSetPipeline(pass, d[i].pipe);
            W.ComputePassEncoderSetBindGroup(pass, 0, d[i].bg, 0, NULL);
            W.ComputePassEncoderDispatchWorkgroups(pass, d[i].x, d[i].y, 1);
            W.ComputePassEncoderWriteTimestamp(pass, qs, (uint32_t)(i + 1));
        }
        W.ComputePassEncoderEnd(pass);
        W.ComputePassEncoderRelease(pass);
        return;
    }
    if (qs) {   /* profiling: a pass per dispatch, timed on the GPU */
        for (int32_t i = 0; i < n; i++) {
            WGPUPassTimestampWrites tw = WGPU_PASS_TIMESTAMP_WRITES_INIT;
            tw.querySet = qs, tw.beginningOfPassWriteIndex = (uint32_t)(2 * i), tw.endOfPassWriteIndex = (uint32_t)(2 * i + 1);
            pd.timestampWrites = &tw;
            WGPUComputePassEncoder pass = W.CommandEncoderBeginComputePass(enc, &pd);
            W.ComputePassEncoderSetPipeline(pass, d[i].pipe);
            W.ComputePassEncoderSetBindGroup(pass, 0, d[i].bg, 0, NULL);
            W.ComputePassEncoderDispatchWorkgroups(pass, d[i].x, d[i].y, 1);
            W.ComputePassEncoderEnd(pass);
            W.ComputePassEncoderRelease(pass);
        }
        return;
    }
    WGPUComputePassEncoder pass = W.CommandEncoderBeginComputePass(enc, &pd);
    WGPUComputePipeline cur = NULL;
    for (int32_t i = 0; i < n; i++) {
        if (d[i].pipe != cur) W.ComputePassEncoderSetPipeline(pass, cur = d[i].pipe);
        W.ComputePassEncoderSetBindGroup(pass, 0, d[i].bg, 0, NULL);
        W.ComputePassEncoderDispatchWorkgroups(pass, d[i].x, d[i].y, 1);
    }
    W.ComputePassEncoderEnd(pass);
    W.ComputePassEncoderRelease(pass);
}

void lr_gpu_submit(lr_gpu *g, WGPUCommandEncoder enc) {
    WGPUCommandBufferDescriptor cd = WGPU_COMMAND_BUFFER_DESCRIPTOR_INIT;
    WGPUCommandBuffer cb = W.CommandEncoderFinish(enc, &cd);
    W.QueueSubmit(g->queue, 1, &cb);
    W.CommandBufferRelease(cb);
    W.CommandEncoderRelease(enc);
}

WGPUCommandEncoder lr_gpu_encoder(lr_gpu *g) {
    WGPUCommandEncoderDescriptor ed = WGPU_COMMAND_ENCODER_DESCRIPTOR_INIT;
    return W.DeviceCreateCommandEncoder(g->device, &ed);
}

/* ---- the device's memory bandwidth ---------------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double lr_gpu_copy_bandwidth(lr_gpu *g, int64_t bytes, int32_t reps) {
    if (!g || g->failed || bytes < 1024 || reps < 1) return -1.0;
    bytes = bytes / 256 * 256;
    const int copies = 8;   /* per submission: the submit and wait amortized */
    WGPUBuffer a = lr_gpu_buffer(g, (uint64_t)bytes, WGPUBufferUsage_CopySrc | WGPUBufferUsage_CopyDst, NULL, "bw");
    WGPUBuffer b = lr_gpu_buffer(g, (uint64_t)bytes, WGPUBufferUsage_CopySrc | WGPUBufferUsage_CopyDst, NULL, "bw");
    double best = -1.0;
    for (int32_t r = 0; a && b && r <= reps && !g->failed; r++) {   /* r = 0: warm-up */
        WGPUCommandEncoder enc = lr_gpu_encoder(g);
        for (int c = 0; c < copies; c++)
            W.CommandEncoderCopyBufferToBuffer(enc, c % 2 ? b : a, 0, c % 2 ? a : b, 0, (uint64_t)bytes);
        const double t0 = now_s();
        lr_gpu_submit(g, enc);
        W.DevicePoll(g->device, 1, NULL);
        const double bw = 2.0 * (double)bytes * copies / (now_s() - t0);   /* bytes read + written */
        if (r > 0 && bw > best) best = bw;
    }
    if (a) W.BufferRelease(a);
    if (b) W.BufferRelease(b);
    lr_gpu_flush(g);
    return g->failed ? -1.0 : best;
}

/* Kernel test hooks (gpu.h): one kernel at a time on data the caller gives, so that tests compare it
 * with numpy and the CPU kernels. Each call makes its own buffers and bind groups and frees them. */
#include <float.h>
#include <stdlib.h>

#include "gpu_internal.h"
#include "kernels.h"

typedef struct { WGPUBuffer b[12]; int n; } owned;

static WGPUBuffer own(owned *o, WGPUBuffer b) {
    if (b && o->n < 12) o->b[o->n++] = b;
    return b;
}

static void release(lr_gpu *g, owned *o, WGPUBindGroup *bg, int nbg) {
    for (int i = 0; i < nbg; i++)
        if (bg[i]) W.BindGroupRelease(bg[i]);
    for (int i = 0; i < o->n; i++) W.BufferRelease(o->b[i]);
    lr_gpu_flush(g);
}

static WGPUBuffer store(lr_gpu *g, owned *o, const void *data, uint64_t size) {
    return own(o, lr_gpu_buffer(g, size ? size : 16, STORAGE, size ? data : NULL, "test"));
}

static int32_t run(lr_gpu *g, const lr_gpu_dispatch *d, int32_t n) {
    WGPUCommandEncoder enc = lr_gpu_encoder(g);
    lr_gpu_run(g, d, n, enc, NULL);
    lr_gpu_submit(g, enc);
    lr_gpu_flush(g);
    return g->failed ? LR_EGPU : LR_OK;
}

static lr_gpu_slice S(WGPUBuffer b) { return (lr_gpu_slice){b, 0, 0}; }

int32_t lr_gpu_test_select(lr_gpu *g, const float *x, const float *score, const float *gate, int32_t n, int32_t mode,
                           int32_t k, float thr, int32_t quant, int32_t norm, float eps, int32_t *idx, float *vals,
                           float *dx) {
    if (!g || !x || !idx || !vals || n < 32 || n % 32 || n > 32768 || (mode != 0 && mode != 1 && mode != 3) ||
        (quant && !dx))
        return LR_EARG;
    if (g->failed) return LR_EGPU;
    struct { uint32_t n, mode, k, quant, norm, key_kind, has_score, stat; float thr, eps, plan, cost, remain;
             uint32_t first, last, pad; } p = {(uint32_t)n, (uint32_t)mode, (uint32_t)k, (uint32_t)quant, (uint32_t)norm,
                                               gate != NULL, score != NULL, 0, thr, eps, 0, 0, 0, 0, 0, 0};
    owned o = {0};
    const uint64_t sel_bytes = (4 + 2 * (uint64_t)n + (uint64_t)n / 32) * 4;
    lr_gpu_slice s[7] = {S(own(&o, lr_gpu_buffer(g, SLOT, WGPUBufferUsage_Uniform | WGPUBufferUsage_CopyDst, &p, "p"))),
                         S(store(g, &o, x, (uint64_t)n * 4)), S(store(g, &o, score, score ? (uint64_t)n * 4 : 16)),
                         S(store(g, &o, gate, gate ? (uint64_t)n * 4 : 16)), S(store(g, &o, NULL, sel_bytes)),
                         S(store(g, &o, NULL, 32)), S(store(g, &o, NULL, (uint64_t)n * 4))};
    for (int i = 0; i < 7; i++)
        if (!s[i].buf) { release(g, &o, NULL, 0); return LR_ENOMEM; }
    WGPUBindGroup bg = lr_gpu_bind(g, L_SELECT, s);
    lr_gpu_dispatch d = {g->pipe[lr_gpu_select_pipe(g, n)], bg, 1, 1};
    int32_t rc = run(g, &d, 1);
    uint32_t *out = malloc(sel_bytes);
    if (rc == LR_OK && !out) rc = LR_ENOMEM;
    if (rc == LR_OK) rc = lr_gpu_read_back(g, s[4].buf, 0, sel_bytes, out);
    if (rc == LR_OK) {
        rc = (int32_t)out[0];
        for (int32_t j = 0; j < rc && j < n; j++) {
            idx[j] = (int32_t)out[4 + j];
            memcpy(&vals[j], &out[4 + n + j], 4);
        }
        if (quant) memcpy(dx, out + 4 + 2 * n, (size_t)n / 32 * 4);
    }
    free(out);
    release(g, &o, &bg, 1);
    return rc;
}

/* the selection words of select.wgsl for inputs idx of x, quantized as lr_qsel_build for _IM types */
static uint32_t *host_selection(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, uint64_t *bytes) {
    const int32_t n = w->rows;
    *bytes = (4 + 2 * (uint64_t)n + (uint64_t)n / 32) * 4;
    uint32_t *s = calloc(1, *bytes);
    if (!s) return NULL;
    s[0] = (uint32_t)k;
    float *v = (float *)(s + 4 + n), *dx = (float *)(s + 4 + 2 * n);
    for (int32_t j = 0; j < k; j++) s[4 + j] = (uint32_t)idx[j], v[j] = x[idx[j]];
    if (w->type != LR_Q8_0_IM && w->type != LR_Q4_0_IM) return s;
    for (int32_t j = 0; j < k; j++) {   /* max |x| per group over the selected inputs */
        const float a = fabsf(x[idx[j]]);
        float *m = &dx[idx[j] / 32];
        *m = a > *m || a != a ? a : *m;
    }
    for (int32_t gi = 0; gi < n / 32; gi++) dx[gi] = dx[gi] <= FLT_MAX ? dx[gi] / 127.0f : NAN;
    for (int32_t j = 0; j < k; j++) {
        const float d = dx[idx[j] / 32];
        float id = d > 0.0f ? 1.0f / d : 0.0f;
        id = id <= FLT_MAX ? id : 0.0f;
        const float r = nearbyintf(x[idx[j]] * id);
        v[j] = r >= 127.0f ? 127.0f : r <= -127.0f ? -127.0f : r == r ? r : 0.0f;
    }
    return s;
}

int32_t lr_gpu_test_spmv(lr_gpu *g, const lr_tensor *w, const float *x, const int32_t *idx, int32_t k, float *y) {
    if (!g || !w || !x || !idx || !y || k < 0 || k > w->rows) return LR_EARG;
    if (g->failed) return LR_EGPU;
    for (int32_t j = 0; j < k; j++)
        if (idx[j] < 0 || idx[j] >= w->rows || (j && idx[j] <= idx[j - 1])) return LR_ERANGE;
    gweight gw = {0};
    int64_t bytes = 0;
    char err[200];
    int32_t rc = lr_gpu_upload_weight(g, w, &gw, &bytes, "test weight", err, sizeof err);
    if (rc) { lr_gpu_free_weight(&gw); return rc; }
    uint64_t sb;
    uint32_t *sel = host_selection(w, x, idx, k, &sb);
    const uint32_t R = 256, chunks = (uint32_t)((w->rows + R - 1) / R);
    const uint32_t mp[4] = {(uint32_t)w->rows, (uint32_t)w->cols, R, 0}, rp[4] = {(uint32_t)w->cols, R, 0, 0};
    owned o = {0};
    WGPUBuffer selb = store(g, &o, sel, sb), part = store(g, &o, NULL, (uint64_t)chunks * w->cols * 4);
    WGPUBuffer out = store(g, &o, NULL, (uint64_t)w->cols * 4), dummy = store(g, &o, NULL, 16), dummy_w = store(g, &o, NULL, 16);
    WGPUBuffer pm = own(&o, lr_gpu_buffer(g, SLOT, WGPUBufferUsage_Uniform | WGPUBufferUsage_CopyDst, mp, "p"));
    WGPUBuffer pr = own(&o, lr_gpu_buffer(g, SLOT, WGPUBufferUsage_Uniform | WGPUBufferUsage_CopyDst, rp, "p"));
    if (!sel || !selb || !part || !out || !dummy || !dummy_w || !pm || !pr) {
        free(sel);
        release(g, &o, NULL, 0);
        lr_gpu_free_weight(&gw);
        return LR_ENOMEM;
    }
    free(sel);
    lr_gpu_slice ms[5] = {S(pm), S(selb), S(gw.codes), S(gw.scale ? gw.scale : dummy), S(part)};
    lr_gpu_slice rs[6] = {S(pr), S(selb), S(part), S(dummy), S(out), S(dummy_w)};
    WGPUBindGroup bg[2] = {lr_gpu_bind(g, L_MATVEC, ms), lr_gpu_bind(g, L_REDUCE, rs)};
    const int pipe = lr_gpu_mv_pipe(g, w->type);
    lr_gpu_dispatch d[2] = {{g->pipe[pipe], bg[0], (uint32_t)(w->cols + 1023) / 1024, chunks},
                            {g->pipe[P_RED_STORE], bg[1], (uint32_t)(w->cols + RED_COLS - 1) / RED_COLS, 1}};
    rc = run(g, d, 2);
    if (rc == LR_OK) rc = lr_gpu_read_back(g, out, 0, (uint64_t)w->cols * 4, y);
    release(g, &o, bg, 2);
    lr_gpu_free_weight(&gw);
    return rc;
}

int32_t lr_gpu_test_head(lr_gpu *g, const lr_tensor *w, const float *x, const float *gnorm, float eps, float *logits) {
    if (!g || !w || !x || !logits || w->rows < 1 || w->cols < 64) return LR_EARG;
    if (g->failed) return LR_EGPU;
    head_part *parts = NULL;
    int32_t np = 0;
    int64_t bytes = 0;
    char err[200];
    int32_t rc = lr_gpu_upload_head(g, w, &parts, &np, &bytes, err, sizeof err);
    owned o = {0};
    WGPUBindGroup bg[64] = {0};
    lr_gpu_dispatch d[64];
    const int quant = w->type == LR_Q8_0 || w->type == LR_Q4_0;
    WGPUBuffer xb = store(g, &o, x, (uint64_t)w->cols * 4), gb = store(g, &o, gnorm, gnorm ? (uint64_t)w->cols * 4 : 16);
    WGPUBuffer hq = store(g, &o, NULL, ((uint64_t)w->cols + w->cols / 32) * 4), lg = store(g, &o, NULL, (uint64_t)w->rows * 4);
    WGPUBuffer dummy = store(g, &o, NULL, 16);
    if (rc == LR_OK && (!xb || !gb || !hq || !lg || !dummy || np > 63)) rc = LR_ENOMEM;
    for (int32_t i = -1; rc == LR_OK && i < np; i++) {
        const head_part *hp = &parts[i < 0 ? 0 : i];
        const struct { uint32_t rows, cols, row0, has_norm; float eps; uint32_t quant, pad0, pad1; } p = {
            (uint32_t)hp->rows, (uint32_t)w->cols, (uint32_t)hp->row0, gnorm != NULL, eps, (uint32_t)quant, 0, 0};
        WGPUBuffer pb = own(&o, lr_gpu_buffer(g, SLOT, WGPUBufferUsage_Uniform | WGPUBufferUsage_CopyDst, &p, "p"));
        lr_gpu_slice s[7] = {S(pb), S(xb), S(gb), S(hq), S(hp->codes), S(hp->scale ? hp->scale : dummy), S(lg)};
        bg[i + 1] = lr_gpu_bind(g, L_HEAD, s);
        const int pipe = i < 0 ? P_HEAD_PREP : w->type == LR_Q8_0 ? P_HEAD_Q8 : w->type == LR_Q4_0 ? P_HEAD_Q4
                       : w->type == LR_F16 ? P_HEAD_F16 : P_HEAD_F32;
        d[i + 1] = (lr_gpu_dispatch){g->pipe[pipe], bg[i + 1], i < 0 ? 1 : lr_head_groups(pipe, hp->rows), 1};
    }
    if (rc == LR_OK) rc = run(g, d, np + 1);
    if (rc == LR_OK) rc = lr_gpu_read_back(g, lg, 0, (uint64_t)w->rows * 4, logits);
    release(g, &o, bg, np + 1);
    for (int32_t i = 0; parts && i < np; i++) {
        if (parts[i].codes) W.BufferRelease(parts[i].codes);
        if (parts[i].scale) W.BufferRelease(parts[i].scale);
    }
    free(parts);
    return rc;
}

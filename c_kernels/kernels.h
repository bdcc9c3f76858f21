/* Internal kernel interface: the scalar reference kernels and the SIMD tables that mirror them. */
#ifndef LAROSA_KERNELS_H
#define LAROSA_KERNELS_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "larosa.h"

#define QK 32                      /* ggml's block size for Q8_0 and Q4_0 */
typedef struct { uint16_t d; int8_t qs[QK]; } block_q8_0;        /* 34 bytes */
typedef struct { uint16_t d; uint8_t qs[QK / 2]; } block_q4_0;   /* 18 bytes: lo nibbles 0..15, hi 16..31 */

static inline float fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {                       /* subnormal: normalize */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* bytes of one row of n values */
static inline uint64_t lr_row_bytes(int32_t type, int64_t n) {
    switch (type) {
    case LR_F32: return (uint64_t)n * 4;
    case LR_F16: return (uint64_t)n * 2;
    case LR_Q8_0: return (uint64_t)(n / QK) * sizeof(block_q8_0);
    case LR_Q4_0: return (uint64_t)(n / QK) * sizeof(block_q4_0);
    default: return 0;
    }
}

static inline const uint8_t *lr_row(const lr_tensor *w, int64_t r) {
    return (const uint8_t *)w->data + (uint64_t)r * lr_row_bytes(w->type, w->cols);
}

/* y[c0:c1] = sum_j x[idx[j]] * W[idx[j], c0:c1] over j < k (idx NULL: all rows, x dense).
 * c0, c1 multiples of 32 (or c1 = cols). */
typedef void (*spmv_fn)(const lr_tensor *w, const float *x, const int32_t *idx, int32_t k,
                        float *y, int32_t c0, int32_t c1);
/* y[r] = W[r, :] . x for r in [r0, r1) */
typedef void (*dot_rows_fn)(const lr_tensor *w, const float *x, float *y, int32_t r0, int32_t r1);

/* C[t][0:32] = sum_k X[t][k] P[k][0:32] for t < n: a batch of rows times a decoded 32-column
 * panel of a weight (prefill). X rows are ldx floats apart, C rows ldc. */
typedef void (*gemm32_fn)(const float *X, int32_t ldx, const float *P, int32_t K, float *C, int32_t ldc, int32_t n);

/* P[k][0:32] = W[k][c0:c0+32] for k < rows: one 32-column panel of an input-major W as floats
 * (c0 + 32 <= cols) */
typedef void (*panel_fn)(const lr_tensor *w, int32_t c0, float *P);

typedef struct {
    spmv_fn spmv[4];          /* by lr_type_slot() */
    dot_rows_fn dot_rows[4];
    gemm32_fn gemm32;
    panel_fn panel[4];
} lr_kernel_table;

static inline int lr_type_slot(int32_t type) {
    switch (type) {
    case LR_F32: return 0;
    case LR_F16: return 1;
    case LR_Q8_0: return 2;
    case LR_Q4_0: return 3;
    default: return -1;
    }
}

extern const lr_kernel_table lr_kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const lr_kernel_table lr_kernels_avx2;
extern const lr_kernel_table lr_kernels_avx512;
#endif
#if defined(__aarch64__)
extern const lr_kernel_table lr_kernels_neon;
#endif
const lr_kernel_table *lr_kernels(void);   /* the table of the current SIMD level */

int32_t lr_tensor_check(const lr_tensor *w, int32_t rows, int32_t cols, int f32_only);
void lr_dequant_row(const lr_tensor *w, int64_t r, float *out);
void lr_panel_partial(const lr_tensor *w, int32_t c0, float *P);   /* float types, last partial panel */
int32_t lr_topk_impl(const float *x, int32_t n, int32_t k, int32_t *idx, uint32_t *scratch);

#endif

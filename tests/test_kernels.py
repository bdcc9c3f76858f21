"""Each C kernel against numpy on random data, at every SIMD level this machine runs (scalar always)."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants

from larosa._kernels import ffi, lib
from larosa.runtime import format as F

LEVELS = [l for l in (lib.LR_SIMD_SCALAR, lib.LR_SIMD_AVX2, lib.LR_SIMD_AVX512, lib.LR_SIMD_NEON)
          if lib.lr_simd_available(l)]
# input-major products (lr_spmv): float weights and the integer _IM types; output-major (lr_dot_rows,
# the head): float weights and ggml's Q8_0 / Q4_0
SPMV_TYPES = {"f32": (QT.F32, lib.LR_F32), "f16": (QT.F16, lib.LR_F16), "q8_0_im": (QT.Q8_0, lib.LR_Q8_0_IM),
              "q4_0_im": (QT.Q4_0, lib.LR_Q4_0_IM)}
DOT_TYPES = {"f32": (QT.F32, lib.LR_F32), "f16": (QT.F16, lib.LR_F16), "q8_0": (QT.Q8_0, lib.LR_Q8_0),
             "q4_0": (QT.Q4_0, lib.LR_Q4_0)}
LEVEL_IDS = ["scalar", "avx2", "avx512", "neon"]


@pytest.fixture(params=LEVELS, ids=lambda l: LEVEL_IDS[l])
def simd(request):
    before = lib.lr_get_simd()
    assert lib.lr_set_simd(request.param) == lib.LR_OK
    yield request.param
    lib.lr_set_simd(before)


def test_scalar_and_host_simd_present():
    assert lib.LR_SIMD_SCALAR in LEVELS
    assert lib.lr_set_simd(99) == lib.LR_ERANGE


def make_tensor(rows, cols, name, rng):
    """(lr_tensor, the dequantized float32 matrix numpy sees, the bytes kept alive)."""
    qt, tid = {**SPMV_TYPES, **DOT_TYPES}[name]
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.1, 3, (rows, 1))).astype(np.float32)
    t = ffi.new("lr_tensor *")
    if name.endswith("_im"):
        codes, scales = F.im_quantize(w, qt)
        deq = F.im_dequantize(codes, scales, qt)
        sbuf = ffi.from_buffer("char[]", scales)
        t.scale, t.scale_nbytes = sbuf, scales.nbytes
        raw, keep = codes, (codes, scales, sbuf)
    else:
        raw = np.ascontiguousarray(quants.quantize(w, qt))
        deq = quants.dequantize(raw, qt).reshape(rows, cols).astype(np.float32)
        keep = (raw,)
    buf = ffi.from_buffer("char[]", raw)
    t.type, t.rows, t.cols, t.data, t.nbytes = tid, rows, cols, buf, raw.nbytes
    return t, deq, (*keep, buf)


SHAPES = [(7, 32), (50, 96), (300, 288), (64, 544), (33, 1056)]
ODD_SHAPES = [(5, 40), (19, 77), (3, 13)]
IM_SHAPES = [(32, 64), (64, 192), (320, 576), (96, 1088), (128, 2048)]


def fptr(a):
    return ffi.from_buffer("float[]", a)


def iptr(a):
    return ffi.from_buffer("int32_t[]", a)


def close(got, ref, terms):
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * (1 + terms.max()))


def quantize_groups(x, idx):
    """x at idx as the integer kernels take it (kernels.h lr_qsel): per group of 32 inputs, dx = max
    |x| / 127 over the selected ones, q = round-half-even(x / dx); returns the dequantized x (zero
    off idx) and the per-input bound dx / 2 of the rounding error."""
    xs, half = np.zeros_like(x), np.zeros_like(x)
    for g in np.unique(idx // 32):
        sel = idx[idx // 32 == g]
        dx = np.float32(np.abs(x[sel]).max()) / np.float32(127)
        inv = np.float32(1) / dx if dx > 0 else np.float32(0)
        xs[sel] = np.rint(x[sel] * inv) * dx
        half[sel] = dx / 2
    return xs, half


def check_im_spmv(t, w, x, idx, y):
    """y against numpy: exact for the quantized x (up to float rounding of the sums), and within
    the bound of llama.cpp-style 8-bit activations against the float x"""
    xs, half = quantize_groups(x, idx)
    ref = xs[idx].astype(np.float64) @ w[idx].astype(np.float64)
    close(y, ref, np.abs(xs[idx]) @ np.abs(w[idx]))
    exact = x[idx].astype(np.float64) @ w[idx].astype(np.float64)
    bound = half[idx].astype(np.float64) @ np.abs(w[idx]) * 1.0001 + 1e-5 * (1 + np.abs(x[idx]) @ np.abs(w[idx]))
    assert np.all(np.abs(y - exact) <= bound)


@pytest.mark.parametrize("name", list(SPMV_TYPES))
def test_spmv_against_numpy(simd, name):
    rng = np.random.default_rng(lib.lr_get_simd() * 10 + len(name))
    shapes = IM_SHAPES if name.endswith("_im") else SHAPES + ODD_SHAPES
    for rows, cols in shapes:
        t, w, keep = make_tensor(rows, cols, name, rng)
        x = rng.standard_normal(rows).astype(np.float32)
        for k in sorted({1, rows // 3 + 1, rows}):
            idx = np.sort(rng.choice(rows, k, replace=False)).astype(np.int32)
            y = np.full(cols, np.nan, np.float32)
            assert lib.lr_spmv(t, fptr(x), iptr(idx), k, fptr(y)) == 0
            if name.endswith("_im"):
                check_im_spmv(t, w, x, idx, y)
            else:
                ref = x[idx].astype(np.float64) @ w[idx].astype(np.float64)
                close(y, ref, np.abs(x[idx]) @ np.abs(w[idx]))
        y = np.full(cols, np.nan, np.float32)     # dense: idx NULL, all rows
        assert lib.lr_spmv(t, fptr(x), ffi.NULL, rows, fptr(y)) == 0
        if name.endswith("_im"):
            check_im_spmv(t, w, x, np.arange(rows), y)
        else:
            close(y, x.astype(np.float64) @ w, np.abs(x) @ np.abs(w))


def _at_level(level, fn):
    before = lib.lr_get_simd()
    assert lib.lr_set_simd(level) == lib.LR_OK
    try:
        return fn()
    finally:
        lib.lr_set_simd(before)


@pytest.mark.parametrize("name", ["q8_0_im", "q4_0_im"])
def test_integer_spmv_and_spmm_bit_identical(name):
    """The integer kernels add exactly and scale in one fixed order: every SIMD level gives the
    scalar reference's bits, and the batched prompt form (lr_spmm) gives each token what lr_spmv
    gives it alone, whatever the other tokens of the batch selected."""
    rng = np.random.default_rng(5 + len(name))
    for rows, cols in IM_SHAPES:
        t, w, keep = make_tensor(rows, cols, name, rng)
        n = int(rng.integers(1, 9))
        X = (rng.standard_normal((n, rows)) * rng.uniform(0.01, 100, (n, 1))).astype(np.float32)
        mask = (rng.random((n, rows)) < rng.uniform(0.05, 1.0, (n, 1))).astype(np.uint8)
        mask[0] = 1                                                  # one dense token
        if n > 1:
            mask[1] = 0
            mask[1, rng.integers(rows)] = 1                          # one with a single input
        want = None
        for level in LEVELS:
            def run():
                ys = np.full((n, cols), np.nan, np.float32)
                for r in range(n):
                    idx = np.flatnonzero(mask[r]).astype(np.int32)
                    assert lib.lr_spmv(t, fptr(X[r]), iptr(idx), len(idx), fptr(ys[r])) == 0
                Y = np.full((n, cols), np.nan, np.float32)
                assert lib.lr_spmm(t, fptr(X), ffi.from_buffer("uint8_t[]", mask), n, fptr(Y)) == 0
                return ys, Y
            ys, Y = _at_level(level, run)
            np.testing.assert_array_equal(Y.view(np.uint32), ys.view(np.uint32), err_msg=f"spmm {LEVEL_IDS[level]}")
            if want is None:
                want = ys
                for r in range(n):
                    check_im_spmv(t, w, X[r], np.flatnonzero(mask[r]), ys[r])
            np.testing.assert_array_equal(ys.view(np.uint32), want.view(np.uint32), err_msg=LEVEL_IDS[level])


@pytest.mark.parametrize("name", list(DOT_TYPES))
def test_dot_rows_and_get_row_against_numpy(simd, name):
    rng = np.random.default_rng(7 + lib.lr_get_simd())
    shapes = SHAPES + (ODD_SHAPES if name in ("f32", "f16") else [])
    for rows, cols in shapes:
        t, w, keep = make_tensor(rows, cols, name, rng)
        x = rng.standard_normal(cols).astype(np.float32)
        y = np.full(rows, np.nan, np.float32)
        assert lib.lr_dot_rows(t, fptr(x), fptr(y)) == 0
        if name in ("q8_0", "q4_0"):     # x in 8 bits per block of 32, as llama.cpp's vec_dot
            xs, half = quantize_groups(x, np.arange(cols))
            close(y, w.astype(np.float64) @ xs, np.abs(w) @ np.abs(xs))
            assert np.all(np.abs(y - w.astype(np.float64) @ x) <= np.abs(w) @ half * 1.0001 + 1e-5 * (1 + np.abs(w) @ np.abs(x)))
        else:
            close(y, w.astype(np.float64) @ x, np.abs(w) @ np.abs(x))
        r = int(rng.integers(rows))
        row = np.empty(cols, np.float32)
        assert lib.lr_get_row(t, r, fptr(row)) == 0
        np.testing.assert_array_equal(row, w[r])


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_quantized_dot_rows_bit_identical_across_levels(name):
    rng = np.random.default_rng(11)
    for rows, cols in SHAPES:
        t, w, keep = make_tensor(rows, cols, name, rng)
        x = (rng.standard_normal(cols) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
        outs = []
        for level in LEVELS:
            y = np.full(rows, np.nan, np.float32)
            assert _at_level(level, lambda: lib.lr_dot_rows(t, fptr(x), fptr(y))) == 0
            outs.append(y)
        for level, y in zip(LEVELS, outs):
            np.testing.assert_array_equal(y.view(np.uint32), outs[0].view(np.uint32), err_msg=LEVEL_IDS[level])


def test_im_rows_and_nonfinite_inputs():
    """lr_get_row of an _IM weight is its dequantized row; a NaN or Inf among the selected inputs
    reaches the output (the group's scale is NaN) instead of vanishing in the 8-bit codes."""
    rng = np.random.default_rng(3)
    for name in ("q8_0_im", "q4_0_im"):
        t, w, keep = make_tensor(64, 128, name, rng)
        for r in (0, 31, 32, 63):
            row = np.empty(128, np.float32)
            assert lib.lr_get_row(t, r, fptr(row)) == 0
            np.testing.assert_array_equal(row, w[r])
        for bad in (np.nan, np.inf):
            x = rng.standard_normal(64).astype(np.float32)
            x[40] = bad
            y = np.zeros(128, np.float32)
            assert lib.lr_spmv(t, fptr(x), ffi.NULL, 64, fptr(y)) == 0
            assert np.isnan(y).all()
            idx = np.arange(32, dtype=np.int32)                 # the bad input not selected
            assert lib.lr_spmv(t, fptr(x), iptr(idx), 32, fptr(y)) == 0
            assert np.isfinite(y).all()


def topk_ref(x, k):
    """|x| ranked by its bit pattern (a NaN above inf), as the C code ranks it"""
    keys = (x.view(np.uint32) & 0x7FFFFFFF).astype(np.int64)
    return np.sort(np.argsort(-keys, kind="stable")[:k])


def test_topk_exact_with_ties(simd):
    """Scalar: the histogram reference; the SIMD levels: the bracketing search (topk.c)."""
    rng = np.random.default_rng(0)
    for trial in range(500):
        n = int(rng.integers(1, 5000)) if trial % 5 else int(rng.integers(1, 80))
        k = int(rng.integers(1, n + 1))
        x = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
        if trial % 3 == 0:
            x = np.round(x * 2) / 2              # many exact ties, including zeros and +-x
        if trial % 50 == 1:
            x[:] = x[0]                          # one key: every bucket candidate ties
        if trial % 7 == 2:                       # heavy tails: keys over many octaves, and zeros
            x = (x * np.exp(rng.standard_normal(n) * 4)).astype(np.float32)
            x[rng.random(n) < 0.3] = 0.0
        if trial % 11 == 3:                      # NaN ranks by its bit pattern, above inf, in both
            x[rng.integers(0, n, 3)] = np.nan
        idx = np.full(k + 1, -1, np.int32)       # idx[k]: a guard, must stay untouched
        assert lib.lr_topk(fptr(x), n, k, ffi.from_buffer("int32_t[]", idx)) == k
        np.testing.assert_array_equal(idx[:k], topk_ref(x, k))
        assert idx[k] == -1


def test_topk_tie_rule_and_specials(simd):
    x = np.array([1, -3, 3, 0, -1, 2, 3], np.float32)
    idx = np.zeros(7, np.int32)
    assert lib.lr_topk(fptr(x), 7, 3, ffi.from_buffer("int32_t[]", idx)) == 3
    assert idx[:3].tolist() == [1, 2, 6]          # |-3| = |3| = |3|: all three, in index order
    assert lib.lr_topk(fptr(x), 7, 2, ffi.from_buffer("int32_t[]", idx)) == 2
    assert idx[:2].tolist() == [1, 2]             # a tie at the threshold: lower indices win
    x = np.array([0.5, np.inf, -0.0, -np.inf, 1e-30], np.float32)
    assert lib.lr_topk(fptr(x), 5, 2, ffi.from_buffer("int32_t[]", idx)) == 2
    assert idx[:2].tolist() == [1, 3]


def test_bad_arguments_are_refused():
    rng = np.random.default_rng(1)
    t, w, keep = make_tensor(8, 32, "f16", rng)
    x, y = np.ones(8, np.float32), np.zeros(32, np.float32)
    idx = np.array([0, 9], np.int32)
    assert lib.lr_spmv(t, fptr(x), ffi.from_buffer("int32_t[]", idx), 2, fptr(y)) == lib.LR_ERANGE
    assert lib.lr_spmv(t, fptr(x), ffi.NULL, 3, fptr(y)) == lib.LR_ERANGE     # dense needs k = rows
    assert lib.lr_spmv(t, fptr(x), ffi.NULL, 9, fptr(y)) == lib.LR_ERANGE
    t.nbytes += 1
    assert lib.lr_spmv(t, fptr(x), ffi.NULL, 8, fptr(y)) == lib.LR_ESHAPE
    t.nbytes -= 1
    t.type = 3                                                                  # Q4_1: not readable
    assert lib.lr_dot_rows(t, fptr(np.ones(32, np.float32)), fptr(y)) == lib.LR_ETYPE
    t.type, t.cols = lib.LR_F16, 33
    assert lib.lr_get_row(t, 0, fptr(np.zeros(33, np.float32))) == lib.LR_ESHAPE
    t.cols = 32
    assert lib.lr_get_row(t, 8, fptr(y)) == lib.LR_ERANGE
    assert lib.lr_spmv(t, fptr(x), iptr(np.array([3, 2], np.int32)), 2, fptr(y)) == lib.LR_ERANGE  # not ascending
    q, w, keep = make_tensor(8, 32, "q8_0", rng)                                # ggml Q8_0: output-major only
    assert lib.lr_spmv(q, fptr(x), ffi.NULL, 8, fptr(y)) == lib.LR_ETYPE
    im, w, keep2 = make_tensor(64, 128, "q8_0_im", rng)
    x64, y128 = np.ones(64, np.float32), np.zeros(128, np.float32)
    im.scale_nbytes -= 2                                                        # the scale table is checked
    assert lib.lr_spmv(im, fptr(x64), ffi.NULL, 64, fptr(y128)) == lib.LR_ESHAPE
    im.scale_nbytes += 2
    im.scale = ffi.NULL
    assert lib.lr_spmv(im, fptr(x64), ffi.NULL, 64, fptr(y128)) == lib.LR_ESHAPE
    im.scale, im.cols, im.nbytes = keep2[2], 96, 64 * 96                       # columns: whole chunks of 64
    assert lib.lr_spmv(im, fptr(x64), ffi.NULL, 64, fptr(y128)) == lib.LR_ESHAPE
    assert lib.lr_dot_rows(make_tensor(64, 128, "q4_0_im", rng)[0], fptr(x64), fptr(y128)) == lib.LR_ETYPE
    assert lib.lr_topk(fptr(x), 8, 0, ffi.from_buffer("int32_t[]", idx)) == lib.LR_EARG
    assert lib.lr_topk(fptr(x), 8, 9, ffi.from_buffer("int32_t[]", idx)) == lib.LR_EARG


def test_read_bandwidth_is_measured():
    bw = lib.lr_read_bandwidth(64 << 20, 1, 2)
    assert 1e8 < bw < 1e12
    assert lib.lr_read_bandwidth(100, 1, 1) < 0
    for t in (1, 2):
        assert 1e8 < lib.lr_read_rows_bandwidth(32 << 20, 768, 0.4, t, 2) < 1e12
    for bad in [(100, 768, 0.4, 1, 1), (32 << 20, 100, 0.4, 1, 1), (32 << 20, 768, 0.0, 1, 1),
                (32 << 20, 768, 1.5, 1, 1), (32 << 20, 768, float("nan"), 1, 1), (32 << 20, 768, 0.4, 0, 1)]:
        assert lib.lr_read_rows_bandwidth(*bad) < 0, bad

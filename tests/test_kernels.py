"""Each C kernel against numpy on random data, at every SIMD level this machine runs (scalar always)."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants

from larosa._kernels import ffi, lib

LEVELS = [l for l in (lib.LR_SIMD_SCALAR, lib.LR_SIMD_AVX2, lib.LR_SIMD_AVX512, lib.LR_SIMD_NEON)
          if lib.lr_simd_available(l)]
TYPES = {"f32": (QT.F32, lib.LR_F32), "f16": (QT.F16, lib.LR_F16), "q8_0": (QT.Q8_0, lib.LR_Q8_0),
         "q4_0": (QT.Q4_0, lib.LR_Q4_0)}


@pytest.fixture(params=LEVELS, ids=lambda l: ["scalar", "avx2", "avx512", "neon"][l])
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
    qt, tid = TYPES[name]
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.1, 3, (rows, 1))).astype(np.float32)
    raw = np.ascontiguousarray(quants.quantize(w, qt))
    deq = quants.dequantize(raw, qt).reshape(rows, cols).astype(np.float32)
    t = ffi.new("lr_tensor *")
    buf = ffi.from_buffer("char[]", raw)
    t.type, t.rows, t.cols, t.data, t.nbytes = tid, rows, cols, buf, raw.nbytes
    return t, deq, (raw, buf)


SHAPES = [(7, 32), (50, 96), (300, 288), (64, 544), (33, 1056)]
ODD_SHAPES = [(5, 40), (19, 77), (3, 13)]


def fptr(a):
    return ffi.from_buffer("float[]", a)


def close(got, ref, terms):
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * (1 + terms.max()))


@pytest.mark.parametrize("name", list(TYPES))
def test_spmv_against_numpy(simd, name):
    rng = np.random.default_rng(lib.lr_get_simd() * 10 + len(name))
    shapes = SHAPES + (ODD_SHAPES if name in ("f32", "f16") else [])
    for rows, cols in shapes:
        t, w, keep = make_tensor(rows, cols, name, rng)
        x = rng.standard_normal(rows).astype(np.float32)
        for k in sorted({1, rows // 3 + 1, rows}):
            idx = np.sort(rng.choice(rows, k, replace=False)).astype(np.int32)
            y = np.full(cols, np.nan, np.float32)
            assert lib.lr_spmv(t, fptr(x), ffi.from_buffer("int32_t[]", idx), k, fptr(y)) == 0
            ref = x[idx].astype(np.float64) @ w[idx].astype(np.float64)
            close(y, ref, np.abs(x[idx]) @ np.abs(w[idx]))
        y = np.full(cols, np.nan, np.float32)     # dense: idx NULL, all rows
        assert lib.lr_spmv(t, fptr(x), ffi.NULL, rows, fptr(y)) == 0
        close(y, x.astype(np.float64) @ w, np.abs(x) @ np.abs(w))


@pytest.mark.parametrize("name", list(TYPES))
def test_dot_rows_and_get_row_against_numpy(simd, name):
    rng = np.random.default_rng(7 + lib.lr_get_simd())
    shapes = SHAPES + (ODD_SHAPES if name in ("f32", "f16") else [])
    for rows, cols in shapes:
        t, w, keep = make_tensor(rows, cols, name, rng)
        x = rng.standard_normal(cols).astype(np.float32)
        y = np.full(rows, np.nan, np.float32)
        assert lib.lr_dot_rows(t, fptr(x), fptr(y)) == 0
        close(y, w.astype(np.float64) @ x, np.abs(w) @ np.abs(x))
        r = int(rng.integers(rows))
        row = np.empty(cols, np.float32)
        assert lib.lr_get_row(t, r, fptr(row)) == 0
        np.testing.assert_array_equal(row, w[r])


def topk_ref(x, k):
    return np.sort(np.argsort(-np.abs(x), kind="stable")[:k])


def test_topk_exact_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(500):
        n = int(rng.integers(1, 5000))
        k = int(rng.integers(1, n + 1))
        x = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
        if trial % 3 == 0:
            x = np.round(x * 2) / 2              # many exact ties, including zeros and +-x
        idx = np.full(n, -1, np.int32)
        assert lib.lr_topk(fptr(x), n, k, ffi.from_buffer("int32_t[]", idx)) == k
        np.testing.assert_array_equal(idx[:k], topk_ref(x, k))


def test_topk_tie_rule_and_specials():
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
    t, w, keep = make_tensor(8, 32, "q8_0", rng)
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
    t.type, t.cols = lib.LR_Q8_0, 33
    assert lib.lr_get_row(t, 0, fptr(np.zeros(33, np.float32))) == lib.LR_ESHAPE
    t.cols = 32
    assert lib.lr_get_row(t, 8, fptr(y)) == lib.LR_ERANGE
    assert lib.lr_topk(fptr(x), 8, 0, ffi.from_buffer("int32_t[]", idx)) == lib.LR_EARG
    assert lib.lr_topk(fptr(x), 8, 9, ffi.from_buffer("int32_t[]", idx)) == lib.LR_EARG


def test_read_bandwidth_is_measured():
    bw = lib.lr_read_bandwidth(64 << 20, 1, 2)
    assert 1e8 < bw < 1e12
    assert lib.lr_read_bandwidth(100, 1, 1) < 0

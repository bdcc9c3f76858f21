"""The GPU path (c_kernels/gpu*.c, shaders/*.wgsl) on whatever WebGPU adapter this machine has: in CI
Mesa's lavapipe, a Vulkan device on the CPU (tools/setup.sh installs it). Every kernel against
numpy and the CPU kernels on random data, then the whole decode step against the CPU runtime.
Skips, saying why, where wgpu or a Vulkan / Metal adapter is missing.

Tolerances: the GPU adds the same products in another order (chunks of selected rows, 32 lanes of
a head row), so float results agree to a few float32 ulps of the sums' magnitude, not bit for bit;
integer parts (Q8_0 codes of the activations, sums of q * xq per group) are exact on both."""
from __future__ import annotations

import numpy as np
import pytest

from larosa._kernels import ffi, lib
from larosa.runtime import gpu

try:
    DEV = gpu.device()
    SKIP = None
except gpu.GPUUnavailable as e:   # no wgpu, or no adapter
    DEV, SKIP = None, str(e)
pytestmark = pytest.mark.skipif(DEV is None, reason=f"no WebGPU device: {SKIP}")

RNG = np.random.default_rng(1234)


def f(a):
    return ffi.from_buffer("float[]", a)


def i32(a):
    return ffi.from_buffer("int32_t[]", a)


def select(x, mode, k=0, thr=-1.0, score=None, gate=None, quant=0, norm=0, eps=1e-5):
    n = x.size
    idx, vals, dx = np.zeros(n, np.int32), np.zeros(n, np.float32), np.zeros(n // 32, np.float32)
    cnt = lib.lr_gpu_test_select(DEV._g, f(x), f(score) if score is not None else ffi.NULL,
                                 f(gate) if gate is not None else ffi.NULL, n, mode, k, thr, quant, norm, eps,
                                 i32(idx), f(vals), f(dx))
    assert cnt >= 0, DEV.error()
    return idx[:cnt], vals[:cnt], dx


IN_USE = DEV is not None and lib.lr_gpu_use_subgroups(DEV._g, -1) == 1   # LAROSA_GPU_SUBGROUPS=0: the plain one
SUBGROUPS = DEV is not None and lib.lr_gpu_use_subgroups(DEV._g, 1) == 0
if DEV is not None:
    lib.lr_gpu_use_subgroups(DEV._g, int(IN_USE))


@pytest.fixture(params=["subgroups", "plain"])
def variant(request):
    """each selection test on both kernels: select_sg.wgsl (subgroups, where granted) and select.wgsl"""
    if request.param == "subgroups" and not SUBGROUPS:
        pytest.skip("the adapter grants no subgroup operations")
    assert lib.lr_gpu_use_subgroups(DEV._g, int(request.param == "subgroups")) == 0
    yield request.param
    lib.lr_gpu_use_subgroups(DEV._g, int(IN_USE))


def cpu_topk(key, k):
    idx = np.zeros(k, np.int32)
    assert lib.lr_topk(f(key), key.size, k, i32(idx)) == k
    return idx


@pytest.mark.parametrize("n,k", [(64, 1), (576, 230), (1536, 921), (4096, 2458), (11008, 4403), (11008, 11007),
                                 (20480, 8191)])
def test_select_topk_matches_cpu(variant, n, k):
    x = RNG.standard_normal(n).astype(np.float32)
    idx, vals, _ = select(x, 0, k=k)
    np.testing.assert_array_equal(idx, cpu_topk(x, k))
    np.testing.assert_array_equal(vals, x[idx])


def test_select_ties_take_the_lower_index(variant):
    x = np.round(RNG.standard_normal(4096) * 4).astype(np.float32)   # many equal magnitudes
    x[::7] = -x[::7]
    for k in (1, 100, 1000, 2047, 4000, 4095):
        idx, _, _ = select(x, 0, k=k)
        np.testing.assert_array_equal(idx, cpu_topk(x, k))


def test_select_ties_at_every_digit_level(variant):
    """keys equal in their high bits and differing low (the digit search's later levels), a count
    that a bin completes exactly (its early stop), and widths that leave subgroups empty"""
    base = np.float32(1.5).view(np.uint32)
    for n in (32, 96, 4128):
        bits = base + RNG.integers(0, 64, n).astype(np.uint32)        # only the low 6 bits differ
        x = bits.view(np.float32) * np.where(RNG.random(n) < 0.5, -1, 1).astype(np.float32)
        for k in (1, n // 3, n // 2, n - 1):
            idx, vals, _ = select(x, 0, k=k)
            np.testing.assert_array_equal(idx, cpu_topk(x, k))
            np.testing.assert_array_equal(vals, x[idx])
        x = np.repeat(np.float32([4, 3, 2, 1]), n // 4) * np.float32(1.0)   # bins of equal keys
        for k in (n // 4, n // 2, n // 4 + 1):
            np.testing.assert_array_equal(select(x, 0, k=k)[0], cpu_topk(x, k))


def test_select_norm_score_gate_threshold(variant):
    n = 1536
    x = (RNG.standard_normal(n) * 3).astype(np.float32)
    score = RNG.uniform(0.5, 2.0, n).astype(np.float32)
    gate = RNG.standard_normal(n).astype(np.float32)
    # RMSNorm first: values are x / rms(x), the ranking that of |x| * score
    idx, vals, _ = select(x, 0, k=700, score=score, norm=1, eps=1e-6)
    r = 1.0 / np.sqrt(np.mean(x.astype(np.float64) ** 2) + 1e-6)
    np.testing.assert_array_equal(idx, cpu_topk((np.abs(x * np.float32(r)) * score).astype(np.float32), 700))
    np.testing.assert_allclose(vals, x[idx] * r, rtol=2e-6)
    # CATS key: |silu(gate)| * score; values stay x
    idx, vals, _ = select(x, 0, k=500, score=score, gate=gate)
    silu = gate / (1 + np.exp(-gate.astype(np.float64)))
    key = (np.abs(silu.astype(np.float32)) * score).astype(np.float32)
    assert len(np.intersect1d(idx, cpu_topk(key, 500))) >= 498   # exp may differ by an ulp
    np.testing.assert_array_equal(vals, x[idx])
    # threshold: every key above it, ascending
    idx, _, _ = select(x, 1, thr=2.5, score=score)
    np.testing.assert_array_equal(idx, np.flatnonzero(np.abs(x) * score > 2.5))
    # all
    idx, vals, _ = select(x, 3)
    np.testing.assert_array_equal(idx, np.arange(n))


@pytest.mark.parametrize("n", [160, 1536, 4096, 11008, 20480])
def test_select_norm_same_bits_in_both_kernels(n):
    """select_sg.wgsl's RMSNorm (slices of 16 loads, the tree's last levels by subgroup shuffles) adds
    in select.wgsl's order: the same values, bit for bit"""
    if not SUBGROUPS:
        pytest.skip("the adapter grants no subgroup operations")
    x = (RNG.standard_normal(n) * 3).astype(np.float32)
    out = []
    for sg in (1, 0):
        assert lib.lr_gpu_use_subgroups(DEV._g, sg) == 0
        out.append(select(x, 0, k=n // 2, norm=1, eps=1e-6))
    lib.lr_gpu_use_subgroups(DEV._g, int(IN_USE))
    for u, v in zip(*out):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("n", [1536, 11008])
def test_select_all_is_every_input_quantized(variant, n):
    """mode 3 (s = 0, dense inputs: the kernels' short path without keys or search) gives the words
    of a Top-K of every input (k = n, the general path): rows, values, codes and dx"""
    x = (RNG.standard_normal(n) * 3).astype(np.float32)
    x[5] = 0.0
    for quant in (0, 1):
        a = select(x, 3, quant=quant, norm=1, eps=1e-6)
        b = select(x, 0, k=n, quant=quant, norm=1, eps=1e-6)
        np.testing.assert_array_equal(a[0], np.arange(n))
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_select_quantizes_as_q8_0_blocks(variant):
    n = 2048
    x = (RNG.standard_normal(n) * 5).astype(np.float32)
    idx, q, dx = select(x, 0, k=900, quant=1)
    np.testing.assert_array_equal(idx, cpu_topk(x, 900))
    amax = np.zeros(n // 32, np.float32)
    np.maximum.at(amax, idx // 32, np.abs(x[idx]))
    np.testing.assert_allclose(dx, amax / 127, rtol=3e-7)   # Vulkan's division: 2.5 ulp (NVIDIA's)
    want = np.clip(np.round(x[idx] / dx[idx // 32]), -127, 127)
    assert np.all(q == np.round(q)) and np.abs(q).max() == 127
    assert np.mean(q == want) > 0.99 and np.abs(q - want).max() <= 1   # 1 / dx rounds differently at most


def im_tensor(qtype, rows, cols, keep):
    """A random input-major Q8_0 / Q4_0 weight (codes, fp16 scales) and its dense float values."""
    scale = RNG.uniform(0.001, 0.02, (rows // 32, cols)).astype(np.float16)
    if qtype == "q8":
        codes = RNG.integers(-127, 128, (rows, cols), dtype=np.int8)
        q = codes.astype(np.float32)
        data, t = codes, lib.LR_Q8_0_IM
    else:
        q4 = RNG.integers(0, 16, (rows, cols), dtype=np.uint8)
        runs = q4.reshape(rows, cols // 64, 2, 32)          # outputs j and j + 32 of each run of 64
        data = (runs[:, :, 0, :] | (runs[:, :, 1, :] << 4)).reshape(rows, cols // 2)
        q = q4.astype(np.float32) - 8
        t = lib.LR_Q4_0_IM
    keep += [data, scale]
    ct = ffi.new("lr_tensor *")
    ct.type, ct.rows, ct.cols = t, rows, cols
    ct.data, ct.nbytes = ffi.from_buffer("char[]", data), data.nbytes
    ct.scale, ct.scale_nbytes = ffi.from_buffer("char[]", scale), scale.nbytes
    dense = q * np.repeat(scale.astype(np.float32), 32, axis=0)
    return ct, dense


def float_tensor(dtype, rows, cols, keep):
    w = (RNG.standard_normal((rows, cols)) * 0.05).astype(dtype)
    keep.append(w)
    ct = ffi.new("lr_tensor *")
    ct.type = lib.LR_F16 if dtype == np.float16 else lib.LR_F32
    ct.rows, ct.cols, ct.data, ct.nbytes = rows, cols, ffi.from_buffer("char[]", w), w.nbytes
    return ct, w.astype(np.float32)


@pytest.fixture(params=["dots", "pipelined", "plain"])
def mv_variant(request):
    """the Q8_0 / Q4_0 matvecs three ways: mv_q8d / mv_q4d (integer dots), mv_q8p / mv_q4p
    (prefetching) and mv_q8 / mv_q4"""
    was = lib.lr_gpu_use_pipelined_matvec(DEV._g, -1)
    lib.lr_gpu_use_pipelined_matvec(DEV._g, {"dots": 2, "pipelined": 1, "plain": 0}[request.param])
    yield request.param
    lib.lr_gpu_use_pipelined_matvec(DEV._g, was)


@pytest.mark.parametrize("kind", ["q8", "q4", "f16", "f32"])
@pytest.mark.parametrize("rows,cols,frac", [(576, 1728, 0.6), (1536, 576, 0.4), (4096, 2048, 1.0), (1024, 4160, 0.05),
                                            (2048, 1024, 0.13)])
def test_spmv_matches_numpy_and_cpu(mv_variant, kind, rows, cols, frac):
    if mv_variant != "dots" and kind not in ("q8", "q4"):
        pytest.skip("one float kernel")
    keep = []
    if kind in ("q8", "q4"):
        w, dense = im_tensor(kind, rows, cols, keep)
    else:
        w, dense = float_tensor(np.float16 if kind == "f16" else np.float32, rows, cols, keep)
    x = RNG.standard_normal(rows).astype(np.float32)
    k = max(1, int(frac * rows))
    idx = np.sort(RNG.choice(rows, k, replace=False)).astype(np.int32)
    y = np.zeros(cols, np.float32)
    assert lib.lr_gpu_test_spmv(DEV._g, w, f(x), i32(idx), k, f(y)) == 0, DEV.error()
    ref = np.zeros(cols, np.float32)
    assert lib.lr_spmv(w, f(x), i32(idx), k, f(ref)) == 0
    mag = np.abs(x[idx]) @ np.abs(dense[idx]) + 1e-30   # the size of the sum's terms
    assert np.max(np.abs(y - ref) / mag) < 1e-5           # the CPU kernel: same quantization, other order
    exact = x[idx].astype(np.float64) @ dense[idx].astype(np.float64)
    tol = 2e-2 if kind in ("q8", "q4") else 1e-5          # float math; 8-bit activations for the _IM types
    assert np.max(np.abs(y - exact) / mag) < tol


@pytest.mark.parametrize("kind", ["q8", "q4"])
def test_pipelined_matvec_gives_the_same_bits(kind):
    """mv_q8p / mv_q4p reorder loads and convert codes through the mantissa, not the sums; mv_q8d /
    mv_q4d add a group's products as integers (runs of 4 rows of one group by dot4I8Packed, runs
    that cross a group row by row: 1111 of 2048 rows have both)"""
    keep = []
    w, _ = im_tensor(kind, 2048, 1088, keep)
    x = (RNG.standard_normal(2048) * 3).astype(np.float32)
    idx = np.sort(RNG.choice(2048, 1111, replace=False)).astype(np.int32)
    ys = []
    was = lib.lr_gpu_use_pipelined_matvec(DEV._g, -1)
    for on in (2, 1, 0):
        lib.lr_gpu_use_pipelined_matvec(DEV._g, on)
        y = np.zeros(1088, np.float32)
        assert lib.lr_gpu_test_spmv(DEV._g, w, f(x), i32(idx), idx.size, f(y)) == 0, DEV.error()
        ys.append(y)
    lib.lr_gpu_use_pipelined_matvec(DEV._g, was)
    assert np.abs(ys[0]).max() > 0
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(ys[0], ys[2])


@pytest.mark.parametrize("qtype,rows,d", [("Q8_0", 1000, 576), ("Q4_0", 1000, 576), ("F16", 1000, 576),
                                          ("F32", 1000, 576), ("Q8_0", 130, 4160), ("Q4_0", 130, 4160)])
def test_head_matches_numpy_and_cpu(qtype, rows, d):
    """d = 4160: the quantized heads' h in two pieces of workgroup memory (4096 inputs each)"""
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import quantize
    w = (RNG.standard_normal((rows, d)) * 0.05).astype(np.float32)
    x = (RNG.standard_normal(d) * 2).astype(np.float32)
    g = RNG.uniform(0.5, 1.5, d).astype(np.float32)
    data = quantize(w, QT[qtype]) if qtype not in ("F16", "F32") else w.astype(np.float16 if qtype == "F16" else np.float32)
    ct = ffi.new("lr_tensor *")
    ct.type = {"Q8_0": lib.LR_Q8_0, "Q4_0": lib.LR_Q4_0, "F16": lib.LR_F16, "F32": lib.LR_F32}[qtype]
    ct.rows, ct.cols, ct.data, ct.nbytes = rows, d, ffi.from_buffer("char[]", data), data.nbytes
    out = np.zeros(rows, np.float32)
    assert lib.lr_gpu_test_head(DEV._g, ct, f(x), f(g), 1e-5, f(out)) == 0, DEV.error()
    h = x / np.sqrt(np.mean(x.astype(np.float64) ** 2) + 1e-5) * g
    h = h.astype(np.float32)
    ref = np.zeros(rows, np.float32)
    assert lib.lr_dot_rows(ct, f(h), f(ref)) == 0     # the CPU head: same Q8_0 activations
    from gguf.quants import dequantize
    wd = dequantize(data, QT[qtype]).reshape(rows, d) if qtype not in ("F16", "F32") else data.astype(np.float32)
    mag = np.abs(wd) @ np.abs(h)
    assert np.max(np.abs(out - ref) / mag) < 1e-5
    assert np.max(np.abs(out - wd @ h) / mag) < (2e-2 if qtype in ("Q8_0", "Q4_0") else 1e-5)


# ---- the whole decode step against the CPU runtime ---------------------------------------------

def _pair(path, sparsity, **kw):
    from larosa.runtime.model import Model
    return (Model(path, sparsity=sparsity, n_threads=1, n_ctx=128, **kw),
            Model(path, sparsity=sparsity, n_ctx=128, device="gpu", **kw))


def _close(a, b):
    """max |a - b| relative to the largest logit"""
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.parametrize("name", ["tied_q8", "tied_q4", "untied_f32", "odd_f16", "gqa_q4"])
def test_step_matches_cpu_on_tiny_models(converted, name):
    from larosa.runtime.errors import LarosaError
    try:
        cpu, dev = _pair(converted[name], 0.4)
    except LarosaError as e:   # a shape the GPU kernels do not take is refused, saying why
        assert "GPU:" in str(e), e
        pytest.skip(str(e))
    toks = list(np.random.default_rng(0).integers(1, cpu.hp.n_vocab, 9))
    a, b = cpu.eval(toks[:-1], all_logits=True), dev.eval(toks[:-1], all_logits=True)
    assert _close(a, b) < 2e-2 and (a.argmax(-1) == b.argmax(-1)).mean() >= 0.75
    for t in toks[-1:] + [3, 5, 7]:   # decode steps
        a, b = cpu.eval([t]), dev.eval([t])
        assert _close(a, b) < 2e-2
    assert cpu.rows_read() == dev.rows_read()   # Top-K: the same number of rows in every layer


@pytest.mark.parametrize("name,kv,n,tol", [("untied_f32", "f32", 100, 1e-4), ("untied_f32", "f32", 530, 1e-4),
                                            ("gqa_q4", "f16", 100, 2e-2)])
def test_step_matches_cpu_over_a_long_context(converted, name, kv, n, tol):
    """attend's scores and softmax sums over many positions, more than its threads (530 > 512), both
    cache types, GQA, against the CPU"""
    from larosa.runtime.model import Model
    path = converted[name]
    cpu = Model(path, sparsity=0.0, n_threads=1, n_ctx=640, type_k=kv, type_v=kv)
    dev = Model(path, sparsity=0.0, n_ctx=640, device="gpu", type_k=kv, type_v=kv)
    toks = [int(t) for t in np.random.default_rng(1).integers(1, cpu.hp.n_vocab, n)]
    a, b = cpu.eval(toks[:-2]), dev.eval(toks[:-2])
    # float weights and cache, dense: the sums' order alone (one position's score left out of 100
    # gave 8e-3 on a Q4_0 model); Q4_0 with Q8_0 codes of the activations: a flipped code grows
    assert _close(a, b) < tol
    for t in toks[-2:]:
        a, b = cpu.eval([t]), dev.eval([t])
        assert _close(a, b) < tol, _close(a, b)


def test_preencoded_step_gives_the_same_logits(converted, monkeypatch):
    """the next token's commands encoded while this one runs (the default) against each token's
    encoded before its submit (LAROSA_GPU_PREENCODE=0): the same bits; the host's encoding and
    waiting times are counted (lr_gpu_model_profile's last two slots)"""
    from larosa.runtime.model import Model
    monkeypatch.setenv("LAROSA_GPU_PREENCODE", "0")
    plain = Model(converted["tied_q4"], sparsity=0.4, n_ctx=64, device="gpu")
    monkeypatch.setenv("LAROSA_GPU_PREENCODE", "1")
    pre = Model(converted["tied_q4"], sparsity=0.4, n_ctx=64, device="gpu")
    out = ffi.new("double[]", 21)   # 19 kernels (gpu.h's order), then encoding and waiting
    lib.lr_gpu_model_profile(pre._m, out, 0, 0)
    np.testing.assert_array_equal(plain.eval([1, 2, 3, 4]), pre.eval([1, 2, 3, 4]))
    for t in (5, 6, 7):
        np.testing.assert_array_equal(plain.eval([t]), pre.eval([t]))
    lib.lr_gpu_model_profile(pre._m, out, 21, 0)
    assert out[19] > 0 and out[20] > 0


def _last_token_masks(m, toks):
    """logits of toks (one at a time) and the CPU model m's selections for the last one, as masks"""
    from larosa._kernels import ffi, lib
    hp = m.hp
    widths = [hp.dim, hp.n_heads * hp.head_dim, hp.dim, hp.ffn_dim]
    for t in toks[:-1]:
        m.eval([t])
    masks = np.zeros(sum(widths) * hp.n_layers, np.uint8)
    lib.lr_model_trace(m._m, ffi.from_buffer("uint8_t[]", masks), masks.size)
    logits = m.eval(toks[-1:])
    lib.lr_model_trace(m._m, ffi.NULL, 0)
    return logits, masks, widths


def test_smollm2_same_greedy_text_logits_and_selections(smollm2_q8):
    """SmolLM2 (larosa method, Q8_0, F16 adapters) against the CPU runtime on 1 thread. The GPU adds in
    another order, and its rotated activations carry outliers that make the 8-bit codes of a group
    coarse, so a sum's last bit can flip a code and the difference grows over the layers: the CPU on
    2 threads (its integer products split in two parts) departs from 1 thread just as far. So: logits
    and selections no further from the 1-thread CPU than the 2-thread CPU is (1.5x, plus 1 % of the
    largest logit), and the same greedy start (2 threads and the GPU both part from 1 thread's text
    after about eight tokens at a near-tie)."""
    from larosa._kernels import ffi, lib
    from larosa.runtime.model import Model
    prompt = "The capital of France is"
    for s in (0.0, 0.4):
        cpu, dev = _pair(smollm2_q8, s)
        cpu2 = Model(smollm2_q8, sparsity=s, n_threads=2, n_ctx=128)
        toks = cpu.tokenize(prompt)
        a, masks, widths = _last_token_masks(cpu, toks)
        a2, masks2, _ = _last_token_masks(cpu2, toks)
        for t in toks:
            b = dev.eval([t])
        assert a.argmax() == b.argmax() == a2.argmax()
        assert _close(a, b) <= 1.5 * _close(a, a2) + 0.01, (s, _close(a, b), _close(a, a2))
        got, off = [], 0
        for layer in range(cpu.hp.n_layers):
            for blk, n in enumerate(widths):
                idx = np.zeros(n, np.int32)
                k = lib.lr_gpu_model_selection(dev._m, layer, blk, ffi.from_buffer("int32_t[]", idx), n)
                mask = np.zeros(n, np.uint8)
                mask[idx[:k]] = 1
                got.append(mask)
                off += n
        got = np.concatenate(got)
        agree, agree2 = (got == masks).mean(), (masks2 == masks).mean()
        assert agree >= min(agree2, 0.999) - 0.03, (s, agree, agree2)   # s = 0.4: 0.890 and 0.901 measured
        if s == 0.0:
            assert agree == 1.0   # dense: every input
        ta = "".join(cpu.generate(prompt, max_tokens=4, temperature=0))
        tb = "".join(dev.generate(prompt, max_tokens=4, temperature=0))
        assert ta == tb and ta.startswith(" Paris"), (s, ta, tb)


def test_chat_and_server_run_on_the_gpu(smollm2_q8):
    """larosa-chat --device gpu answers as --device cpu does (greedy); larosa-server --device gpu loads
    its slots on the GPU and answers the same"""
    import subprocess
    import sys
    from larosa.runtime import server as S
    from larosa.runtime.chat import create_chat_completion
    code = "import sys; from larosa.runtime.chat_cli import main; sys.exit(main(sys.argv[1:]))"
    replies = {}
    for dev in ("cpu", "gpu"):
        r = subprocess.run([sys.executable, "-c", code, "-m", smollm2_q8, "--device", dev, "--temp", "0", "-n", "8",
                            "-t", "1", "-c", "256"], input="What is the capital of France?\n", capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        replies[dev] = r.stdout
    assert "Paris" in replies["cpu"] and replies["gpu"] == replies["cpu"]
    a = S.parse_args(["-m", smollm2_q8, "--device", "gpu", "-c", "256", "-t", "1"])
    state = S.load_state(a)
    assert state.front.device == "gpu"
    msg = [{"role": "user", "content": "What is the capital of France?"}]
    got = create_chat_completion(state.front, msg, max_tokens=8, temperature=0)["choices"][0]["message"]["content"]
    from larosa.runtime.model import Model
    cpu = Model(smollm2_q8, n_threads=1, n_ctx=256)
    want = create_chat_completion(cpu, msg, max_tokens=8, temperature=0)["choices"][0]["message"]["content"]
    assert "Paris" in want and got == want


def test_gpu_model_refuses_what_it_does_not_run(converted):
    from larosa.runtime.errors import LarosaError
    from larosa.runtime.model import Model
    with pytest.raises(LarosaError, match="KV cache is f16 or f32"):
        Model(converted["tied_q8"], n_ctx=64, device="gpu", type_k="q8_0", type_v="q8_0")
    m = Model(converted["tied_q8"], n_ctx=4, device="gpu")
    from larosa.runtime.model import ContextError
    with pytest.raises(ContextError):
        m.eval([1, 2, 3, 4, 5])
    assert m.device == "gpu" and "device='gpu'" in repr(m)

"""The llama.* keys and tensors of a source GGUF (converter/source.py): every one llama.cpp applies to a
llama model is applied the same way (the reference forward of the source, and the converted model in
the runtime, against llama.cpp's logits on tiny synthetic files, past the original context), and
every other one is refused by name: unsupported (UnsupportedError) apart from malformed (FormatError).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFWriter
from gguf import GGUFValueType as VT

from conftest import convert_for_test
from larosa.converter.model import forward
from larosa.converter.source import SourceModel
from larosa.converter.weights import source_weights
from larosa.runtime.errors import FormatError, UnsupportedError
from larosa.runtime.gguf_file import field_value
from larosa.tools.make_synthetic import make_synthetic

F32, STR, U32, BOOL, ARR = VT.FLOAT32, VT.STRING, VT.UINT32, VT.BOOL, VT.ARRAY
N_TOK = 100          # past the original context of 32 positions (and of the file's 128 / 4)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("keys")
    return make_synthetic(str(d / "base.gguf"), 64, 96, 2, 4, 2, 320, "f32", seed=3, ctx=128)


@pytest.fixture(scope="module")
def base_rf(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("keys_rf")
    return make_synthetic(str(d / "rf.gguf"), 64, 96, 2, 4, 2, 320, "f32", seed=4, ctx=128, rope_freqs=True)


def variant(src: str, dst, keys: dict | None = None, drop: tuple = (), tensors=None) -> str:
    """A copy of src with metadata keys set (key -> (value, type[, item type])) or dropped, and the
    tensor dict (name -> array) passed through `tensors` when given."""
    keys = keys or {}
    r = GGUFReader(src)
    w = GGUFWriter(str(dst), "llama")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture" or k in keys or k in drop:
            continue
        w.add_key_value(k, *field_value(f))
    for k, v in keys.items():
        w.add_key_value(k, v[0], v[1], v[2] if len(v) > 2 else None)
    arrays = {t.name: np.asarray(t.data) for t in r.tensors}
    for name, a in (tensors(arrays) if tensors else arrays).items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(dst)


def tokens() -> list[int]:
    return [1] + [int(t) for t in np.random.default_rng(0).integers(3, 320, N_TOK - 1)]


def llama_cpp_logits(path: str) -> np.ndarray:
    from llama_cpp import Llama
    llm = Llama(path, n_ctx=128, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0)  # f32 KV
    llm.eval(tokens())
    return np.array(llm.scores[:N_TOK])


def reference_logits(path: str) -> np.ndarray:
    return forward(source_weights(SourceModel(path)), torch.tensor([tokens()]))[0].numpy()


def fuse_qkv(arrays: dict) -> dict:
    out = {}
    for name, a in arrays.items():
        if ".attn_q." in name:
            l = name.split(".")[1]
            out[f"blk.{l}.attn_qkv.weight"] = np.concatenate(
                [a, arrays[f"blk.{l}.attn_k.weight"], arrays[f"blk.{l}.attn_v.weight"]])
        elif ".attn_k." not in name and ".attn_v." not in name:
            out[name] = a
    return out


# name -> (keys, tensor transform, base fixture): files llama.cpp runs, which the converter must run alike
APPLIED = {
    "factor, no type (linear)": ({"llama.rope.scaling.factor": (4.0, F32)}, None, "base"),
    "linear factor": ({"llama.rope.scaling.type": ("linear", STR), "llama.rope.scaling.factor": (4.0, F32),
                       "llama.rope.scaling.original_context_length": (32, U32),
                       "llama.rope.scaling.finetuned": (True, BOOL)}, None, "base"),
    "legacy scale_linear": ({"llama.rope.scale_linear": (2.5, F32)}, None, "base"),
    "factor wins over scale_linear": ({"llama.rope.scaling.factor": (2.0, F32),
                                       "llama.rope.scale_linear": (4.0, F32)}, None, "base"),
    "type none ignores the factor": ({"llama.rope.scaling.type": ("none", STR),
                                      "llama.rope.scaling.factor": (4.0, F32)}, None, "base"),
    "factor 0 is none": ({"llama.rope.scaling.factor": (0.0, F32)}, None, "base"),
    "linear factor with rope_freqs": ({"llama.rope.scaling.factor": (3.0, F32)}, None, "base_rf"),
    "attn_factor": ({"llama.rope.scaling.attn_factor": (1.5, F32)}, None, "base"),
    "freq_base": ({"llama.rope.freq_base": (500.0, F32)}, None, "base"),
    "per-layer arrays": ({"llama.attention.head_count_kv": ([2, 2], ARR, U32),
                          "llama.attention.head_count": ([4, 4], ARR, U32),
                          "llama.feed_forward_length": ([96, 96], ARR, U32)}, None, "base"),
    "fused attn_qkv": ({}, fuse_qkv, "base"),
    "biases in some layers": ({}, lambda a: {**a, "blk.1.attn_k.bias": np.linspace(-2, 2, 32, dtype=np.float32),
                                            "blk.0.ffn_down.bias": np.linspace(1, -1, 64, dtype=np.float32)}, "base"),
}


@pytest.mark.parametrize("name", list(APPLIED))
def test_source_keys_match_llama_cpp(name, request, tmp_path):
    keys, tensors, fixture = APPLIED[name]
    path = variant(request.getfixturevalue(fixture), tmp_path / "v.gguf", keys, tensors=tensors)
    ref, ours = llama_cpp_logits(path), reference_logits(path)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=5e-4)   # seen: < 1e-4
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_scaling_keys_change_the_logits(base, tmp_path):
    """The keys above matter (else the comparison proves nothing): each moves llama.cpp's logits."""
    plain = llama_cpp_logits(base)
    for name in ("factor, no type (linear)", "legacy scale_linear", "attn_factor", "freq_base"):
        path = variant(base, tmp_path / "v.gguf", APPLIED[name][0])
        assert np.abs(llama_cpp_logits(path) - plain).max() > 0.1, name


@pytest.mark.parametrize("name", ["factor, no type (linear)", "linear factor with rope_freqs", "attn_factor",
                                  "fused attn_qkv"])
def test_converted_model_matches_llama_cpp(name, request, tmp_path):
    """Through the converter and the C runtime (f32, sparsity 0): the same logits as llama.cpp, within the
    runtime's own float32 noise against the reference (0.002 on the plain file, 0.006 with the sharper
    attention of attn_factor 1.5; a key left out moves them by > 0.1)."""
    from larosa.runtime.model import Model
    keys, tensors, fixture = APPLIED[name]
    path = variant(request.getfixturevalue(fixture), tmp_path / "v.gguf", keys, tensors=tensors)
    out = convert_for_test(path, str(tmp_path / "out.gguf"), "f32", sparsity=0.0)
    ours = Model(out, sparsity=0.0, n_threads=1).eval(tokens(), all_logits=True)
    ref = llama_cpp_logits(path)
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-2)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


# name -> (keys, tensor transform, exception, pattern): what the converter refuses, by name
REFUSED = {
    "yarn": ({"llama.rope.scaling.type": ("yarn", STR), "llama.rope.scaling.factor": (4.0, F32)}, None,
             UnsupportedError, "rope scaling 'yarn' \\(llama.rope.scaling.type\\) is not supported"),
    "longrope": ({"llama.rope.scaling.type": ("longrope", STR)}, None, UnsupportedError, "rope scaling 'longrope'"),
    "unknown scaling type": ({"llama.rope.scaling.type": ("dynamic", STR)}, None, UnsupportedError, "'dynamic'"),
    "yarn key": ({"llama.rope.scaling.yarn_ext_factor": (0.5, F32)}, None, UnsupportedError,
                 "'llama.rope.scaling.yarn_ext_factor' is not supported"),
    "attention.scale": ({"llama.attention.scale": (0.5, F32)}, None, UnsupportedError,
                        "'llama.attention.scale' is not supported"),
    "logit_scale": ({"llama.logit_scale": (0.5, F32)}, None, UnsupportedError, "'llama.logit_scale'"),
    "sliding window": ({"llama.attention.sliding_window": (16, U32)}, None, UnsupportedError,
                       "'llama.attention.sliding_window'"),
    "per-layer kv heads differ": ({"llama.attention.head_count_kv": ([2, 4], ARR, U32)}, None, UnsupportedError,
                                  "llama.attention.head_count_kv differs between layers \\(2, 4\\)"),
    "per-layer ff differ": ({"llama.feed_forward_length": ([96, 64], ARR, U32)}, None, UnsupportedError,
                            "llama.feed_forward_length differs between layers"),
    "partial rotary": ({"llama.rope.dimension_count": (8, U32)}, None, UnsupportedError,
                       "partial rotary.*llama.rope.dimension_count = 8"),
    "experts": ({"llama.expert_count": (8, U32), "llama.expert_used_count": (2, U32)}, None, UnsupportedError,
                "mixture-of-experts models.*llama.expert_count = 8"),
    # llama.cpp's llama biases are applied (test_arch_llama_qwen.py); others are refused
    "bias": ({}, lambda a: {**a, "blk.0.ffn_up.bias": np.ones(96, np.float32)}, UnsupportedError,
             "bias tensors are not supported \\(blk.0.ffn_up.bias\\)"),
    "fused qkv bias": ({}, lambda a: {**fuse_qkv(a), "blk.1.attn_qkv.bias": np.ones(128, np.float32)},
                       UnsupportedError, "bias tensors.*blk.1.attn_qkv.bias"),
    "moe tensor": ({}, lambda a: {**a, "blk.0.ffn_gate_inp.weight": np.ones((4, 64), np.float32)},
                   UnsupportedError, "mixture-of-experts tensors are not supported \\(blk.0.ffn_gate_inp.weight\\)"),
    "longrope factors": ({}, lambda a: {**a, "rope_factors_long.weight": np.ones(8, np.float32)},
                         UnsupportedError, "LongRoPE factors are not supported"),
    "unknown tensor": ({}, lambda a: {**a, "blk.0.attn_gate.weight": np.ones((64, 64), np.float32)},
                       UnsupportedError, "unexpected tensors for a LLaMA model: blk.0.attn_gate.weight"),
    # malformed
    "negative factor": ({"llama.rope.scaling.factor": (-2.0, F32)}, None, FormatError,
                        "llama.rope.scaling.factor = -2.0 must be"),
    "NaN factor": ({"llama.rope.scale_linear": (float("nan"), F32)}, None, FormatError, "scale_linear = nan"),
    "zero attn_factor": ({"llama.rope.scaling.attn_factor": (0.0, F32)}, None, FormatError, "attn_factor = 0.0"),
    "factor as string": ({"llama.rope.scaling.factor": ("4", STR)}, None, FormatError,
                         "'llama.rope.scaling.factor' must be a float"),
    "per-layer array short": ({"llama.attention.head_count_kv": ([2], ARR, U32)}, None, FormatError,
                              "head_count_kv has 1 entries, expected one per layer \\(2\\)"),
    "block_count array": ({"llama.block_count": ([2, 2], ARR, U32)}, None, FormatError,
                          "'llama.block_count' must be an integer, not an array of 2"),
    "vocab_size differs": ({"llama.vocab_size": (321, U32)}, None, FormatError, "llama.vocab_size = 321"),
    "fused and split": ({}, lambda a: {**a, "blk.1.attn_qkv.weight": np.ones((128, 64), np.float32)},
                        FormatError, "both a fused attn_qkv and separate"),
    "fused qkv wrong rows": ({}, lambda a: {**fuse_qkv(a), "blk.0.attn_qkv.weight": np.ones((96, 64), np.float32)},
                             FormatError, "'blk.0.attn_qkv.weight' has shape \\(96, 64\\), expected \\(128, 64\\)"),
    "missing tensor": ({}, lambda a: {k: v for k, v in a.items() if k != "blk.1.ffn_up.weight"}, FormatError,
                       "missing tensor 'blk.1.ffn_up.weight'"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_source_refusals(name, base, tmp_path):
    keys, tensors, exc, pattern = REFUSED[name]
    path = variant(base, tmp_path / "v.gguf", keys, tensors=tensors)
    with pytest.raises(exc, match=pattern) as e:
        SourceModel(path)
    assert type(e.value) is exc and path in str(e.value)


def test_cli_names_unsupported_key(base, tmp_path):
    """larosa-convert: one line naming the key, exit 1, nothing written."""
    import subprocess
    import sys
    from pathlib import Path
    path = variant(base, tmp_path / "v.gguf", {"llama.rope.scaling.type": ("yarn", STR)})
    out = tmp_path / "out.gguf"
    r = subprocess.run([str(Path(sys.executable).parent / "larosa-convert"), path, "-o", str(out),
                        "--calib", __file__], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "rope scaling 'yarn' (llama.rope.scaling.type) is not supported" in r.stderr
    assert not out.exists()


def test_source_vocabulary_checked_before_converting(base, tmp_path):
    """What the runtime would refuse in the output's vocabulary is refused at the input, before any
    slow step: an unsupported tokenizer by name, a malformed token list as malformed."""
    path = variant(base, tmp_path / "bert.gguf", {"tokenizer.ggml.model": ("bert", STR)})
    with pytest.raises(UnsupportedError, match="tokenizer.ggml.model = 'bert'"):
        SourceModel(path)
    r = GGUFReader(base)
    tokens = [bytes(r.fields["tokenizer.ggml.tokens"].parts[i]) for i in r.fields["tokenizer.ggml.tokens"].data]
    tokens[300] = tokens[301]
    path = variant(base, tmp_path / "dup.gguf", {"tokenizer.ggml.tokens": (tokens, ARR, STR)})
    with pytest.raises(FormatError, match="token 301 .* appears twice"):
        SourceModel(path)

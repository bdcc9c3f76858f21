"""Gemma 3 and Gemma 2 (converter/source.py ARCHS["gemma3"], ["gemma2"]) end to end on tiny synthetic
GGUFs (random weights, odd sizes, GQA, tied embedding) that llama.cpp loads: q/k norms, post-attention and post-FFN norms,
GeGLU, the embedding scaled by sqrt(d), sliding-window layers with their own RoPE base over more
positions than the window, final logit soft-capping:
- the torch reference of the source and the C runtime (F32 conversion, sparsity 0, prompt path and
  decode step) against llama.cpp's logits, 1e-4 relative; each feature moves them (it is exercised);
- at sparsity 0.4, the runtime against the reference with the runtime's selections replayed;
- Q8_0 / Q4_0 files: the prompt path and the decode step give the same bits;
- --method larosa (rotated residual) is refused with the reason;
- the chat template renders as in jinja2's stock sandbox, and a Gemma file without one gets Gemma's
  turn format.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import convert_for_test
from larosa.converter.model import forward
from larosa.converter.source import SourceModel
from larosa.converter.weights import source_weights
from larosa.runtime import chat
from larosa.runtime.errors import UnsupportedError
from larosa.runtime.model import Model
from larosa.tools.make_synthetic import make_synthetic
from test_arch_llama_qwen import llama_cpp_logits, rel, tokens
from test_chat import CONVERSATION, _stock_render
from test_runtime import check_against_reference

N_TOK = 70           # more than one 64-token pass of the prompt path, many times the window
WINDOW = 9
CAP = 40.0           # about the size of the logits: the cap bends them without flattening them
GEMMA_KV = {"attention.sliding_window": WINDOW, "attention.sliding_window_pattern": 3,
            "rope.freq_base_swa": 500.0, "final_logit_softcapping": CAP}


def gemma3(path: str, dim: int, ff: int, head_dim: int, qtype: str, seed: int, **kv) -> str:
    """7 layers: layers 2 and 5 global (pattern 3), the others sliding-window; 4 query / 2 kv heads."""
    return make_synthetic(path, dim, ff, 7, 4, 2, 320, qtype, tied=True, seed=seed, ctx=128, rope_base=20000.0,
                          head_dim=head_dim, qk_norm=True, post_norms=True, arch="gemma3",
                          chat_template=chat.GEMMA_TEMPLATE, extra_kv={**GEMMA_KV, **kv})


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> str:
    """F32 source of odd sizes: d 48, ff 80, heads of 24 (4 x 24 = 96 != d)."""
    return gemma3(str(tmp_path_factory.mktemp("gemma") / "g3.gguf"), 48, 80, 24, "f32", seed=11)


@pytest.fixture(scope="module")
def even(tmp_path_factory) -> str:
    """F16 source whose sizes a Q8_0 / Q4_0 LaRoSA file can hold."""
    return gemma3(str(tmp_path_factory.mktemp("gemma_q") / "g3.gguf"), 64, 128, 32, "f16", seed=12)


def test_reference_matches_llama_cpp(odd):
    """The source as the converter reads it gives llama.cpp's logits; without any one of the
    architecture's features it does not."""
    ref = llama_cpp_logits(odd)
    w = source_weights(SourceModel(odd))
    toks = torch.tensor([tokens()])
    assert w.hp.n_swa == WINDOW and w.hp.swa_layers == (True, True, False, True, True, False, True)
    assert rel(forward(w, toks)[0].numpy(), ref) < 1e-4                      # seen: 2e-5
    hp = w.hp
    for change in (dict(n_swa=0, swa_layers=()), dict(rope_base_swa=hp.rope_base), dict(final_softcap=0.0),
                   dict(embd_scale=1.0), dict(act="silu")):
        w.hp = dataclasses.replace(hp, **change)
        assert rel(forward(w, toks)[0].numpy(), ref) > 1e-3, change
    w.hp = hp
    for attr in ("post_attn_norm", "post_ffn_norm", "q_norm"):
        saved = [getattr(lw, attr) for lw in w.layers]
        for lw in w.layers:
            setattr(lw, attr, None)
        assert rel(forward(w, toks)[0].numpy(), ref) > 1e-3, attr
        for lw, v in zip(w.layers, saved):
            setattr(lw, attr, v)


@pytest.mark.parametrize("method", ["budget", "teal", "cats"])
def test_runtime_matches_llama_cpp(odd, method, tmp_path):
    """F32 conversion at sparsity 0 through the C runtime (f32 KV cache), prompt path and decode step."""
    out = convert_for_test(odd, str(tmp_path / "out.gguf"), "f32", sparsity=0.0, method=method)
    m = Model(out, sparsity=0.0, n_threads=1, type_k="f32", type_v="f32")
    assert m.hp.act == "gelu_tanh" and m.hp.final_softcap == CAP and m.hp.rope_base_swa == 500.0
    ref = llama_cpp_logits(odd)
    prompt = m.eval(tokens(), all_logits=True)
    m.reset()
    decode = np.stack([m.eval([t]) for t in tokens()])
    assert rel(prompt, ref) < 1e-4 and rel(decode, ref) < 1e-4                # seen: 2e-5


def test_no_sliding_window(tmp_path):
    """attention.sliding_window 0: every layer global, one RoPE base (llama.cpp's non-SWA graph)."""
    p = gemma3(str(tmp_path / "g.gguf"), 48, 80, 24, "f32", seed=5, **{"attention.sliding_window": 0})
    assert SourceModel(p).hp.n_swa == 0
    out = convert_for_test(p, str(tmp_path / "out.gguf"), "f32", sparsity=0.0, method="budget")
    m = Model(out, sparsity=0.0, n_threads=1, type_k="f32", type_v="f32")
    assert rel(m.eval(tokens(), all_logits=True), llama_cpp_logits(p)) < 1e-4


@pytest.fixture(scope="module")
def converted(odd, even, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("gemma_conv")
    return {(method, wtype): convert_for_test(odd if wtype == "f32" else even, str(d / f"{method}.{wtype}.gguf"),
                                              wtype, method=method)
            for method, wtype in (("budget", "f32"), ("wina", "f32"), ("cats", "f32"), ("budget", "q8_0"),
                                  ("topk", "q4_0"))}


@pytest.mark.parametrize("method,wtype", [("budget", "f32"), ("wina", "f32"), ("cats", "f32"), ("budget", "q8_0")])
@pytest.mark.parametrize("batched", [True, False], ids=["prefill", "decode"])
def test_sparse_runtime_matches_reference(converted, method, wtype, batched):
    """Sparsity 0.4: the runtime's logits against the reference given the runtime's selections, and
    every selection against its rule (CATS: the GeGLU gate ranks the down input)."""
    m = Model(converted[method, wtype], sparsity=0.4, n_threads=2)
    check_against_reference(m, np.random.default_rng(3).integers(0, m.hp.n_vocab, 39).tolist(), rtol=1e-4,
                            batched=batched)


@pytest.mark.parametrize("key", [("budget", "q8_0"), ("topk", "q4_0")])
def test_integer_logits_identical_prompt_and_decode(converted, key):
    m = Model(converted[key], sparsity=0.4, n_threads=2)
    toks = np.random.default_rng(9).integers(0, m.hp.n_vocab, 70).tolist()
    want = m.eval(toks, all_logits=True)
    m.reset()
    got = np.stack([m.eval([t]) for t in toks])
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_wina_scores_carry_the_post_norm(converted):
    """The o and down rows are measured with the post norm's scale on their outputs (selection.py)."""
    from larosa.converter.weights import larosa_weights
    f = Model(converted["wina", "f32"]).file
    w = larosa_weights(f)
    lw = w.layers[1]
    score = np.asarray(f.tensors["blk.1.score_attn_out.weight"].data)
    np.testing.assert_allclose(score, (lw.wo * lw.post_attn_norm[None, :]).norm(dim=1).numpy(), rtol=1e-5)
    assert not np.allclose(score, lw.wo.norm(dim=1).numpy(), rtol=1e-3)


@pytest.mark.parametrize("method", ["larosa", "budget:pca", "budget:auto"])
def test_rotated_methods_refused(odd, method, tmp_path):
    name, _, rotation = method.partition(":")
    with pytest.raises(UnsupportedError, match="post-attention and post-FFN norms.*unrotated method"):
        convert_for_test(odd, str(tmp_path / "x.gguf"), "f32", method=name, rotation=rotation or None)


def test_chat_template_renders_as_in_the_stock_sandbox(converted):
    model = Model(converted["budget", "f32"], n_threads=1)
    setup = chat.chat_setup(model)
    assert setup.template.source == chat.GEMMA_TEMPLATE and not setup.notes
    ours = setup.template.render(CONVERSATION)   # a system turn, then user / assistant / user
    assert ours == _stock_render(setup.template.source, CONVERSATION)
    assert ours.startswith("<s><start_of_turn>user\n Be brief. \n\nHi!")
    assert "<start_of_turn>model\nHello.<end_of_turn>\n" in ours and ours.endswith("<start_of_turn>model\n")


def test_gemma_without_template_gets_gemma_turns(tmp_path):
    p = make_synthetic(str(tmp_path / "g.gguf"), 48, 80, 1, 4, 2, 320, "f32", tied=True, head_dim=24, qk_norm=True,
                       post_norms=True, arch="gemma3", extra_kv={"attention.sliding_window": 4})
    out = convert_for_test(p, str(tmp_path / "out.gguf"), "f32", method="budget")
    with pytest.warns(UserWarning, match="Gemma's turn format"):
        setup = chat.make_setup(Model(out, n_threads=1))
    assert setup.template.source == chat.GEMMA_TEMPLATE


@pytest.mark.parametrize("key,value,match", [
    ("attention.sliding_window_pattern", None, "per layer is not supported"),
    ("rope.scaling.type", "yarn", "rope scaling 'yarn' .* not supported on Gemma 3"),
])
def test_unsupported_gemma_keys_refused(tmp_path, key, value, match):
    kv = {"attention.sliding_window": 4, key: value} if value is not None else {"attention.sliding_window": 4}
    p = make_synthetic(str(tmp_path / "g.gguf"), 48, 80, 2, 4, 2, 320, "f32", tied=True, head_dim=24, qk_norm=True,
                       post_norms=True, arch="gemma3", extra_kv=kv)
    if value is None:   # the pattern as one flag per layer (newer converters): refused, not guessed
        from gguf import GGUFReader, GGUFValueType, GGUFWriter
        from larosa.runtime.gguf_file import field_value
        r = GGUFReader(p)
        q = str(tmp_path / "g2.gguf")
        w = GGUFWriter(q, "gemma3")
        for k, f in r.fields.items():
            if not k.startswith("GGUF.") and k != "general.architecture":
                w.add_key_value(k, *field_value(f))
        w.add_key_value("gemma3." + key, [True, False], GGUFValueType.ARRAY, GGUFValueType.BOOL)
        for t in r.tensors:
            w.add_tensor(t.name, np.asarray(t.data))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        p = q
    with pytest.raises(UnsupportedError, match=match):
        SourceModel(p)


# ---- Gemma 2: no q/k norms; attention and final logits soft-capped (llama.cpp's defaults 50 and 30
# when the keys are absent); every other layer (the even ones) sliding-window, default 4096 positions,
# with the model's one RoPE base

GEMMA2_KV = {"attention.sliding_window": WINDOW, "attn_logit_softcapping": 3.0, "final_logit_softcapping": CAP}


def gemma2(path: str, seed: int, **kv) -> str:
    return make_synthetic(path, 48, 80, 5, 4, 2, 320, "f32", tied=True, seed=seed, ctx=128, head_dim=24,
                          post_norms=True, arch="gemma2", extra_kv=kv)


@pytest.mark.parametrize("keys", ["given", "defaults"])
def test_gemma2_matches_llama_cpp(keys, tmp_path):
    """Reference and C runtime (prompt path and decode step) against llama.cpp; the attention
    soft-cap matters (llama.cpp's default of 50 only slightly on these logits)."""
    p = gemma2(str(tmp_path / "g2.gguf"), seed=4, **(GEMMA2_KV if keys == "given" else {}))
    hp = SourceModel(p).hp
    want = (WINDOW, 3.0, CAP) if keys == "given" else (4096, 50.0, 30.0)
    assert (hp.n_swa, hp.attn_softcap, hp.final_softcap) == want
    assert hp.swa_layers == (True, False, True, False, True) and hp.rope_base_swa == hp.rope_base
    ref = llama_cpp_logits(p)
    w = source_weights(SourceModel(p))
    assert rel(forward(w, torch.tensor([tokens()]))[0].numpy(), ref) < 1e-4               # seen: 6e-5
    w.hp = dataclasses.replace(hp, attn_softcap=0.0)
    assert rel(forward(w, torch.tensor([tokens()]))[0].numpy(), ref) > (0.05 if keys == "given" else 3e-4)
    out = convert_for_test(p, str(tmp_path / "out.gguf"), "f32", sparsity=0.0, method="budget")
    m = Model(out, sparsity=0.0, n_threads=1, type_k="f32", type_v="f32")
    assert m.hp.attn_softcap == hp.attn_softcap
    prompt = m.eval(tokens(), all_logits=True)
    m.reset()
    decode = np.stack([m.eval([t]) for t in tokens()])
    assert rel(prompt, ref) < 1e-4 and rel(decode, ref) < 1e-4                            # seen: 6e-6


@pytest.mark.parametrize("batched", [True, False], ids=["prefill", "decode"])
def test_gemma2_sparse_runtime_matches_reference(tmp_path, batched):
    p = gemma2(str(tmp_path / "g2.gguf"), seed=6, **GEMMA2_KV)
    m = Model(convert_for_test(p, str(tmp_path / "out.gguf"), "f32", method="budget"), sparsity=0.4, n_threads=2)
    check_against_reference(m, np.random.default_rng(3).integers(0, m.hp.n_vocab, 39).tolist(), rtol=1e-4,
                            batched=batched)


def test_gemma2_method_larosa_refused(tmp_path):
    p = gemma2(str(tmp_path / "g2.gguf"), seed=4)
    with pytest.raises(UnsupportedError, match="Gemma 2: its post-attention and post-FFN norms"):
        convert_for_test(p, str(tmp_path / "x.gguf"), "f32", method="larosa")


def test_gpu_refuses_gemma_and_auto_runs_it_on_the_cpu(converted):
    """The GPU step implements llama's layer (with Qwen's biases and q/k norms), not Gemma's post norms,
    GeGLU or windows: --device gpu is refused by name before any device work; auto takes the CPU."""
    from larosa.runtime import gpu
    from larosa.runtime.errors import UnsupportedError
    from larosa.runtime.model import Model
    path = converted[("budget", "q8_0")]
    if gpu.available():
        with pytest.raises(UnsupportedError, match="gemma3 model; the GPU step runs llama"):
            Model(path, device="gpu")
    m = Model(path, device="auto")
    assert m.device == "cpu" and np.isfinite(m.eval([1, 2, 3])).all()

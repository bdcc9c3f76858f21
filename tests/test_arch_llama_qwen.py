"""Architectures beyond plain llama (converter/source.py ARCHS): llama files with biases, qwen2 (q/k/v
biases, NEOX RoPE), qwen3 (per-head q/k RMSNorm, its own head size, NEOX RoPE), granite (embedding,
attention, residual and logit scales; without RoPE when rope.scaling.finetuned is false) and smollm3
(q/k/v biases, no RoPE on every fourth layer), end to end on tiny synthetic GGUFs (random weights,
odd sizes, GQA) that llama.cpp loads (Gemma: tests/test_arch_gemma.py):
- the torch reference of the source and the C runtime (F32 conversion, sparsity 0, prompt path and
  decode step, default method and the fused LaRoSA form) against llama.cpp's logits, 1e-4 relative;
- at sparsity 0.4, the runtime against the reference with the runtime's selections replayed;
- Q8_0 files: the prompt path and the decode step give the same bits;
- the chat template each family ships renders in the sandbox as in jinja2's stock sandbox;
- architectures the converter does not read are refused by name (Phi-3, Mistral 3:
  tests/test_arch_phi_mistral.py).
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

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
from test_chat import CONVERSATION, LLAMA3, _stock_render
from test_runtime import check_against_reference

N_TOK = 70           # more than one 64-token pass of the prompt path
ALL_BIASES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_down")

# Qwen2.5-style ChatML with a default system turn and tool calls; Qwen3-style with reasoning blocks
# dropped from earlier assistant turns (written for these tests in the shape of the published ones)
QWEN2_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls %}
            {{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.function.name }}{{- '", "arguments": ' }}{{- tool_call.function.arguments | tojson }}{{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""
QWEN3_TEMPLATE = """{%- set ns = namespace(last_query=-1) %}
{%- for message in messages[::-1] %}
    {%- set i = (messages|length - 1) - loop.index0 %}
    {%- if message.role == "user" and ns.last_query < 0 %}{%- set ns.last_query = i %}{%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set m = namespace(content=message.content if message.content is string else '', reasoning='') %}
    {%- if message.role == "user" or message.role == "system" %}
        {{- '<|im_start|>' + message.role + '\\n' + m.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- if '</think>' in m.content %}
            {%- set m.reasoning = m.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set m.content = m.content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query and m.reasoning %}
            {{- '<|im_start|>assistant\\n<think>\\n' + m.reasoning.strip('\\n') + '\\n</think>\\n\\n' + m.content }}
        {%- else %}
            {{- '<|im_start|>assistant\\n' + m.content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}
{%- endif %}"""

# name -> make_synthetic arguments beyond the shape. Odd sizes: d 48, ff 80, 4 query / 2 kv heads,
# qwen3 heads of 24 (4 x 24 = 96 != d).
ARCHS = {
    "llama_bias": dict(arch="llama", biases=ALL_BIASES, chat_template=LLAMA3),
    "qwen2": dict(arch="qwen2", biases=("attn_q", "attn_k", "attn_v"), chat_template=QWEN2_TEMPLATE),
    "qwen3": dict(arch="qwen3", qk_norm=True, chat_template=QWEN3_TEMPLATE),
}
HEAD_DIM = {"qwen3": 24}
LAYERS = {"smollm3": 5}   # layer 3 without RoPE

# shaped like Granite 3's and SmolLM3's published templates (written for these tests)
GRANITE_TEMPLATE = """{%- for message in messages %}
{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"""
SMOLLM3_TEMPLATE = """{%- set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}
{{- '<|im_start|>system\n## Metadata\n\nReasoning Mode: /no_think\n\n## Custom Instructions\n\n' + system + '\n\n<|im_end|>\n' }}
{%- for message in messages %}{%- if message['role'] != 'system' %}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n<think>\n\n</think>\n' }}{%- endif %}"""
ARCHS.update({
    "granite": dict(arch="granite", biases=("attn_output", "ffn_down"), chat_template=GRANITE_TEMPLATE,
                    extra_kv={"logit_scale": 3.0, "residual_scale": 0.4, "embedding_scale": 2.5,
                              "attention.scale": 0.1}),
    "granite_norope": dict(arch="granite", chat_template=GRANITE_TEMPLATE,
                           extra_kv={"logit_scale": 2.0, "rope.scaling.finetuned": False}),
    "smollm3": dict(arch="smollm3", biases=("attn_q", "attn_k", "attn_v"), chat_template=SMOLLM3_TEMPLATE),
})


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> dict[str, str]:
    """name -> F32 source of odd sizes."""
    d = tmp_path_factory.mktemp("arch")
    return {n: make_synthetic(str(d / f"{n}.gguf"), 48, 80, LAYERS.get(n, 2), 4, 2, 320, "f32", seed=7 + i, ctx=128,
                              head_dim=HEAD_DIM.get(n), **a) for i, (n, a) in enumerate(ARCHS.items())}


@pytest.fixture(scope="module")
def even(tmp_path_factory) -> dict[str, str]:
    """name -> F16 source whose sizes a Q8_0 / Q4_0 LaRoSA file can hold (qwen3: heads of 32)."""
    d = tmp_path_factory.mktemp("arch_q")
    return {n: make_synthetic(str(d / f"{n}.gguf"), 64, 128, LAYERS.get(n, 2), 4, 2, 384, "f16", seed=17 + i, ctx=128,
                              head_dim=32 if n == "qwen3" else None, **a) for i, (n, a) in enumerate(ARCHS.items())}


def tokens(n: int = N_TOK) -> list[int]:
    return [1] + [int(t) for t in np.random.default_rng(0).integers(3, 320, n - 1)]


def llama_cpp_logits(path: str) -> np.ndarray:
    from llama_cpp import Llama
    llm = Llama(path, n_ctx=128, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0)  # f32 KV
    llm.eval(tokens())
    return np.array(llm.scores[:N_TOK])


def rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", list(ARCHS))
def test_reference_matches_llama_cpp(odd, name):
    """The source as the converter reads it (biases, q/k norms, NEOX permuted to adjacent pairs)
    gives llama.cpp's logits; without the architecture's features it does not (they matter)."""
    ref = llama_cpp_logits(odd[name])
    w = source_weights(SourceModel(odd[name]))
    ours = forward(w, torch.tensor([tokens()]))[0].numpy()
    assert rel(ours, ref) < 1e-4                                    # seen: ~6e-7
    for lw in w.layers:
        lw.bqkv = lw.bo = lw.bdown = lw.q_norm = lw.k_norm = None
    w.hp = dataclasses.replace(w.hp, no_rope_layers=(), embd_scale=1.0)
    assert rel(forward(w, torch.tensor([tokens()]))[0].numpy(), ref) > 0.01


def test_neox_pairing_matters(odd, tmp_path):
    """The same weights as a llama file (adjacent RoPE pairs) give llama.cpp other logits than the
    qwen2 file: the permutation at conversion is doing the work."""
    from gguf import GGUFReader, GGUFWriter
    from larosa.runtime.gguf_file import field_value
    r = GGUFReader(odd["qwen2"])
    w = GGUFWriter(str(tmp_path / "as_llama.gguf"), "llama")
    for k, f in r.fields.items():
        if k.startswith("qwen2."):
            w.add_key_value("llama." + k[len("qwen2."):], *field_value(f))
        elif not k.startswith("GGUF.") and k != "general.architecture":
            w.add_key_value(k, *field_value(f))
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert rel(llama_cpp_logits(str(tmp_path / "as_llama.gguf")), llama_cpp_logits(odd["qwen2"])) > 0.01


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("method", ["budget", "larosa"])
def test_runtime_matches_llama_cpp(odd, name, method, tmp_path):
    """F32 conversion at sparsity 0 through the C runtime (f32 KV cache), prompt path and decode step:
    llama.cpp's logits. The fused LaRoSA form (rotations folded into the weights, output biases
    rotated with them) is exact too."""
    out = convert_for_test(odd[name], str(tmp_path / "out.gguf"), "f32", sparsity=0.0, method=method)
    m = Model(out, sparsity=0.0, n_threads=1, type_k="f32", type_v="f32")
    ref = llama_cpp_logits(odd[name])
    prompt = m.eval(tokens(), all_logits=True)
    m.reset()
    decode = np.stack([m.eval([t]) for t in tokens()])
    assert rel(prompt, ref) < 1e-4 and rel(decode, ref) < 1e-4    # seen: < 1e-6


@pytest.fixture(scope="module")
def converted_arch(odd, even, tmp_path_factory) -> dict:
    """(name, method, type) -> LaRoSA file at sparsity 0.4."""
    d = tmp_path_factory.mktemp("arch_conv")
    out = {}
    for name in ARCHS:
        for method, wtype, src in (("budget", "f32", odd), ("larosa", "q8_0", even), ("budget", "q4_0", even)):
            out[name, method, wtype] = convert_for_test(src[name], str(d / f"{name}.{method}.{wtype}.gguf"), wtype,
                                                        method=method)
    return out


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("method,wtype", [("budget", "f32"), ("larosa", "q8_0")])
@pytest.mark.parametrize("batched", [True, False], ids=["prefill", "decode"])
def test_sparse_runtime_matches_reference(converted_arch, name, method, wtype, batched):
    """Sparsity 0.4: the runtime's logits against the reference given the runtime's selections, and
    every selection against its rule (test_runtime.check_against_reference)."""
    m = Model(converted_arch[name, method, wtype], sparsity=0.4, n_threads=2)
    check_against_reference(m, np.random.default_rng(3).integers(0, m.hp.n_vocab, 39).tolist(), rtol=1e-4,
                            batched=batched)


@pytest.mark.parametrize("name", list(ARCHS))
def test_integer_logits_identical_prompt_and_decode(converted_arch, name):
    """Q4_0 without adapters: every product on the integer kernels, so the biases and q/k norms,
    done by one function in both paths, keep the prompt path and the decode step bit-identical."""
    m = Model(converted_arch[name, "budget", "q4_0"], sparsity=0.4, n_threads=2)
    toks = np.random.default_rng(9).integers(0, m.hp.n_vocab, 70).tolist()
    want = m.eval(toks, all_logits=True)
    m.reset()
    got = np.stack([m.eval([t]) for t in toks])
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("name", list(ARCHS))
def test_chat_template_renders_as_in_the_stock_sandbox(converted_arch, name):
    """The template the source file carries, copied into the LaRoSA file, renders as jinja2's stock
    sandbox renders it (Qwen3's also with thinking turned off and a reasoning block to drop)."""
    model = Model(converted_arch[name, "budget", "f32"], n_threads=1)
    setup = chat.chat_setup(model)
    assert setup.template.source == ARCHS[name]["chat_template"]
    conversations = [CONVERSATION]
    if name == "qwen3":
        conversations.append(CONVERSATION[:2] + [{"role": "assistant", "content": "<think>\nsum\n</think>\n\nHello."},
                                                 CONVERSATION[3]])
    for conv in conversations:
        ours = setup.template.render(conv)
        assert ours == _stock_render(setup.template.source, conv)
        if name in ("qwen2", "qwen3"):
            assert ours.startswith("<|im_start|>system\nBe brief.") or "<|im_start|>" in ours
            assert ours.endswith("<|im_start|>assistant\n")
    if name == "qwen3":
        assert "<think>" not in setup.template.render(conversations[1])
        off = setup.template.render(CONVERSATION, enable_thinking=False)
        assert off == _stock_render(setup.template.source, CONVERSATION, enable_thinking=False)
        assert off.endswith("<think>\n\n</think>\n\n")


def _cli(name: str, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / name
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def test_cli_convert_run_perplexity_bench_qwen3(even, tmp_path):
    """larosa-convert (default method), larosa-run, larosa-perplexity and larosa-bench on a qwen3 file."""
    out = tmp_path / "q3.larosa.gguf"
    calib = tmp_path / "calib.txt"
    calib.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    r = _cli("larosa-convert", even["qwen3"], "-o", str(out), "--calib", str(calib), "--type", "q8_0")
    assert r.returncode == 0, r.stderr
    r = _cli("larosa-run", "-m", str(out), "-p", "the quick", "-n", "6", "--temp", "0", "-t", "1")
    assert r.returncode == 0 and r.stdout.startswith("the quick"), r.stderr
    r = _cli("larosa-perplexity", "-m", str(out), "-f", str(calib), "-c", "32", "--chunks", "2", "--json", "-q")
    assert r.returncode == 0, r.stderr
    assert '"ppl"' in r.stdout
    r = _cli("larosa-bench", "-m", even["qwen3"], "-M", str(out), "--sparsity", "0.4", "-t", "1", "-n", "4",
             "-p", "8", "--rounds", "1", "--bw-mib", "16", "--allow-type-mismatch", "--json")
    assert r.returncode == 0, r.stderr
    assert '"engine": "llama.cpp"' in r.stdout and '"engine": "larosa"' in r.stdout


@pytest.mark.parametrize("arch", ["qwen2moe", "phi2"])
def test_other_architectures_refused_by_name(odd, arch, tmp_path):
    p = make_synthetic(str(tmp_path / "x.gguf"), 48, 80, 1, 4, 2, 320, "f32", arch=arch)
    with pytest.raises(UnsupportedError, match=f"architecture '{arch}' is not supported.*llama, qwen2, qwen3, gemma2"
                                               ".*phi3, mistral3"):
        SourceModel(p)


@pytest.mark.parametrize("arch,bias", [("llama", "ffn_up"), ("llama", "ffn_gate"), ("qwen2", "attn_output"),
                                       ("qwen3", "attn_q")])
def test_biases_llama_cpp_does_not_read_refused(arch, bias, tmp_path):
    """A bias the architecture does not have in llama.cpp (or that the converter does not apply) is
    refused by name, not ignored."""
    p = make_synthetic(str(tmp_path / "x.gguf"), 48, 80, 1, 4, 2, 320, "f32", arch=arch, biases=(bias,),
                       qk_norm=arch == "qwen3")
    with pytest.raises(UnsupportedError, match=f"bias tensors are not supported \\(blk.0.{bias}.bias\\)"):
        SourceModel(p)


def test_qwen3_without_qk_norm_is_malformed(tmp_path):
    from larosa.runtime.errors import FormatError
    p = make_synthetic(str(tmp_path / "x.gguf"), 48, 80, 1, 4, 2, 320, "f32", arch="qwen3")
    with pytest.raises(FormatError, match="missing tensor 'blk.0.attn_q_norm.weight'"):
        SourceModel(p)

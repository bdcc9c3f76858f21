"""Synthetic llama GGUFs: any shape, random weights, a generated SentencePiece-style vocabulary.

The file is an ordinary llama GGUF that llama.cpp and transformers load; weights are written one
tensor at a time, so a 7B shape needs little memory.

    python -m larosa.tools.make_synthetic --dim 4096 --ff 11008 --layers 32 --heads 32 \
        --kv-heads 32 --vocab 32000 --type q4_0 -o llama2-7b-shape.q4_0.gguf
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFWriter, TokenType, quants

from larosa.runtime.format import row_bytes

TYPES = {"f32": QT.F32, "f16": QT.F16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0, "q4_1": QT.Q4_1,
         "q5_0": QT.Q5_0, "q5_1": QT.Q5_1}
FILE_TYPE = {QT.F32: 0, QT.F16: 1, QT.Q4_0: 2, QT.Q4_1: 3, QT.Q8_0: 7, QT.Q5_0: 8, QT.Q5_1: 9}
ALPHABET = "etaoinshrdlucmfwypvbgkjqxz"


def spm_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """<unk> <s> </s>, the 256 byte tokens, then '▁' + letters and letter strings of growing
    length (every prefix present, so SentencePiece merges can reach each piece)."""
    if n_vocab < 300:
        raise ValueError("--vocab must be at least 300")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    pieces: list[str] = ["▁"]
    for n in itertools.count(1):
        for combo in itertools.product(ALPHABET, repeat=n):
            s = "".join(combo)
            pieces += ["▁" + s, s]
        if len(tokens) + len(pieces) >= n_vocab:
            break
    pieces = pieces[: n_vocab - len(tokens)]
    scores = [0.0] * len(tokens) + [-float(i) for i in range(len(pieces))]
    return tokens + pieces, scores, [int(t) for t in types] + [int(TokenType.NORMAL)] * len(pieces)


def tensor_plan(dim: int, ff: int, layers: int, heads: int, kv_heads: int, vocab: int,
                tied: bool, rope_freqs: bool, head_dim: int | None = None, biases: tuple[str, ...] = (),
                qk_norm: bool = False, post_norms: bool = False, fused_qkv: bool = False, up_gate: bool = False,
                rope_dims: int | None = None, longrope: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """biases: of attn_q, attn_k, attn_v, attn_output, ffn_down (every layer); qk_norm: Qwen3's
    attn_q_norm / attn_k_norm; post_norms: Gemma's post_attention_norm / post_ffw_norm; fused_qkv: one
    attn_qkv (q, k, v rows); up_gate: Phi-3's ffn_up [2 ff, d] (gate rows, then up) and no ffn_gate;
    longrope: Phi-3's rope_factors_long / rope_factors_short [rope_dims / 2]."""
    hd = head_dim or dim // heads
    n_rot = rope_dims or hd
    vec = {"attn_q": heads * hd, "attn_k": kv_heads * hd, "attn_v": kv_heads * hd, "attn_output": dim, "ffn_down": dim,
           "ffn_gate": ff, "ffn_up": ff}
    plan: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (vocab, dim))]
    for l in range(layers):
        attn = [(f"blk.{l}.attn_qkv.weight", ((heads + 2 * kv_heads) * hd, dim))] if fused_qkv else \
            [(f"blk.{l}.attn_q.weight", (heads * hd, dim)), (f"blk.{l}.attn_k.weight", (kv_heads * hd, dim)),
             (f"blk.{l}.attn_v.weight", (kv_heads * hd, dim))]
        mlp = [(f"blk.{l}.ffn_up.weight", (2 * ff, dim))] if up_gate else \
            [(f"blk.{l}.ffn_gate.weight", (ff, dim)), (f"blk.{l}.ffn_up.weight", (ff, dim))]
        plan += [(f"blk.{l}.attn_norm.weight", (dim,)), *attn,
                 (f"blk.{l}.attn_output.weight", (dim, heads * hd)), (f"blk.{l}.ffn_norm.weight", (dim,)),
                 *mlp, (f"blk.{l}.ffn_down.weight", (dim, ff))]
        plan += [(f"blk.{l}.{b}.bias", (vec[b],)) for b in biases]
        if qk_norm:
            plan += [(f"blk.{l}.attn_q_norm.weight", (hd,)), (f"blk.{l}.attn_k_norm.weight", (hd,))]
        if post_norms:
            plan += [(f"blk.{l}.post_attention_norm.weight", (dim,)), (f"blk.{l}.post_ffw_norm.weight", (dim,))]
    plan.append(("output_norm.weight", (dim,)))
    if not tied:
        plan.append(("output.weight", (vocab, dim)))
    if rope_freqs:
        plan.append(("rope_freqs.weight", (n_rot // 2,)))
    if longrope:
        plan += [("rope_factors_long.weight", (n_rot // 2,)), ("rope_factors_short.weight", (n_rot // 2,))]
    return plan


def _values(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name == "rope_freqs.weight":
        return np.linspace(1.0, 8.0, shape[0], dtype=np.float32)
    if name.startswith("rope_factors_"):   # LongRoPE: short factors near 1, long ones growing to ~20
        top = 20.0 if "long" in name else 1.5
        return (np.linspace(1.0, top, shape[0]) * rng.uniform(0.9, 1.1, shape[0])).astype(np.float32)
    if name.endswith(".bias"):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.5)
    if len(shape) == 1:   # norm scales around 1 with a few strong channels, as in real models
        g = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        g[rng.choice(shape[0], max(1, shape[0] // 64), replace=False)] *= 4.0
        return g
    std = 1.0 if name == "token_embd.weight" else 1.0 / np.sqrt(shape[1])
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))


def make_synthetic(path: str, dim: int, ff: int, layers: int, heads: int, kv_heads: int, vocab: int,
                   qtype: str = "f32", tied: bool = False, seed: int = 0, ctx: int = 4096,
                   rope_freqs: bool = False, rope_base: float = 10000.0, arch: str = "llama",
                   head_dim: int | None = None, biases: tuple[str, ...] = (), qk_norm: bool = False,
                   chat_template: str | None = None, post_norms: bool = False,
                   extra_kv: dict | None = None, fused_qkv: bool = False, up_gate: bool = False,
                   rope_dims: int | None = None, longrope: bool = False) -> str:
    """arch: general.architecture (llama, qwen2, qwen3, gemma3...: the same tensors and keys; the
    caller picks the biases / q/k norms / post norms the architecture has); head_dim: a head size
    other than dim / heads (written as attention.key_length / value_length); extra_kv: more
    <arch>.* keys, name (without the prefix) -> int (uint32), float (float32), bool or str;
    rope_dims: rope.dimension_count below the head size (partial rotary); fused_qkv, up_gate,
    longrope: tensor_plan."""
    if (head_dim is None and dim % heads) or heads % kv_heads or (head_dim or dim // heads) % 2:
        raise ValueError("dim must split into heads of even size; heads must be a multiple of kv-heads")
    qt = TYPES[qtype]
    rng = np.random.default_rng(seed)
    plan = tensor_plan(dim, ff, layers, heads, kv_heads, vocab, tied, rope_freqs, head_dim, biases, qk_norm,
                       post_norms, fused_qkv, up_gate, rope_dims, longrope)
    types = {n: (QT.F32 if len(s) == 1 else qt) for n, s in plan}
    w = GGUFWriter(path, arch)
    w.add_name(f"synthetic-{dim}x{layers}")
    w.add_uint32("general.file_type", FILE_TYPE[qt])
    w.add_uint32("general.quantization_version", 2)
    w.add_context_length(ctx)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ff)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(rope_dims or head_dim or dim // heads)
    if head_dim:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    for k, v in (extra_kv or {}).items():
        add = w.add_bool if isinstance(v, bool) else w.add_uint32 if isinstance(v, int) else \
            w.add_string if isinstance(v, str) else w.add_float32
        add(f"{arch}.{k}", v)
    tokens, scores, ttypes = spm_vocab(vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(ttypes)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for name, shape in plan:
        nbytes = row_bytes(types[name], shape[-1]) * int(np.prod(shape[:-1]))
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=types[name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape in plan:
        w.write_tensor_data(quants.quantize(_values(rng, name, shape), types[name]))
    w.close()
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make_synthetic", description="Write a random llama GGUF of any shape.")
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--ff", type=int, required=True)
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--kv-heads", type=int, required=True)
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--type", default="q8_0", choices=list(TYPES))
    p.add_argument("--tied", action="store_true", help="no output.weight: the head reuses token_embd")
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--rope-freqs", action="store_true", help="add rope_freqs.weight (llama3-style RoPE factors)")
    p.add_argument("--rope-base", type=float, default=10000.0, help="RoPE frequency base (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args(argv)
    if os.path.exists(a.output):
        print(f"make_synthetic: {a.output} exists", file=sys.stderr)
        return 1
    tmp = a.output + ".tmp"
    try:
        make_synthetic(tmp, a.dim, a.ff, a.layers, a.heads, a.kv_heads, a.vocab, a.type, a.tied, a.seed, a.ctx,
                       a.rope_freqs, a.rope_base)
        os.replace(tmp, a.output)
    except (ValueError, OSError) as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        print(f"make_synthetic: error: {e}", file=sys.stderr)
        return 1
    print(a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

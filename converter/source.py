"""The input of the converter: a llama.cpp GGUF of the LLaMA architecture, validated and
read one tensor at a time (dequantized on demand, so a 7B model never sits in memory whole)."""
from __future__ import annotations

import os

import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from gguf import quants

from larosa.runtime import format as F
from larosa.runtime.errors import FormatError, UnsupportedError
from larosa.runtime.gguf_file import Metadata, open_gguf, tensor_map, tensor_rows_cols

LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def _dequantizable(qt: QT) -> bool:
    if qt in (QT.F32, QT.F16):
        return True
    try:  # one all-zero block: cheap, and exactly what gguf would do with the real data
        quants.dequantize(np.zeros((1, quants.GGML_QUANT_SIZES[qt][1]), dtype=np.uint8), qt)
        return True
    except (NotImplementedError, KeyError, ValueError):
        return False


class SourceModel:
    """A validated llama GGUF: hyper-parameters, metadata and lazily dequantized weights."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.reader = open_gguf(self.path)
        self.meta = Metadata(self.reader, self.path)
        arch = self.meta.str("general.architecture")
        if arch == F.ARCH:
            raise UnsupportedError(f"{self.path}: already a LaRoSA file (general.architecture = {arch!r})")
        if arch != "llama":
            raise UnsupportedError(f"{self.path}: architecture {arch!r} is not supported (only 'llama')")
        self.tensors = tensor_map(self.reader)
        self.hp = self._hparams()
        self._validate()

    # -- metadata ---------------------------------------------------------------------------
    def _hparams(self) -> F.HParams:
        m = self.meta
        for k in ("llama.expert_count",):
            if m.has(k) and m.int(k) > 0:
                raise UnsupportedError(f"{self.path}: mixture-of-experts models are not supported")
        scaling = m.str("llama.rope.scaling.type", "none")
        if scaling not in ("none", ""):
            raise UnsupportedError(f"{self.path}: rope scaling {scaling!r} is not supported")
        dim = m.int("llama.embedding_length")
        n_heads = m.int("llama.attention.head_count")
        n_kv = m.int("llama.attention.head_count_kv", n_heads)
        if "token_embd.weight" not in self.tensors:
            raise FormatError(f"{self.path}: missing tensor 'token_embd.weight'")
        n_vocab = tensor_rows_cols(self.tensors["token_embd.weight"])[0]
        if n_heads <= 0 or n_kv <= 0 or n_heads % n_kv:
            raise FormatError(f"{self.path}: head counts {n_heads}/{n_kv} are inconsistent")
        head_dim = m.int("llama.attention.key_length", dim // n_heads if dim % n_heads == 0 else 0)
        if head_dim <= 0 or head_dim % 2 or m.int("llama.attention.value_length", head_dim) != head_dim:
            raise UnsupportedError(f"{self.path}: head size must be even and equal for keys and values")
        if m.int("llama.rope.dimension_count", head_dim) != head_dim:
            raise UnsupportedError(f"{self.path}: partial rotary embeddings are not supported")
        hp = F.HParams(
            n_vocab=n_vocab, dim=dim, n_layers=m.int("llama.block_count"), n_heads=n_heads,
            n_kv_heads=n_kv, head_dim=head_dim, ffn_dim=m.int("llama.feed_forward_length"),
            norm_eps=m.float("llama.attention.layer_norm_rms_epsilon"),
            rope_base=m.float("llama.rope.freq_base", 10000.0),
            n_ctx=m.int("llama.context_length"), tied="output.weight" not in self.tensors)
        for name in ("dim", "n_layers", "ffn_dim", "n_ctx"):
            if getattr(hp, name) <= 0:
                raise FormatError(f"{self.path}: {name} = {getattr(hp, name)} must be positive")
        if not hp.norm_eps > 0 or not np.isfinite(hp.rope_base) or hp.rope_base <= 0:
            raise FormatError(f"{self.path}: invalid norm epsilon or rope base")
        return hp

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        q, kv = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim
        shapes = {"token_embd.weight": (hp.n_vocab, hp.dim), "output_norm.weight": (hp.dim,)}
        if not hp.tied:
            shapes["output.weight"] = (hp.n_vocab, hp.dim)
        if F.T_ROPE_FREQS in self.tensors:
            shapes[F.T_ROPE_FREQS] = (hp.head_dim // 2,)
        per_layer = {"attn_norm": (hp.dim,), "attn_q": (q, hp.dim), "attn_k": (kv, hp.dim),
                     "attn_v": (kv, hp.dim), "attn_output": (hp.dim, q), "ffn_norm": (hp.dim,),
                     "ffn_gate": (hp.ffn_dim, hp.dim), "ffn_up": (hp.ffn_dim, hp.dim),
                     "ffn_down": (hp.dim, hp.ffn_dim)}
        for l in range(hp.n_layers):
            for n, s in per_layer.items():
                shapes[f"blk.{l}.{n}.weight"] = s
        return shapes

    def _validate(self) -> None:
        expected = self._expected_shapes()
        for name, shape in expected.items():
            t = self.tensors.get(name)
            if t is None:
                raise FormatError(f"{self.path}: missing tensor {name!r}")
            if tensor_rows_cols(t) != shape:
                raise FormatError(f"{self.path}: tensor {name!r} has shape {tensor_rows_cols(t)}, expected {shape}")
            if not _dequantizable(t.tensor_type):
                raise UnsupportedError(f"{self.path}: tensor {name!r} has type {t.tensor_type.name}, "
                                       "which gguf cannot dequantize")
        extra = sorted(set(self.tensors) - set(expected))
        if extra:
            raise UnsupportedError(f"{self.path}: unexpected tensors for a LLaMA model: {', '.join(extra[:5])}")

    # -- weights ----------------------------------------------------------------------------
    def raw(self, name: str):
        return self.tensors[name]

    def weight(self, name: str) -> torch.Tensor:
        """The tensor dequantized to float32, row-major shape (a linear's W is [out, in])."""
        t = self.tensors[name]
        try:
            arr = quants.dequantize(np.asarray(t.data), t.tensor_type)
        except Exception as e:
            raise FormatError(f"{self.path}: cannot read tensor {name!r} ({e})") from None
        arr = np.array(arr, dtype=np.float32).reshape(tensor_rows_cols(t))  # a copy: mmap is read-only
        return torch.from_numpy(arr)

    def layer(self, l: int) -> dict[str, torch.Tensor]:
        return {n: self.weight(f"blk.{l}.{n}.weight") for n in LAYER_TENSORS}

    def tokenizer_fields(self) -> list[str]:
        return [k for k in self.reader.fields if k.startswith("tokenizer.")]

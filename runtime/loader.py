"""Opening a LaRoSA GGUF: every key, shape and type checked against FORMAT.md before use."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, ReaderTensor

from . import format as F
from .errors import FormatError, UnsupportedError
from .gguf_file import Metadata, open_gguf, tensor_map, tensor_rows_cols

MAX_DIM = 1 << 17      # caps on sizes read from the file, far above any real model
MAX_LAYERS = 1024
MAX_VOCAB = 1 << 22
MAX_CTX = 1 << 22


@dataclass
class LarosaFile:
    path: str
    reader: GGUFReader
    meta: Metadata
    hp: F.HParams
    method: str
    sparsity: float                       # the default chosen at conversion
    coefs: dict[str, list[float]]         # per block input, per layer
    tensors: dict[str, ReaderTensor]
    has_rope_freqs: bool

    def ks(self, sparsity: float | None = None) -> dict[str, list[int]]:
        """k per block input and layer at `sparsity` (default: the file's)."""
        s = self.sparsity if sparsity is None else sparsity
        if not (isinstance(s, (int, float)) and math.isfinite(s) and 0.0 <= s < 1.0):
            raise ValueError(f"sparsity must be in [0, 1), got {s}")
        return F.ks_for(self.hp, self.coefs, float(s))

    def types(self) -> dict[str, QT]:
        return {n: t.tensor_type for n, t in self.tensors.items()}

    def bytes_per_token(self, sparsity: float | None = None) -> int:
        return F.bytes_per_token(self.hp, self.types(), self.ks(sparsity))


def _hparams(m: Metadata, path: str) -> F.HParams:
    def count(key: str, lo: int, hi: int) -> int:
        v = m.int(key)
        if not lo <= v <= hi:
            raise FormatError(f"{path}: {key} = {v} is out of range [{lo}, {hi}]")
        return v

    hp = F.HParams(
        n_vocab=count(F.K_VOCAB, 1, MAX_VOCAB), dim=count(F.K_DIM, 1, MAX_DIM),
        n_layers=count(F.K_LAYERS, 1, MAX_LAYERS), n_heads=count(F.K_HEADS, 1, 4096),
        n_kv_heads=count(F.K_KV_HEADS, 1, 4096), head_dim=count(F.K_HEAD_DIM, 2, 4096),
        ffn_dim=count(F.K_FF, 1, MAX_DIM), norm_eps=m.float(F.K_EPS),
        rope_base=m.float(F.K_ROPE_BASE), n_ctx=count(F.K_CONTEXT, 1, MAX_CTX), tied=m.bool(F.K_TIED))
    if hp.n_heads % hp.n_kv_heads or hp.head_dim % 2:
        raise FormatError(f"{path}: heads {hp.n_heads}/{hp.n_kv_heads} of size {hp.head_dim} are inconsistent")
    if hp.n_heads * hp.head_dim > MAX_DIM:
        raise FormatError(f"{path}: attention width {hp.n_heads * hp.head_dim} is too large")
    if m.int(F.K_ROPE_DIM) != hp.head_dim:
        raise UnsupportedError(f"{path}: partial rotary embeddings are not supported")
    if not (math.isfinite(hp.norm_eps) and 0 < hp.norm_eps < 1):
        raise FormatError(f"{path}: {F.K_EPS} = {hp.norm_eps} is invalid")
    if not (math.isfinite(hp.rope_base) and hp.rope_base > 1):
        raise FormatError(f"{path}: {F.K_ROPE_BASE} = {hp.rope_base} is invalid")
    return hp


def _per_layer(m: Metadata, key: str, kind: str, n: int, path: str) -> np.ndarray:
    a = m.array(key, kind)
    if a.shape != (n,):
        raise FormatError(f"{path}: {key} has {a.size} entries, expected one per layer ({n})")
    return a


def load(path: str | os.PathLike) -> LarosaFile:
    """Opens and validates a LaRoSA GGUF; raises FormatError/UnsupportedError naming the problem."""
    path = os.fspath(path)
    reader = open_gguf(path)
    m = Metadata(reader, path)
    arch = m.str("general.architecture")
    if arch == "llama":
        raise UnsupportedError(f"{path}: a llama GGUF, not a LaRoSA one: convert it first "
                               f"(larosa-convert {os.path.basename(path)})")
    if arch != F.ARCH:
        raise UnsupportedError(f"{path}: architecture {arch!r} is not a LaRoSA file")
    version = m.int(F.K_VERSION)
    if version != F.FORMAT_VERSION:
        raise UnsupportedError(f"{path}: format version {version}, this runtime reads {F.FORMAT_VERSION}")
    method = m.str(F.K_METHOD)
    if method not in F.METHODS:
        raise UnsupportedError(f"{path}: sparsity method {method!r} is not supported")
    hp = _hparams(m, path)
    sparsity = m.float(F.K_SPARSITY)
    if not (math.isfinite(sparsity) and 0 <= sparsity < 1):
        raise FormatError(f"{path}: {F.K_SPARSITY} = {sparsity} is outside [0, 1)")
    coefs = {}
    for b in F.BLOCK_INPUTS:
        c = _per_layer(m, F.K_COEF(b), "float", hp.n_layers, path)
        if not np.all(np.isfinite(c)) or c.min() < 0 or c.max() > 10:
            raise FormatError(f"{path}: {F.K_COEF(b)} must hold finite values in [0, 10]")
        coefs[b] = [float(x) for x in c]
        k = _per_layer(m, F.K_K(b), "int", hp.n_layers, path)
        if k.min() < 1 or k.max() > hp.block_input_width(b):
            raise FormatError(f"{path}: {F.K_K(b)} must be in [1, {hp.block_input_width(b)}]")

    tensors = tensor_map(reader)
    has_rope_freqs = F.T_ROPE_FREQS in tensors
    expected = F.expected_tensors(hp, has_rope_freqs)
    for name, shape in expected.items():
        t = tensors.get(name)
        if t is None:
            raise FormatError(f"{path}: missing tensor {name!r}")
        if tensor_rows_cols(t) != shape:
            raise FormatError(f"{path}: tensor {name!r} has shape {tensor_rows_cols(t)}, expected {shape}")
        if len(shape) == 1 and t.tensor_type != QT.F32:
            raise FormatError(f"{path}: tensor {name!r} must be F32, not {t.tensor_type.name}")
        if t.tensor_type not in F.RUNTIME_TYPES:
            raise UnsupportedError(f"{path}: tensor {name!r} has type {t.tensor_type.name}; "
                                   f"the runtime reads {', '.join(q.name for q in F.RUNTIME_TYPES)}")
        F.check_row_length(t.tensor_type, shape[-1], f"{path}: tensor {name!r}")
        if t.data.nbytes != F.row_bytes(t.tensor_type, shape[-1]) * (shape[0] if len(shape) == 2 else 1):
            raise FormatError(f"{path}: tensor {name!r} data is truncated")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise FormatError(f"{path}: unexpected tensors: {', '.join(extra[:5])}")
    return LarosaFile(path=path, reader=reader, meta=m, hp=hp, method=method, sparsity=sparsity,
                      coefs=coefs, tensors=tensors, has_rope_freqs=has_rope_freqs)

"""Opening a LaRoSA GGUF: every key, shape and type checked against FORMAT.md before use."""
from __future__ import annotations

import math
import os
import re
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
MAX_GRID = 1024
_SCORE = re.compile(r"blk\.(\d+)\.score_(attn_in|attn_out|mlp_in|mlp_out)\.weight")


@dataclass
class Selection:
    """How every block input of every layer picks the inputs it reads, at one sparsity."""
    k: dict[str, list[int]]             # Top-K: k per layer (when the threshold is < 0)
    threshold: dict[str, list[float]]   # >= 0: keep keys above it; < 0: Top-K


@dataclass
class LarosaFile:
    path: str
    reader: GGUFReader
    meta: Metadata
    hp: F.HParams
    method: str
    sparsity: float                       # the default chosen at conversion
    coefs: dict[str, list[float]]         # per block input, per layer
    rotated: list[bool]                   # per layer: a PCA basis (else the identity)
    thr_grid: list[float] | None          # threshold tables: levels
    thr_table: dict[str, np.ndarray]      # block input -> [n_layer, G] (absent: Top-K)
    mlp_out_key: str                      # "act" or "gate"
    tensors: dict[str, ReaderTensor]

    def levels(self, sparsity: float | None = None) -> dict[str, list[float]]:
        """Fraction of each block input's inputs skipped, per layer: min(coef * s, 1)."""
        s = self.sparsity if sparsity is None else sparsity
        if not (isinstance(s, (int, float)) and math.isfinite(s) and 0.0 <= s < 1.0):
            raise ValueError(f"sparsity must be in [0, 1), got {s}")
        return {b: [min(c * float(s), 1.0) for c in self.coefs[b]] for b in F.BLOCK_INPUTS}

    def ks(self, sparsity: float | None = None) -> dict[str, list[int]]:
        """Top-K k per block input and layer at `sparsity` (default: the file's)."""
        s = self.sparsity if sparsity is None else sparsity
        self.levels(s)
        return F.ks_for(self.hp, self.coefs, float(s))

    def selection(self, sparsity: float | None = None) -> Selection:
        levels = self.levels(sparsity)
        thr = {}
        for b in F.BLOCK_INPUTS:
            table = self.thr_table.get(b)
            thr[b] = [-1.0] * self.hp.n_layers if table is None else \
                [F.threshold_at(self.thr_grid, table[l].tolist(), levels[b][l]) for l in range(self.hp.n_layers)]
        return Selection(k=self.ks(sparsity), threshold=thr)

    def shapes_types(self) -> dict[str, tuple[tuple[int, ...], QT]]:
        return {n: (tensor_rows_cols(t), t.tensor_type) for n, t in self.tensors.items()}

    def bytes_per_token(self, sparsity: float | None = None) -> float:
        """Weight bytes a decode step reads at `sparsity`: exact for Top-K, nominal (1 - level) n
        for thresholds (the runtime measures the real figure: Model.bytes_read_per_token)."""
        sel, levels = self.selection(sparsity), self.levels(sparsity)
        rows = {b: [float(sel.k[b][l]) if sel.threshold[b][l] < 0 else
                    (1 - levels[b][l]) * self.hp.block_input_width(b) for l in range(self.hp.n_layers)]
                for b in F.BLOCK_INPUTS}
        return F.bytes_per_token(self.hp, self.shapes_types(), rows)

    def dense_bytes_per_token(self) -> float:
        return F.bytes_per_token(self.hp, self.shapes_types(), None)


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


def _selection_keys(m: Metadata, hp: F.HParams, path: str):
    coefs = {}
    for b in F.BLOCK_INPUTS:
        c = _per_layer(m, F.K_COEF(b), "float", hp.n_layers, path)
        if not np.all(np.isfinite(c)) or c.min() < 0 or c.max() > 10:
            raise FormatError(f"{path}: {F.K_COEF(b)} must hold finite values in [0, 10]")
        coefs[b] = [float(x) for x in c]
        k = _per_layer(m, F.K_K(b), "int", hp.n_layers, path)
        if k.min() < 1 or k.max() > hp.block_input_width(b):
            raise FormatError(f"{path}: {F.K_K(b)} must be in [1, {hp.block_input_width(b)}]")
    rotated = _per_layer(m, F.K_ROTATED, "int", hp.n_layers, path)
    if not np.isin(rotated, (0, 1)).all():
        raise FormatError(f"{path}: {F.K_ROTATED} must hold 0 or 1")
    mlp_out_key = m.str(F.K_MLP_OUT_KEY, "act")
    if mlp_out_key not in ("act", "gate"):
        raise UnsupportedError(f"{path}: {F.K_MLP_OUT_KEY} = {mlp_out_key!r} is not supported")
    grid, tables = None, {}
    if m.has(F.K_THR_GRID):
        grid = m.array(F.K_THR_GRID, "float")
        if not (1 <= grid.size <= MAX_GRID and np.all(np.isfinite(grid)) and grid[0] > 0 and grid[-1] <= 1
                and np.all(np.diff(grid) > 0)):
            raise FormatError(f"{path}: {F.K_THR_GRID} must increase within (0, 1]")
        for b in F.BLOCK_INPUTS:
            if m.has(F.K_THR(b)):
                t = m.array(F.K_THR(b), "float")
                if t.size != hp.n_layers * grid.size or not np.all(np.isfinite(t)) or t.min() < 0:
                    raise FormatError(f"{path}: {F.K_THR(b)} must hold {hp.n_layers} x {grid.size} "
                                      "finite thresholds >= 0")
                t = t.reshape(hp.n_layers, grid.size)
                if np.any(np.diff(t, axis=1) < 0):
                    raise FormatError(f"{path}: {F.K_THR(b)} must not decrease with the sparsity")
                tables[b] = t
    return coefs, [bool(r) for r in rotated], (grid.tolist() if grid is not None else None), tables, mlp_out_key


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
    coefs, rotated, grid, tables, mlp_out_key = _selection_keys(m, hp, path)

    tensors = tensor_map(reader)
    scores = set()
    for name in tensors:
        hit = _SCORE.fullmatch(name)
        if hit and int(hit[1]) < hp.n_layers:
            scores.add((int(hit[1]), hit[2]))
    expected = F.expected_tensors(hp, rotated, scores, F.T_ROPE_FREQS in tensors)
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
        if len(shape) == 1 and not np.all(np.isfinite(t.data)):
            raise FormatError(f"{path}: tensor {name!r} holds NaN or Inf")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise FormatError(f"{path}: unexpected tensors: {', '.join(extra[:5])}")
    return LarosaFile(path=path, reader=reader, meta=m, hp=hp, method=method, sparsity=sparsity,
                      coefs=coefs, rotated=rotated, thr_grid=grid, thr_table=tables,
                      mlp_out_key=mlp_out_key, tensors=tensors)

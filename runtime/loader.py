"""Opening a LaRoSA GGUF: every key, shape and type checked against FORMAT.md before use."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT
from gguf import ReaderTensor

from . import format as F
from .errors import FormatError, ResourceError, UnsupportedError
from .gguf_file import GGUFFile, GGUFLayout, Metadata, open_checked, tensor_map, tensor_rows_cols

MAX_DIM = 1 << 17      # caps on sizes read from the file, far above any real model
MAX_LAYERS = 1024
MAX_VOCAB = 1 << 19    # 2x the largest real vocabularies (Gemma: 262144); gguf_file caps array items
MAX_CTX = 1 << 22      # also lr_model_new's limit
MAX_GRID = 1024
GGUF_VERSION = 3       # FORMAT.md: GGUF v3, little-endian, 32-byte alignment
ALIGNMENT = 32
DEFAULT_N_CTX = 4096   # Model's default context: min(file's, this); model.DEFAULT_N_CTX
# Tokenizers llama.cpp builds for llama-architecture sources (SentencePiece, byte-level BPE); the
# others take code paths of llama.cpp that abort on input it does not expect.
TOKENIZER_MODELS = ("llama", "gpt2")
_SCORE = re.compile(r"blk\.(\d+)\.score_(attn_in|attn_out|mlp_in|mlp_out)\.weight")


@dataclass
class Selection:
    """How every block input of every layer picks the inputs it reads, at one sparsity."""
    k: dict[str, list[int]]             # Top-K: k per layer (when the threshold is < 0)
    threshold: dict[str, list[float]]   # >= 0: keep keys above it; < 0: Top-K


@dataclass
class LarosaFile:
    path: str
    reader: GGUFFile                      # the checked, mapped file (values read on demand)
    meta: Metadata
    hp: F.HParams
    method: str
    sparsity: float                       # the default chosen at conversion
    coefs: dict[str, list[float]]         # per block input, per layer
    rotated: list[bool]                   # per layer: a PCA basis (else the identity)
    thr_grid: list[float] | None          # threshold tables: levels
    thr_table: dict[str, np.ndarray]      # block input -> [n_layer, G] (absent: Top-K)
    mlp_out_key: str                      # "act" or "gate"
    budget_default: bool                  # thresholds held to a per-token budget unless told otherwise
    tensors: dict[str, ReaderTensor]
    layout: GGUFLayout | None = None      # the header as gguf_file.scan_gguf checked it
    auto_selection: str | None = None     # --method auto: one of F.AUTO_SELECTIONS (Top-K: thresholds unused)
    auto_ppl: list[float] | None = None   # its evidence: held-out perplexity per F.AUTO_SELECTIONS

    @property
    def topk_default(self) -> bool:
        """Top-K (with or without the file's scores) by default, although the file has threshold tables"""
        return self.auto_selection in ("topk", "topk_abs")

    @property
    def scores_default(self) -> bool:
        """Ranks by |x| times the file's score tensors by default; False where --method auto chose
        Top-K of |x| alone (topk_abs)"""
        return self.auto_selection != "topk_abs"

    def selection_mode(self, budget: bool | None = None, topk: bool | None = None) -> tuple[bool, bool]:
        """(budget, topk) a runtime uses: each as asked, else as the file says (a --method auto file
        may say Top-K, its thresholds unused); ValueError when both are asked for."""
        topk = bool(topk) if topk is not None else budget is None and self.topk_default
        if topk and budget:
            raise ValueError("budget and topk exclude each other")
        return (False if topk else self.budget_default if budget is None else bool(budget)), topk

    def scores_mode(self, budget: bool | None = None, topk: bool | None = None, scores: bool | None = None) -> bool:
        """Whether a runtime ranks by |x| times the file's score tensors (else by |x| alone): as
        asked, else as the file says where the selection is the file's own (budget and topk left
        to it), else True."""
        if scores is not None:
            return bool(scores)
        return self.scores_default if budget is None and topk is None else True

    def rope_freqs_name(self, n_ctx: int) -> str | None:
        """The tensor of RoPE frequency divisors a context of n_ctx positions uses: LongRoPE's long
        factors beyond the original context, else its short ones, as llama.cpp chooses them by its
        context size (llama_model::get_rope_factors); rope_freqs.weight, or None, otherwise."""
        if F.T_ROPE_LONG in self.tensors:
            return F.T_ROPE_LONG if n_ctx > self.hp.rope_orig_ctx else F.T_ROPE_SHORT
        return F.T_ROPE_FREQS if F.T_ROPE_FREQS in self.tensors else None

    def memory_bytes(self, n_ctx: int, n_threads: int = 1, type_k: str = "f16", type_v: str = "f16") -> int:
        """What lr_model_new allocates for a context of n_ctx (see memory_bytes below)."""
        return memory_bytes(self.hp, n_ctx, n_threads, type_k, type_v) + self.head8_bytes()

    def head8_bytes(self) -> int:
        """The copy of a Q8_0 / Q4_0 head that lr_model_new repacks 8 rows at a time (the x86
        kernels read it so; counted on every CPU, an upper bound)."""
        shape, qtype = self.shapes_types()[F.T_EMBD if self.hp.tied else F.T_OUTPUT]
        if qtype not in (QT.Q8_0, QT.Q4_0):
            return 0
        return shape[0] // 8 * 8 * F.row_bytes(qtype, shape[1])

    def check_memory(self, n_ctx: int, n_threads: int = 1, type_k: str = "f16", type_v: str = "f16") -> None:
        """ResourceError (before any allocation) when the KV cache and buffers of a context of n_ctx
        positions would exceed the machine's physical memory."""
        check_memory(self.hp, n_ctx, n_threads, self.path, type_k, type_v, self.head8_bytes())

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

    def selection(self, sparsity: float | None = None, thresholds: bool = True) -> Selection:
        """k and thresholds per block input and layer; thresholds=False: Top-K everywhere (-1)."""
        levels = self.levels(sparsity)
        thr = {}
        for b in F.BLOCK_INPUTS:
            table = self.thr_table.get(b) if thresholds else None
            thr[b] = [-1.0] * self.hp.n_layers if table is None else \
                [F.threshold_at(self.thr_grid, table[l].tolist(), levels[b][l]) for l in range(self.hp.n_layers)]
        return Selection(k=self.ks(sparsity), threshold=thr)

    def budget(self, sparsity: float | None = None) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """Budget mode (lr_model_set_budget): per block input and layer, the rows planned,
        clamp((1 - level) n, 1, n), and the bytes of one row of its weight. Needs threshold tables
        for all four block inputs (--method budget or teal)."""
        if set(self.thr_table) != set(F.BLOCK_INPUTS):
            raise ValueError(f"{self.path}: budget mode scales thresholds, and this {self.method!r} file "
                             "has none for every block input (convert with --method budget or teal)")
        levels, hp = self.levels(sparsity), self.hp
        plan = {b: [min(max((1.0 - v) * hp.block_input_width(b), 1.0), hp.block_input_width(b))
                    for v in levels[b]] for b in F.BLOCK_INPUTS}
        return plan, self.row_bytes()

    def row_bytes(self) -> dict[str, list[float]]:
        """Per block input and layer: the bytes of one row (one input) of its weight."""
        out = {b: [0.0] * self.hp.n_layers for b in F.BLOCK_INPUTS}
        for name, (shape, qtype) in self.shapes_types().items():
            parts = name.split(".")
            if name.startswith("blk.") and parts[2] in F.WEIGHT_INPUT and parts[3] == "weight":
                out[F.WEIGHT_INPUT[parts[2]]][int(parts[1])] = float(F.row_bytes(qtype, shape[1]))
        return out

    def shapes_types(self) -> dict[str, tuple[tuple[int, ...], QT]]:
        """Every weight's logical [rows, cols] and type (an input-major Q8_0 / Q4_0 weight, stored as
        codes and a scale table, counts as one Q8_0 / Q4_0 tensor of its full shape)."""
        out = {}
        for n, t in self.tensors.items():
            if n.endswith(".scale"):
                continue
            if t.tensor_type == QT.I8:
                codes, scale = tensor_rows_cols(t), tensor_rows_cols(self.tensors[F.scale_name(n)])
                out[n] = ((codes[0], scale[1]), QT.Q8_0 if codes[1] == scale[1] else QT.Q4_0)
            else:
                out[n] = (tensor_rows_cols(t), t.tensor_type)
        return out

    def bytes_per_token(self, sparsity: float | None = None) -> float:
        """Weight bytes a decode step reads at `sparsity`: exact for Top-K, nominal (1 - level) n
        for thresholds (the runtime measures the real figure: Model.bytes_read_per_token)."""
        sel, levels = self.selection(sparsity), self.levels(sparsity)
        rows = {b: [float(sel.k[b][l]) if sel.threshold[b][l] < 0 else
                    (1 - levels[b][l]) * self.hp.block_input_width(b) for l in range(self.hp.n_layers)]
                for b in F.BLOCK_INPUTS}
        return F.bytes_per_token(self.hp, self.shapes_types(), rows)

    def bytes_read(self, rows: dict[str, float], groups: dict[str, float]) -> float:
        """Weight bytes of a step that read rows[b] inputs and touched groups[b] groups of 32 per
        block input, both summed over the layers (Model.rows_read): format.bytes_per_token with the
        scale tables counted per touched group (the layers' shares taken as equal)."""
        L = self.hp.n_layers
        per_layer = lambda d: {b: [d[b] / L] * L for b in F.BLOCK_INPUTS}
        return F.bytes_per_token(self.hp, self.shapes_types(), per_layer(rows), per_layer(groups))

    def dense_bytes_per_token(self) -> float:
        return F.bytes_per_token(self.hp, self.shapes_types(), None)


KV_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}   # bytes per cached value (q8_0: 32 codes + f16 scale)


def kv_cache_bytes(hp: F.HParams, n_ctx: int, type_k: str = "f16", type_v: str = "f16") -> int:
    """The KV cache: layers x n_ctx x n_kv_heads head_dim values, keys of type_k and values of type_v."""
    n = hp.n_layers * n_ctx * hp.n_kv_heads * hp.head_dim
    return round(n * KV_BYTES[type_k]) + round(n * KV_BYTES[type_v])


def memory_bytes(hp: F.HParams, n_ctx: int, n_threads: int = 1, type_k: str = "f16", type_v: str = "f16") -> int:
    """Bytes lr_model_new allocates (c_kernels/forward.c), to within a few KiB: the KV cache
    (kv_cache_bytes), the attention scores, per-thread scratch and the 64-token batch buffers, the
    partial sums of split matvecs and of the prompt's integer products. Weights are memory-mapped,
    not counted."""
    d, q, kv, ff = hp.dim, hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim, hp.ffn_dim
    widest, out_widest = max(d, q, ff), max(2 * ff, hp.qkv_dim, d)
    floats = (hp.n_heads * n_ctx
              + n_threads * max(n_ctx, d)                                  # attention scores
              + (4 * n_threads if n_threads > 1 else 1) * out_widest + widest   # row-split partial sums, iota
              + 64 * (d + widest + out_widest + hp.qkv_dim + q + 2 * ff)
              + 4 * d + hp.qkv_dim + q + 3 * ff
              + (4 * widest + 16) * n_threads                            # Top-K keys, indices, scratch (2 n + 16)
              # integer kernels: accumulators and prompt scratch per thread, a batch's partial
              # products (more than one thread), a batch's 8-bit inputs and masks, one matvec's
              + n_threads * (out_widest + 16 + 64 * out_widest + 4096)
              + (min(n_threads, 16) * 64 * out_widest if n_threads > 1 else 0)
              + 64 * widest // 2 + 2 * widest)
    return 4 * floats + kv_cache_bytes(hp, n_ctx, type_k, type_v) + n_threads * (hp.head_dim // 32 + 1) * 34


def physical_memory() -> int:
    """Bytes of RAM of this machine (a large figure when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 50


def check_memory(hp: F.HParams, n_ctx: int, n_threads: int, path: str, type_k: str = "f16",
                 type_v: str = "f16", extra: int = 0) -> None:
    need, have = memory_bytes(hp, n_ctx, n_threads, type_k, type_v) + extra, physical_memory()
    if need > have:
        kv = kv_cache_bytes(hp, n_ctx, type_k, type_v)
        raise ResourceError(
            f"{path}: a context of {n_ctx} positions needs {need / 2**30:.1f} GiB (KV cache: {hp.n_layers} "
            f"layers x {n_ctx} positions x {hp.n_kv_heads * hp.head_dim} values, keys {type_k} and values "
            f"{type_v} = {kv / 2**30:.1f} GiB), more than this machine's {have / 2**30:.1f} GiB of memory: "
            "use a smaller context (n_ctx, -c) or a smaller KV cache type (-ctk / -ctv q8_0)")


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
    n_rot = m.int(F.K_ROPE_DIM)
    if not (2 <= n_rot <= hp.head_dim and n_rot % 2 == 0):
        raise FormatError(f"{path}: {F.K_ROPE_DIM} = {n_rot} must be even and in [2, {hp.head_dim}]")
    hp = dataclasses.replace(hp, n_rot=0 if n_rot == hp.head_dim else n_rot)
    if not (math.isfinite(hp.norm_eps) and 0 < hp.norm_eps < 1):
        raise FormatError(f"{path}: {F.K_EPS} = {hp.norm_eps} is invalid")
    if not (math.isfinite(hp.rope_base) and hp.rope_base > 1):
        raise FormatError(f"{path}: {F.K_ROPE_BASE} = {hp.rope_base} is invalid")
    return _arch_hparams(m, hp, path)


def _arch_hparams(m: Metadata, hp: F.HParams, path: str) -> F.HParams:
    """hp with the architecture keys (FORMAT.md "Architecture keys"), each checked; absent: llama's."""
    def positive(key: str, default: float, zero_ok: bool = True) -> float:
        v = m.float(key, default)
        if not (math.isfinite(v) and (v > 0 or (zero_ok and v == 0)) and v < 1e30):
            raise FormatError(f"{path}: {key} = {v} is invalid")
        return v

    act = m.str(F.K_ACTIVATION, "silu")
    if act not in F.ACTIVATIONS:
        raise UnsupportedError(f"{path}: {F.K_ACTIVATION} = {act!r}; the runtime has {', '.join(F.ACTIVATIONS)}")
    n_swa = m.int(F.K_SWA, 0)
    if not 0 <= n_swa <= MAX_CTX:
        raise FormatError(f"{path}: {F.K_SWA} = {n_swa} is out of range [0, {MAX_CTX}]")
    swa_layers: tuple = ()
    rope_base_swa = 0.0
    if n_swa:
        a = _per_layer(m, F.K_SWA_LAYERS, "int", hp.n_layers, path)
        if not np.isin(a, (0, 1)).all():
            raise FormatError(f"{path}: {F.K_SWA_LAYERS} must hold 0 or 1")
        swa_layers = tuple(bool(v) for v in a)
        rope_base_swa = m.float(F.K_ROPE_BASE_SWA, hp.rope_base)
        if not (math.isfinite(rope_base_swa) and rope_base_swa > 1):
            raise FormatError(f"{path}: {F.K_ROPE_BASE_SWA} = {rope_base_swa} is invalid")
    elif m.has(F.K_SWA_LAYERS) or m.has(F.K_ROPE_BASE_SWA):
        raise FormatError(f"{path}: {F.K_SWA_LAYERS} / {F.K_ROPE_BASE_SWA} without {F.K_SWA}")
    no_rope: tuple = ()
    if m.has(F.K_NO_ROPE):
        a = _per_layer(m, F.K_NO_ROPE, "int", hp.n_layers, path)
        if not np.isin(a, (0, 1)).all():
            raise FormatError(f"{path}: {F.K_NO_ROPE} must hold 0 or 1")
        no_rope = tuple(bool(v) for v in a)
    temp_scale = m.float(F.K_ATTN_TEMP_SCALE, 0.0)
    temp_length = m.int(F.K_ATTN_TEMP_LENGTH, 0)
    if not (math.isfinite(temp_scale) and abs(temp_scale) < 1e30) or (temp_scale and not 0 < temp_length <= MAX_CTX):
        raise FormatError(f"{path}: {F.K_ATTN_TEMP_SCALE} = {temp_scale} / {F.K_ATTN_TEMP_LENGTH} = {temp_length} "
                          "is invalid (a finite scale, with a length in [1, the maximum context])")
    orig_ctx = m.int(F.K_ROPE_ORIG_CTX, 0)
    if not 0 <= orig_ctx <= MAX_CTX:
        raise FormatError(f"{path}: {F.K_ROPE_ORIG_CTX} = {orig_ctx} is out of range")
    return dataclasses.replace(
        hp, embd_scale=positive(F.K_EMBD_SCALE, 1.0, zero_ok=False), act=act, n_swa=n_swa, swa_layers=swa_layers,
        rope_base_swa=rope_base_swa, attn_softcap=positive(F.K_ATTN_SOFTCAP, 0.0),
        final_softcap=positive(F.K_FINAL_SOFTCAP, 0.0), no_rope_layers=no_rope,
        rope_freqs_swa=m.bool(F.K_ROPE_FREQS_SWA, True), attn_temp_scale=temp_scale,
        attn_temp_length=temp_length if temp_scale else 0, rope_orig_ctx=orig_ctx)


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
    else:
        stray = [F.K_THR(b) for b in F.BLOCK_INPUTS if m.has(F.K_THR(b))]
        if stray:
            raise FormatError(f"{path}: {stray[0]} is present without {F.K_THR_GRID}")
    return coefs, [bool(r) for r in rotated], (grid.tolist() if grid is not None else None), tables, mlp_out_key


def check_tokenizer_keys(m: Metadata, hp: F.HParams, path: str) -> None:
    """The tokenizer.* keys llama.cpp reads when Model builds the tokenizer: types, lengths and the
    token list (one distinct non-empty token per embedding row). llama.cpp aborts the process on
    some malformed vocabularies (duplicate or empty tokens), so they must not reach it."""
    kind = m.str("tokenizer.ggml.model")
    if kind not in TOKENIZER_MODELS:
        raise UnsupportedError(f"{path}: tokenizer.ggml.model = {kind!r}; the runtime reads "
                               f"{', '.join(TOKENIZER_MODELS)} tokenizers")
    key = "tokenizer.ggml.tokens"
    if not m.has(key) or m.types(key) != [VT.ARRAY, VT.STRING]:
        raise FormatError(f"{path}: {key} must be an array of strings")
    if m.count(key) != hp.n_vocab:
        raise FormatError(f"{path}: {key} has {m.count(key)} tokens, the embedding {hp.n_vocab} rows")
    tokens = m.strings(key)
    if not all(tokens):
        raise FormatError(f"{path}: {key}: token {tokens.index(b'')} is empty")
    if len(set(tokens)) != len(tokens):
        seen: set[bytes] = set()
        dup = next(i for i, t in enumerate(tokens) if t in seen or seen.add(t))
        raise FormatError(f"{path}: {key}: token {dup} ({tokens[dup][:40]!r}) appears twice")
    for k, want, what in (("tokenizer.ggml.scores", VT.FLOAT32, "float32"),
                          ("tokenizer.ggml.token_type", VT.INT32, "int32")):
        if m.has(k):
            if m.types(k) != [VT.ARRAY, want] or m.count(k) != hp.n_vocab:
                raise FormatError(f"{path}: {k} must be an array of {hp.n_vocab} {what} values")
    for k in m.reader.fields:
        if not k.startswith("tokenizer."):
            continue
        t = m.types(k)
        if k in ("tokenizer.ggml.merges",) and t != [VT.ARRAY, VT.STRING]:
            raise FormatError(f"{path}: {k} must be an array of strings")
        if k.startswith("tokenizer.ggml.") and k.endswith("_token_id") and t != [VT.UINT32]:
            raise FormatError(f"{path}: {k} must be a uint32")
        if k.startswith("tokenizer.ggml.add_") and t != [VT.BOOL]:
            raise FormatError(f"{path}: {k} must be a bool")
        if k in ("tokenizer.ggml.pre", "tokenizer.ggml.model") or k.startswith("tokenizer.chat_template"):
            m.str(k)   # a string of valid UTF-8


def _check_layout(layout: GGUFLayout, path: str) -> None:
    if layout.version != GGUF_VERSION:
        raise UnsupportedError(f"{path}: GGUF version {layout.version}; a LaRoSA file is GGUF v{GGUF_VERSION}")
    if layout.alignment != ALIGNMENT:
        raise FormatError(f"{path}: general.alignment = {layout.alignment}; a LaRoSA file is aligned "
                          f"to {ALIGNMENT} bytes")


def _check_im(tensors: dict[str, ReaderTensor], name: str, shape: tuple[int, ...], path: str) -> tuple[int, int]:
    """An input-major quantized weight of logical shape [rows, cols]: I8 codes [rows, cols] (Q8_0)
    or [rows, cols / 2] (Q4_0) and an F16 scale table [rows / 32, cols]; returns the table's shape."""
    rows, cols = shape
    codes = tensor_rows_cols(tensors[name])
    qtype = QT.Q8_0 if codes == (rows, cols) else QT.Q4_0 if codes == (rows, cols // 2) else None
    if qtype is None:
        raise FormatError(f"{path}: tensor {name!r} holds codes of shape {codes}; a [{rows}, {cols}] weight "
                          f"has [{rows}, {cols}] (Q8_0) or [{rows}, {cols // 2}] (Q4_0)")
    F.check_im_shape(qtype, rows, cols, f"{path}: tensor {name!r}")
    sname = F.scale_name(name)
    st = tensors.get(sname)
    if st is None:
        raise FormatError(f"{path}: missing tensor {sname!r} (the scales of {name!r})")
    want = (rows // F.IM_GROUP, cols)
    if st.tensor_type != QT.F16 or tensor_rows_cols(st) != want:
        raise FormatError(f"{path}: tensor {sname!r} must be F16 of shape {want}, not "
                          f"{st.tensor_type.name} {tensor_rows_cols(st)}")
    if tensors[name].data.nbytes != rows * F.im_code_cols(qtype, cols) or st.data.nbytes != want[0] * cols * 2:
        raise FormatError(f"{path}: tensor {name!r} data is truncated")
    return want


def load(path: str | os.PathLike) -> LarosaFile:
    """Opens and validates a LaRoSA GGUF; raises FormatError/UnsupportedError naming the problem
    (ResourceError when even the default context would not fit in memory). Everything the C
    library and llama.cpp's tokenizer will read is checked here, before either is called; weights
    are not scanned (NaN/Inf in them shows up in the logits: model.NumericsError)."""
    path = os.fspath(path)
    reader, layout = open_checked(path)   # header only: values are read below as needed (gguf_file)
    m = Metadata(reader, path)
    arch = m.str("general.architecture")
    if arch in F.SOURCE_ARCHS:
        raise UnsupportedError(f"{path}: a {arch} GGUF, not a LaRoSA one: convert it first "
                               f"(larosa-convert {os.path.basename(path)})")
    if arch != F.ARCH:
        raise UnsupportedError(f"{path}: architecture {arch!r} is not a LaRoSA file")
    _check_layout(layout, path)
    version = m.int(F.K_VERSION)
    if version != F.FORMAT_VERSION:
        raise UnsupportedError(
            f"{path}: LaRoSA format version {version}; this runtime reads version {F.FORMAT_VERSION}"
            + (" (quantized weights are now laid out for integer kernels): convert the source model again "
               "with larosa-convert" if version < F.FORMAT_VERSION else ""))
    method = m.str(F.K_METHOD)
    if method not in F.METHODS:
        raise UnsupportedError(f"{path}: sparsity method {method!r} is not supported")
    hp = _hparams(m, path)
    sparsity = m.float(F.K_SPARSITY)
    if not (math.isfinite(sparsity) and 0 <= sparsity < 1):
        raise FormatError(f"{path}: {F.K_SPARSITY} = {sparsity} is outside [0, 1)")
    coefs, rotated, grid, tables, mlp_out_key = _selection_keys(m, hp, path)
    budget_default = m.bool(F.K_BUDGET, False)
    if budget_default and set(tables) != set(F.BLOCK_INPUTS):
        raise FormatError(f"{path}: {F.K_BUDGET} is set, but not every block input has a threshold table")
    auto_selection, auto_ppl = None, None
    if m.has(F.K_AUTO_SELECTION):   # --method auto: the selection the converter measured best
        i = m.int(F.K_AUTO_SELECTION)
        if not 0 <= i < len(F.AUTO_SELECTIONS) or not budget_default:
            raise FormatError(f"{path}: {F.K_AUTO_SELECTION} = {i} (0 to {len(F.AUTO_SELECTIONS) - 1}: "
                              f"{', '.join(F.AUTO_SELECTIONS)}; on a file with {F.K_BUDGET} set)")
        auto_selection = F.AUTO_SELECTIONS[i]
        auto_ppl = [float(v) for v in m.array(F.K_AUTO_PPL, "float")] if m.has(F.K_AUTO_PPL) else None
        if auto_ppl is not None and len(auto_ppl) not in (2, len(F.AUTO_SELECTIONS)):
            raise FormatError(f"{path}: {F.K_AUTO_PPL} holds {len(auto_ppl)} values, expected "
                              f"{len(F.AUTO_SELECTIONS)} (one per selection: {', '.join(F.AUTO_SELECTIONS)})")
        budget_default = auto_selection == "budget"

    tensors = tensor_map(reader)
    scores = set()
    for name in tensors:
        hit = _SCORE.fullmatch(name)
        if hit and int(hit[1]) < hp.n_layers:
            scores.add((int(hit[1]), hit[2]))
    vectors = tuple(k for k in F.LAYER_VECTORS if F.T_VEC(0, k) in tensors)   # then every layer's
    longrope = F.T_ROPE_LONG in tensors or F.T_ROPE_SHORT in tensors
    if longrope and not hp.rope_orig_ctx:
        raise FormatError(f"{path}: LongRoPE factors ({F.T_ROPE_LONG}, {F.T_ROPE_SHORT}) without {F.K_ROPE_ORIG_CTX}")
    if longrope and F.T_ROPE_FREQS in tensors:
        raise FormatError(f"{path}: both {F.T_ROPE_FREQS} and LongRoPE factors")
    expected = F.expected_tensors(hp, rotated, scores, F.T_ROPE_FREQS in tensors, vectors, longrope)
    for name, shape in list(expected.items()):
        t = tensors.get(name)
        if t is None:
            raise FormatError(f"{path}: missing tensor {name!r}")
        if F.input_major(name) and t.tensor_type == QT.I8:   # codes + scale table
            expected[F.scale_name(name)] = _check_im(tensors, name, shape, path)
            continue
        if F.input_major(name) and t.tensor_type in F.IM_TYPES:
            raise FormatError(f"{path}: tensor {name!r}: an input-major weight is stored as {t.tensor_type.name} "
                              f"blocks; this format keeps quantized input-major weights as I8 codes and a "
                              f"{F.scale_name(name)!r} table (FORMAT.md)")
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
    for name in (F.T_ROPE_FREQS, F.T_ROPE_LONG, F.T_ROPE_SHORT):
        freqs = tensors.get(name)
        if freqs is not None and not np.all(np.asarray(freqs.data) > 0):
            raise FormatError(f"{path}: tensor {name!r} must hold positive frequency divisors")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise FormatError(f"{path}: unexpected tensors: {', '.join(extra[:5])}")
    check_tokenizer_keys(m, hp, path)
    f = LarosaFile(path=path, reader=reader, meta=m, hp=hp, method=method, sparsity=sparsity,
                   coefs=coefs, rotated=rotated, thr_grid=grid, thr_table=tables,
                   mlp_out_key=mlp_out_key, budget_default=budget_default, tensors=tensors, layout=layout,
                   auto_selection=auto_selection, auto_ppl=auto_ppl)
    f.check_memory(min(hp.n_ctx, DEFAULT_N_CTX), 1)
    return f

"""llama GGUF -> LaRoSA GGUF, one layer at a time.

For each layer l: accumulate H_l = sum u^T u over the calibration tokens (u: the scale-free
RMSNorm of the residual entering the layer, float64), Q_l = eigenvectors of H_l, fuse and
quantize the layer's weights, write them, then push the calibration residuals through the
original layer. Peak memory is one layer plus the calibration residuals.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType, GGUFWriter, quants
from tqdm import tqdm

from larosa.runtime import format as F
from larosa.runtime.errors import LarosaError
from larosa.runtime.gguf_file import copy_fields

from . import fuse
from .calibrate import Calibration
from .model import layer_forward, rmsnorm, rope_tables
from .source import SourceModel

# general.file_type values of llama.cpp (llama_ftype) for the --type choices
FILE_TYPE = {QT.F32: 0, QT.F16: 1, QT.Q4_0: 2, QT.Q8_0: 7}
SKIP_GENERAL = {"general.architecture", "general.file_type", "general.quantization_version",
                "general.alignment"}


@dataclass
class Options:
    sparsity: float = 0.4
    wtype: str = "q8_0"            # block weights: f32 | f16 | q8_0 | q4_0
    head_type: str = "auto"        # embedding/head: auto | f32 | f16 | q8_0 | q4_0
    adapter_type: str = "auto"     # adapters: auto (f16, f32 for --type f32) | f32 | f16 | q8_0 | q4_0
    force: bool = False
    progress: bool = True


@dataclass
class Summary:
    out_path: str
    seconds: float
    out_bytes: int
    ks: dict[str, list[int]]
    bytes_per_token: int
    dense_bytes_per_token: int
    source_bytes_per_token: int
    calib_tokens: int
    types: dict[str, str] = field(default_factory=dict)


def check_options(opts: Options) -> None:
    if not (isinstance(opts.sparsity, (int, float)) and 0.0 <= opts.sparsity < 1.0):
        raise LarosaError(f"--sparsity must be in [0, 1), got {opts.sparsity}")
    if opts.wtype not in F.WEIGHT_TYPES:
        raise LarosaError(f"--type must be one of {', '.join(F.WEIGHT_TYPES)}, got {opts.wtype!r}")
    for flag, v in (("--head-type", opts.head_type), ("--adapter-type", opts.adapter_type)):
        if v != "auto" and v not in F.WEIGHT_TYPES:
            raise LarosaError(f"{flag} must be auto or one of {', '.join(F.WEIGHT_TYPES)}, got {v!r}")


def tensor_types(src: SourceModel, opts: Options) -> dict[str, QT]:
    """The type of every output tensor; checks that quantized rows fit the block size."""
    hp = src.hp
    wt = F.WEIGHT_TYPES[opts.wtype]
    if opts.head_type != "auto":
        ht = F.WEIGHT_TYPES[opts.head_type]
    elif hp.tied and src.raw("token_embd.weight").tensor_type in F.RUNTIME_TYPES:
        ht = src.raw("token_embd.weight").tensor_type   # untouched: copied byte for byte
    else:
        ht = QT.Q8_0 if wt in (QT.Q8_0, QT.Q4_0) else wt
    at = F.DEFAULT_ADAPTER_TYPE[wt] if opts.adapter_type == "auto" else F.WEIGHT_TYPES[opts.adapter_type]
    types = {}
    for name, shape in F.expected_tensors(hp, F.T_ROPE_FREQS in src.tensors).items():
        if len(shape) == 1:
            types[name] = QT.F32
        elif name in (F.T_EMBD, F.T_OUTPUT):
            types[name] = ht
        elif "adapter" in name:
            types[name] = at
        else:
            types[name] = wt
        if len(shape) == 2:
            F.check_row_length(types[name], shape[1], f"{src.path}: tensor {name}")
    return types


def _encode(x: torch.Tensor, qtype: QT) -> np.ndarray:
    return quants.quantize(np.ascontiguousarray(x.detach().float().numpy()), qtype)


class _Out:
    """A GGUF written to a temporary file next to the target, renamed into place when complete."""

    def __init__(self, path: str, force: bool):
        self.path = os.path.abspath(path)
        if os.path.exists(self.path) and not force:
            raise LarosaError(f"{path}: already exists (use --force to overwrite)")
        if not os.path.isdir(os.path.dirname(self.path)):
            raise LarosaError(f"{path}: directory does not exist")
        self.tmp = f"{self.path}.{os.getpid()}.larosa-tmp"

    def commit(self) -> None:
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _write_metadata(w: GGUFWriter, src: SourceModel, calib: Calibration, opts: Options,
                    ks: dict[str, list[int]]) -> None:
    hp = src.hp
    copy_fields(src.reader, w, [k for k in src.reader.fields
                                if k.startswith("general.") and k not in SKIP_GENERAL])
    w.add_uint32("general.file_type", FILE_TYPE[F.WEIGHT_TYPES[opts.wtype]])
    w.add_uint32("general.quantization_version", 2)
    w.add_uint32(F.K_VERSION, F.FORMAT_VERSION)
    w.add_string(F.K_METHOD, "larosa")
    w.add_string(F.K_SOURCE_ARCH, "llama")
    w.add_string(F.K_SOURCE_FILE, os.path.basename(src.path))
    w.add_uint32(F.K_CONTEXT, hp.n_ctx)
    w.add_uint32(F.K_DIM, hp.dim)
    w.add_uint32(F.K_FF, hp.ffn_dim)
    w.add_uint32(F.K_LAYERS, hp.n_layers)
    w.add_uint32(F.K_HEADS, hp.n_heads)
    w.add_uint32(F.K_KV_HEADS, hp.n_kv_heads)
    w.add_uint32(F.K_HEAD_DIM, hp.head_dim)
    w.add_uint32(F.K_VOCAB, hp.n_vocab)
    w.add_float32(F.K_EPS, hp.norm_eps)
    w.add_float32(F.K_ROPE_BASE, hp.rope_base)
    w.add_uint32(F.K_ROPE_DIM, hp.head_dim)
    w.add_bool(F.K_TIED, hp.tied)
    w.add_float32(F.K_SPARSITY, float(opts.sparsity))
    for b in F.BLOCK_INPUTS:
        w.add_array(F.K_COEF(b), [float(F.PAPER_COEFS[b])] * hp.n_layers)
        w.add_key_value(F.K_K(b), [int(k) for k in ks[b]], GGUFValueType.ARRAY, GGUFValueType.UINT32)
    w.add_string(F.K_CALIB_SOURCE, calib.source)
    w.add_string(F.K_CALIB_SHA256, calib.sha256)
    w.add_uint32(F.K_CALIB_TOKENS, calib.n_tokens)
    w.add_uint32(F.K_CALIB_WINDOW, int(calib.tokens.shape[1]))
    copy_fields(src.reader, w, src.tokenizer_fields())


def convert(src_path: str, out_path: str, calib: Calibration, opts: Options) -> Summary:
    """Writes the LaRoSA GGUF for src_path to out_path; returns what it did."""
    t0 = time.time()
    check_options(opts)
    src = SourceModel(src_path)
    hp = src.hp
    if os.path.exists(out_path) and os.path.samefile(src_path, out_path):
        raise LarosaError(f"{out_path}: output would overwrite the input")
    if calib.tokens.ndim != 2 or calib.tokens.size == 0:
        raise LarosaError("calibration: no tokens")
    if calib.tokens.min() < 0 or calib.tokens.max() >= hp.n_vocab:
        raise LarosaError("calibration: token ids outside the vocabulary")
    types = tensor_types(src, opts)
    shapes = F.expected_tensors(hp, F.T_ROPE_FREQS in src.tensors)
    coefs = {b: [F.PAPER_COEFS[b]] * hp.n_layers for b in F.BLOCK_INPUTS}
    ks = F.ks_for(hp, coefs, opts.sparsity)

    out = _Out(out_path, opts.force)
    w = GGUFWriter(out.tmp, F.ARCH)
    _write_metadata(w, src, calib, opts, ks)
    for name, shape in shapes.items():
        nbytes = F.row_bytes(types[name], shape[-1]) * (shape[0] if len(shape) == 2 else 1)
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=types[name])

    old_term = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up too
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        written = _write_tensors(w, src, calib, types, opts)
        w.close()
        assert written == list(shapes), "tensor order differs from the header"
        out.commit()
    except BaseException:
        w.close()
        out.discard()
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)

    return Summary(
        out_path=out_path, seconds=time.time() - t0, out_bytes=os.path.getsize(out_path), ks=ks,
        bytes_per_token=F.bytes_per_token(hp, types, ks),
        dense_bytes_per_token=F.bytes_per_token(hp, types, None),
        source_bytes_per_token=_source_bytes_per_token(src),
        calib_tokens=calib.n_tokens, types={n: t.name for n, t in types.items()})


@torch.inference_mode()
def _write_tensors(w: GGUFWriter, src: SourceModel, calib: Calibration, types: dict[str, QT],
                   opts: Options) -> list[str]:
    hp = src.hp
    written: list[str] = []

    def put(name: str, x: torch.Tensor | np.ndarray) -> None:
        arr = x if isinstance(x, np.ndarray) else _encode(x, types[name])
        w.write_tensor_data(arr)
        written.append(name)

    embd = src.weight("token_embd.weight")
    x = embd[torch.from_numpy(calib.tokens.astype(np.int64))]   # [n_win, T, d] residuals
    cos, sin = rope_tables(hp, x.shape[1], src.weight(F.T_ROPE_FREQS) if F.T_ROPE_FREQS in src.tensors else None)
    Q_prev = Q_first = None
    for l in tqdm(range(hp.n_layers), desc="calibrate+fuse", unit="layer", disable=not opts.progress):
        H = torch.zeros(hp.dim, hp.dim, dtype=torch.float64)
        for xw in x:
            u = rmsnorm(xw, None, hp.norm_eps).double()
            H += u.T @ u
        Q = fuse.rotation_from_moments(H)
        orig = fuse.source_layer(src.layer(l))
        need_adapter = l > 0 or hp.tied
        fused = fuse.fuse_layer(orig, Q, fuse.adapter(Q_prev, Q) if need_adapter else None)
        if fused.adapter is not None:
            put(F.T_ADAPTER(l), fused.adapter)
        put(F.T_QKV(l), fused.wqkv)
        put(F.T_O(l), fused.wo)
        put(F.T_GATE_UP(l), fused.wgu)
        put(F.T_DOWN(l), fused.wdown)
        del fused
        x = torch.stack([layer_forward(orig, xw[None], hp, cos, sin)[0] for xw in x])
        Q_prev = Q
        if Q_first is None:
            Q_first = Q
    del x

    if hp.tied:
        raw = src.raw("token_embd.weight")
        put(F.T_EMBD, np.asarray(raw.data) if raw.tensor_type == types[F.T_EMBD] else embd)
        put(F.T_OUTPUT_ADAPTER, Q_prev.T.float())
        put(F.T_OUTPUT_NORM, src.weight("output_norm.weight"))
    else:
        put(F.T_EMBD, embd @ Q_first.float())
        put(F.T_OUTPUT, fuse.fuse_head(src.weight("output.weight"), src.weight("output_norm.weight"), Q_prev))
    if F.T_ROPE_FREQS in src.tensors:
        put(F.T_ROPE_FREQS, src.weight(F.T_ROPE_FREQS))
    return written


def _source_bytes_per_token(src: SourceModel) -> int:
    """What a dense decode of the source file reads per token (all weights but the embedding)."""
    total = 0
    for name, t in src.tensors.items():
        if name == "token_embd.weight" and not src.hp.tied:
            continue
        total += int(t.n_bytes)
    return total

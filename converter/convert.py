"""llama / qwen2 / qwen3 / gemma3 GGUF -> LaRoSA GGUF, in two passes over the layers.

Pass 1 (calibration): the dense original model runs over the calibration tokens one layer at a time.
For each layer l it accumulates H_l = sum u^T u (u: the scale-free RMSNorm of the residual entering
the layer, float64) and takes Q_l = the eigenvectors of H_l; methods with thresholds or an automatic
choice of basis also look at the layer's block inputs (selection.py).
Pass 2 (write): each layer's weights are read again, fused with the layer's basis, quantized and
written, followed by the embedding and head. Peak memory is one layer, the calibration residuals and
the rotations.
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
from larosa.runtime.errors import LarosaError, UnsupportedError
from larosa.runtime.gguf_file import copy_fields
from larosa.runtime.loader import load

from . import fuse
from . import selection as S
from .calibrate import Calibration
from .model import TopK, layer_forward, rmsnorm, rope_sets
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
    # auto | budget | wina | larosa | topk | teal | cats (selection.py). The CLI's default is auto, which
    # needs Calibration.heldout; a library call without held-out text gets budget, auto's tables.
    method: str = "budget"
    rotation: str | None = None    # pca | identity | auto (default: the method's)
    score: str | None = None       # none | norm | wina (default: the method's)
    coefs: dict[str, float] | None = None
    force: bool = False
    progress: bool = True
    threads: int | None = None     # the runtime's threads where the converter runs it (--method auto)


@dataclass
class Summary:
    out_path: str
    seconds: float
    out_bytes: int
    ks: dict[str, list[int]]
    rotated: list[bool]
    bytes_per_token: float
    dense_bytes_per_token: float
    source_bytes_per_token: int
    calib_tokens: int
    types: dict[str, str] = field(default_factory=dict)
    auto: tuple[str, list[float]] | None = None   # --method auto: the choice, held-out perplexities


def check_options(opts: Options) -> None:
    if not (isinstance(opts.sparsity, (int, float)) and 0.0 <= opts.sparsity < 1.0):
        raise LarosaError(f"--sparsity must be in [0, 1), got {opts.sparsity}")
    if opts.wtype not in F.WEIGHT_TYPES:
        raise LarosaError(f"--type must be one of {', '.join(F.WEIGHT_TYPES)}, got {opts.wtype!r}")
    for flag, v in (("--head-type", opts.head_type), ("--adapter-type", opts.adapter_type)):
        if v != "auto" and v not in F.WEIGHT_TYPES:
            raise LarosaError(f"{flag} must be auto or one of {', '.join(F.WEIGHT_TYPES)}, got {v!r}")
    S.method(opts.method, opts.rotation, opts.score, opts.coefs)


def tensor_types(src: SourceModel, opts: Options, shapes: dict[str, tuple[int, ...]]) -> dict[str, QT]:
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
    for name, shape in shapes.items():
        if len(shape) == 1:
            types[name] = QT.F32
        elif name in (F.T_EMBD, F.T_OUTPUT):
            types[name] = ht
        elif "adapter" in name:
            types[name] = at
        else:
            types[name] = wt
        if len(shape) == 2 and F.input_major(name) and types[name] in F.IM_TYPES:
            F.check_im_shape(types[name], shape[0], shape[1], f"{src.path}: tensor {name}")
        elif len(shape) == 2:
            F.check_row_length(types[name], shape[1], f"{src.path}: tensor {name}")
    return types


def stored_tensors(shapes: dict[str, tuple[int, ...]], types: dict[str, QT]) -> dict[str, tuple[tuple[int, ...], QT]]:
    """What the file holds for each tensor of the plan, in order: an input-major Q8_0 / Q4_0 weight
    becomes its I8 codes and its F16 scale table (FORMAT.md)."""
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 2 and F.input_major(name) and types[name] in F.IM_TYPES:
            rows, cols = shape
            out[name] = ((rows, F.im_code_cols(types[name], cols)), QT.I8)
            out[F.scale_name(name)] = ((rows // F.IM_GROUP, cols), QT.F16)
        else:
            out[name] = (shape, types[name])
    return out


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


def _write_metadata(w: GGUFWriter, src: SourceModel, calib: Calibration, opts: Options, m: S.Method,
                    plans: list[S.LayerPlan], ks: dict[str, list[int]]) -> None:
    hp = src.hp
    copy_fields(src.reader, w, [k for k in src.reader.fields
                                if k.startswith("general.") and k not in SKIP_GENERAL])
    w.add_uint32("general.file_type", FILE_TYPE[F.WEIGHT_TYPES[opts.wtype]])
    w.add_uint32("general.quantization_version", 2)
    w.add_uint32(F.K_VERSION, F.FORMAT_VERSION)
    w.add_string(F.K_METHOD, opts.method)
    w.add_string(F.K_SOURCE_ARCH, src.arch_name)
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
    w.add_uint32(F.K_ROPE_DIM, hp.rot_dims)
    w.add_bool(F.K_TIED, hp.tied)
    _write_arch_keys(w, hp)
    w.add_float32(F.K_SPARSITY, float(opts.sparsity))
    u32, f32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32
    for b in F.BLOCK_INPUTS:
        w.add_key_value(F.K_COEF(b), [float(m.coefs[b])] * hp.n_layers, GGUFValueType.ARRAY, f32)
        w.add_key_value(F.K_K(b), [int(k) for k in ks[b]], GGUFValueType.ARRAY, u32)
    w.add_key_value(F.K_ROTATED, [int(p.Q is not None) for p in plans], GGUFValueType.ARRAY, GGUFValueType.UINT8)
    w.add_string(F.K_MLP_OUT_KEY, m.mlp_out_key)
    if m.thresholds:
        w.add_key_value(F.K_THR_GRID, list(S.GRID), GGUFValueType.ARRAY, f32)
        for b in m.thresholds:
            w.add_key_value(F.K_THR(b), [t for p in plans for t in p.thresholds[b]], GGUFValueType.ARRAY, f32)
        if m.budget:
            w.add_bool(F.K_BUDGET, True)
    if opts.method == "auto":   # placeholders of fixed size, set in place by choose_selection
        w.add_uint32(F.K_AUTO_SELECTION, 0)
        w.add_key_value(F.K_AUTO_PPL, [0.0] * len(F.AUTO_SELECTIONS), GGUFValueType.ARRAY, f32)
        w.add_uint32(F.K_AUTO_TOKENS, 0)
    w.add_string(F.K_CALIB_SOURCE, calib.source)
    w.add_string(F.K_CALIB_SHA256, calib.sha256)
    w.add_uint32(F.K_CALIB_TOKENS, calib.n_tokens)
    w.add_uint32(F.K_CALIB_WINDOW, int(calib.tokens.shape[1]))
    copy_fields(src.reader, w, src.tokenizer_fields())


def _write_arch_keys(w: GGUFWriter, hp: F.HParams) -> None:
    """The architecture keys (FORMAT.md) that differ from llama's behaviour; none for llama files."""
    if hp.embd_scale != 1.0:
        w.add_float32(F.K_EMBD_SCALE, hp.embd_scale)
    if hp.act != "silu":
        w.add_string(F.K_ACTIVATION, hp.act)
    if hp.n_swa:
        w.add_uint32(F.K_SWA, hp.n_swa)
        w.add_key_value(F.K_SWA_LAYERS, [int(b) for b in hp.swa_layers], GGUFValueType.ARRAY, GGUFValueType.UINT8)
        w.add_float32(F.K_ROPE_BASE_SWA, hp.rope_base_swa)
    if any(hp.no_rope_layers):
        w.add_key_value(F.K_NO_ROPE, [int(b) for b in hp.no_rope_layers], GGUFValueType.ARRAY, GGUFValueType.UINT8)
    if hp.attn_softcap:
        w.add_float32(F.K_ATTN_SOFTCAP, hp.attn_softcap)
    if hp.final_softcap:
        w.add_float32(F.K_FINAL_SOFTCAP, hp.final_softcap)
    if not hp.rope_freqs_swa:
        w.add_bool(F.K_ROPE_FREQS_SWA, False)
    if hp.rope_orig_ctx:
        w.add_uint32(F.K_ROPE_ORIG_CTX, hp.rope_orig_ctx)
    if hp.attn_temp_scale:
        w.add_float32(F.K_ATTN_TEMP_SCALE, hp.attn_temp_scale)
        w.add_uint32(F.K_ATTN_TEMP_LENGTH, hp.attn_temp_length)


def check_method(src: SourceModel, m: S.Method, method: str) -> None:
    """The fused LaRoSA form needs every write to the residual to be a linear output, so that the
    rotation passes through it (FORMAT.md). A post norm (Gemma) writes RMSNorm(o) * g: the rotation
    commutes with the RMSNorm but not with the per-channel g, so the fused model would need two more
    dense d x d products per layer to stay exact; refused rather than made inexact."""
    if src.arch.post_norms and m.rotation != "identity":
        raise UnsupportedError(
            f"{src.path}: --method {method} (rotation {m.rotation}) is not supported on {src.arch.title}: its "
            "post-attention and post-FFN norms scale the residual per channel after an RMSNorm, which a "
            "rotated residual cannot absorb exactly; use an unrotated method (budget, wina, teal, topk, cats)")


def output_shapes(src: SourceModel, m: S.Method, rotated: list[bool]) -> dict[str, tuple[int, ...]]:
    scores = {(l, b) for l, r in enumerate(rotated) for b in S.SCORED[S.layer_score(m, r, src.arch.norms_apart)]}
    return F.expected_tensors(src.hp, rotated, scores, src.has_rope_freqs() and not src.longrope(), src.vectors(),
                              src.longrope())


def convert(src_path: str, out_path: str, calib: Calibration, opts: Options) -> Summary:
    """Writes the LaRoSA GGUF for src_path to out_path; returns what it did."""
    t0 = time.time()
    check_options(opts)
    m = S.method(opts.method, opts.rotation, opts.score, opts.coefs)
    src = SourceModel(src_path)
    hp = src.hp
    check_method(src, m, opts.method)
    if os.path.exists(out_path) and os.path.samefile(src_path, out_path):
        raise LarosaError(f"{out_path}: output would overwrite the input")
    if calib.tokens.ndim != 2 or calib.tokens.size == 0:
        raise LarosaError("calibration: no tokens")
    if calib.tokens.min() < 0 or calib.tokens.max() >= hp.n_vocab:
        raise LarosaError("calibration: token ids outside the vocabulary")
    # the plan of tensors fails early (bad --type for these sizes) before any slow step
    tensor_types(src, opts, output_shapes(src, m, [m.rotation != "identity"] * hp.n_layers))
    coefs = {b: [m.coefs[b]] * hp.n_layers for b in F.BLOCK_INPUTS}
    ks = F.ks_for(hp, coefs, opts.sparsity)
    out = _Out(out_path, opts.force)   # refuses to overwrite before the slow part

    plans = _calibrate(src, calib, m, ks, opts)
    rotated = [p.Q is not None for p in plans]
    shapes = output_shapes(src, m, rotated)
    types = tensor_types(src, opts, shapes)
    w = GGUFWriter(out.tmp, F.ARCH)
    _write_metadata(w, src, calib, opts, m, plans, ks)
    stored = stored_tensors(shapes, types)
    for name, (shape, qtype) in stored.items():
        nbytes = F.row_bytes(qtype, shape[-1]) * (shape[0] if len(shape) == 2 else 1)
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)

    old_term = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up too
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        written = _write_tensors(w, src, m, plans, types, opts)
        w.close()
        assert written == list(stored), "tensor order differs from the header"
        auto = choose_selection(out.tmp, calib, opts) if opts.method == "auto" else None
        out.commit()
    except BaseException:
        w.close()
        out.discard()
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)

    f = load(out_path)    # the written file, read back through the runtime's validation
    return Summary(
        out_path=out_path, seconds=time.time() - t0, out_bytes=os.path.getsize(out_path), ks=ks,
        rotated=rotated, bytes_per_token=f.bytes_per_token(), dense_bytes_per_token=f.dense_bytes_per_token(),
        source_bytes_per_token=_source_bytes_per_token(src), calib_tokens=calib.n_tokens,
        types={n: t.name for n, t in types.items()}, auto=auto)


AUTO_MARGIN_SE = 2.0   # another selection replaces the budget rule only when better by this many standard errors


def token_nll(m, window: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (nats) of every token after the first of one window, through m."""
    m.reset()
    x = m.eval(window.tolist(), all_logits=True)[:-1].astype(np.float64)
    mx = x.max(axis=1)
    lse = mx + np.log(np.exp(x - mx[:, None]).sum(axis=1))
    return lse - x[np.arange(len(window) - 1), window[1:]]


def auto_choice(nll_budget: np.ndarray, *challengers: np.ndarray,
                names: tuple[str, ...] = F.AUTO_SELECTIONS[1:]) -> str:
    """--method auto's rule: the budget rule, unless a challenger (Top-K of the same keys, Top-K of
    |x| alone) has a paired per-token advantage on the held-out text of more than AUTO_MARGIN_SE
    standard errors; among the challengers that clear it, the one with the lowest mean NLL. One
    held-out window of 1024 tokens cannot resolve differences of a few percent (RESULTS.md, issue
    17: on SmolLM2 at 25 % it preferred Top-K by 0.8 standard errors, and the test text then found
    the budget rule 1.7 % better); on Gemma 3 the gaps are many standard errors."""
    if len(challengers) > len(names):
        raise ValueError(f"{len(challengers)} challengers, {len(names)} names")
    base = np.asarray(nll_budget, np.float64)
    best, best_mean = "budget", None
    for name, nll in zip(names, challengers):
        d = base - np.asarray(nll, np.float64)
        if d.size < 2:
            clear = d.sum() > 0
        else:
            clear = d.mean() > AUTO_MARGIN_SE * d.std(ddof=1) / np.sqrt(d.size)
        mean = float(np.mean(nll))
        if clear and (best_mean is None or mean < best_mean):
            best, best_mean = name, mean
    return best


AUTO_SELECTIONS_INDEX = {name: i for i, name in enumerate(F.AUTO_SELECTIONS)}


def choose_selection(path: str, calib: Calibration, opts: Options) -> tuple[str, list[float]]:
    """--method auto: the written file (budget's keys and tables) scored on the held-out calibration
    windows at its sparsity through the C runtime, as budget, as Top-K of the same keys (|x| times
    the score tensors) and as Top-K of |x| alone (the score tensors unused); another selection
    replaces budget as the file's default only when clearly better (auto_choice). All read the
    same bytes per token (Top-K's k is budget's plan). The perplexities are its evidence, set in
    place in the placeholders _write_metadata left (fixed-size values: nothing moves)."""
    from larosa.runtime.gguf_file import scan_gguf
    from larosa.runtime.model import Model
    held = calib.heldout
    if held is None or held.size == 0:
        raise LarosaError("--method auto needs held-out calibration text after the calibration tokens "
                          "(a longer --calib file, or fewer --calib-tokens)")
    nll = []
    for sel in F.AUTO_SELECTIONS:
        # at the file's sparsity (float32, as Model reads it by default: 0.4 and float32(0.4) pick
        # slightly different thresholds, and near-ties then move perplexity by ~0.5 %)
        m = Model(path, n_ctx=int(held.shape[1]), n_threads=opts.threads,
                  budget=sel == "budget", topk=sel != "budget", scores=sel != "topk_abs")
        nll.append(np.concatenate([token_nll(m, w) for w in held]))
        del m
    ppl = [float(np.exp(v.mean())) for v in nll]
    choice = AUTO_SELECTIONS_INDEX[auto_choice(*nll)]
    keys = scan_gguf(path).keys
    with open(path, "r+b") as f:
        f.seek(keys[F.K_AUTO_SELECTION].value_at)
        f.write(np.uint32(choice).tobytes())
        f.seek(keys[F.K_AUTO_PPL].value_at)
        with np.errstate(over="ignore"):   # past float32's range (random weights): stored as inf
            f.write(np.asarray(ppl, dtype="<f4").tobytes())
        f.seek(keys[F.K_AUTO_TOKENS].value_at)
        f.write(np.uint32(held.size).tobytes())
    return F.AUTO_SELECTIONS[choice], ppl


@torch.inference_mode()
def _calibrate(src: SourceModel, calib: Calibration, m: S.Method, ks: dict[str, list[int]],
               opts: Options) -> list[S.LayerPlan]:
    """Pass 1: the basis and the threshold tables of every layer."""
    hp = src.hp
    x = src.weight("token_embd.weight")[torch.from_numpy(calib.tokens.astype(np.int64))]  # [n_win, T, d]
    if hp.embd_scale != 1.0:
        x = x * torch.tensor(hp.embd_scale, dtype=torch.float32)
    freqs = src.rope_freqs(n_ctx=x.shape[1])   # rope_freqs.weight, LongRoPE's factors, the scaling (source.py)
    ropes = rope_sets(hp, x.shape[1], freqs)
    widths = {b: hp.block_input_width(b) for b in F.BLOCK_INPUTS}
    look = bool(m.thresholds) or m.rotation == "auto"      # does the plan need the block inputs?
    eye = torch.eye(hp.dim, dtype=torch.float64)
    plans = []
    for l in tqdm(range(hp.n_layers), desc="calibrate", unit="layer", disable=not opts.progress):
        Q = None
        if m.rotation != "identity":
            H = torch.zeros(hp.dim, hp.dim, dtype=torch.float64)
            for xw in x:
                u = rmsnorm(xw, None, hp.norm_eps).double()
                H += u.T @ u
            Q = fuse.rotation_from_moments(H)
        orig = fuse.source_layer(src.layer(l))
        seen = TopK(**{b: [widths[b]] * hp.n_layers for b in F.BLOCK_INPUTS}, seen={}) if look else None
        outs, attn, gate = [], [], []
        for xw in x:
            outs.append(layer_forward(orig, xw[None], hp, *ropes[hp.layer_rope(l)], seen, l)[0])
            if look:
                attn.append(seen.seen["attn_out"][l][0])
                gate.append(seen.seen["mlp_in"][l][0] @ orig.wgu[:, :hp.ffn_dim])
        apart = src.arch.norms_apart
        plan = S.LayerPlan(Q=Q, score=S.layer_score(m, Q is not None, apart))
        if look:
            xs, attn, gate = x.reshape(-1, hp.dim), torch.cat(attn), torch.cat(gate)
            k_l = {b: ks[b][l] for b in F.BLOCK_INPUTS}
            fused = {"pca": fuse.fuse_layer(orig, Q, None) if Q is not None else None,
                     "id": fuse.fuse_layer(orig, eye, None, apart)}
            inputs = {name: S.block_inputs(orig, xs, hp, Q if name == "pca" else None, attn, gate,
                                           apart and name == "id") for name, f in fused.items() if f is not None}
            scores = {name: S.scores_of(S.layer_score(m, name == "pca", apart), f, orig)
                      for name, f in fused.items() if f is not None}
            if m.rotation == "auto" and not S.choose_rotation(m, orig, fused["pca"], fused["id"], inputs["pca"],
                                                              inputs["id"], k_l, scores["pca"], scores["id"]):
                plan.Q = None
            basis = "pca" if plan.Q is not None else "id"
            plan.score = S.layer_score(m, plan.Q is not None, apart)
            for i, b in enumerate(m.thresholds):
                key = S.key_of(b, inputs[basis][b], scores[basis].get(b), gate, m.mlp_out_key, hp.act)
                plan.thresholds[b] = S.threshold_table(key, seed=l * 4 + i)
        plans.append(plan)
        x = torch.stack(outs)
    return plans


@torch.inference_mode()
def _write_tensors(w: GGUFWriter, src: SourceModel, m: S.Method, plans: list[S.LayerPlan],
                   types: dict[str, QT], opts: Options) -> list[str]:
    """Pass 2: fuse each layer with its basis (an adapter where the basis changes), then the
    embedding and head."""
    hp = src.hp
    written: list[str] = []

    def put(name: str, x: torch.Tensor | np.ndarray) -> None:
        if name not in types:
            return   # not part of this file (an adapter between two identity bases)
        if isinstance(x, torch.Tensor) and F.input_major(name) and types[name] in F.IM_TYPES:
            codes, scales = F.im_quantize(x.detach().float().numpy(), types[name])
            w.write_tensor_data(codes)
            w.write_tensor_data(scales)
            written.extend([name, F.scale_name(name)])
            return
        arr = x if isinstance(x, np.ndarray) else _encode(x, types[name])
        w.write_tensor_data(arr)
        written.append(name)

    eye = torch.eye(hp.dim, dtype=torch.float64)
    basis = [p.Q if p.Q is not None else eye for p in plans]
    for l in tqdm(range(hp.n_layers), desc="fuse+write", unit="layer", disable=not opts.progress):
        orig = fuse.source_layer(src.layer(l))
        before = basis[l - 1] if l > 0 else eye      # a tied embedding is in the identity basis
        fused = fuse.fuse_layer(orig, basis[l], fuse.adapter(before, basis[l]), src.arch.norms_apart)
        if fused.adapter is not None:
            put(F.T_ADAPTER(l), fused.adapter)
        put(F.T_QKV(l), fused.wqkv)
        put(F.T_O(l), fused.wo)
        put(F.T_GATE_UP(l), fused.wgu)
        put(F.T_DOWN(l), fused.wdown)
        for b, score in S.scores_of(plans[l].score, fused, orig).items():
            put(F.T_SCORE(l, b), score)
        for kind, attr in F.LAYER_VECTOR_FIELDS.items():
            v = getattr(fused, attr)
            if v is not None:
                put(F.T_VEC(l, kind), v)
        del fused

    embd = src.weight("token_embd.weight")
    if hp.tied:
        raw = src.raw("token_embd.weight")
        put(F.T_EMBD, np.asarray(raw.data) if raw.tensor_type == types[F.T_EMBD] else embd)
        put(F.T_OUTPUT_ADAPTER, basis[-1].T.float())
        put(F.T_OUTPUT_NORM, src.output_norm())
    else:
        put(F.T_EMBD, embd @ basis[0].float())
        put(F.T_OUTPUT, fuse.fuse_head(src.weight("output.weight"), src.output_norm(), basis[-1]))
    if src.longrope():   # both sets: the runtime chooses by its context (LarosaFile.rope_freqs_name)
        put(F.T_ROPE_LONG, src.rope_freqs(name=F.T_ROPE_LONG))
        put(F.T_ROPE_SHORT, src.rope_freqs(name=F.T_ROPE_SHORT))
    elif src.has_rope_freqs():
        put(F.T_ROPE_FREQS, src.rope_freqs())
    return written


def _source_bytes_per_token(src: SourceModel) -> int:
    """What a dense decode of the source file reads per token (all weights but the embedding)."""
    total = 0
    for name, t in src.tensors.items():
        if name == "token_embd.weight" and not src.hp.tied:
            continue
        total += int(t.n_bytes)
    return total

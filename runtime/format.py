"""The LaRoSA GGUF format: key names, tensor names and the Top-K rule (see FORMAT.md).

This module is the single place where the format is spelled out in code: the converter
writes what it says, the runtime checks files against it. No torch here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT
from gguf import quants

from .errors import UnsupportedError

# the llama.cpp architectures the converter reads
SOURCE_ARCHS = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "granite", "smollm3", "phi3", "mistral3")
ARCH = "larosa"            # general.architecture: stock llama.cpp refuses it (unknown architecture)
FORMAT_VERSION = 2        # 2: input-major quantized weights as I8 codes + F16 scales (FORMAT.md)

# The four block inputs of a decoder layer, each with its own Top-K.
#   attn_in : RMSNorm output feeding q/k/v    (rotated, width d)
#   attn_out: concatenated heads feeding o     (plain,   width n_head * head_dim)
#   mlp_in  : RMSNorm output feeding gate/up   (rotated, width d)
#   mlp_out : silu(gate) * up feeding down     (plain,   width ff)
BLOCK_INPUTS = ("attn_in", "attn_out", "mlp_in", "mlp_out")
PAPER_COEFS = {"attn_in": 0.8, "attn_out": 1.2, "mlp_in": 0.8, "mlp_out": 1.2}
# larosa: the paper's recipe (PCA rotations, Top-K, 0.8/1.2); topk: Top-K of |input| without rotation;
# teal: static thresholds on |input|; cats: threshold on |silu(gate)|, MLP only. FORMAT.md.
METHODS = ("auto", "budget", "wina", "larosa", "topk", "teal", "cats")

# --type choices for the block weights.
WEIGHT_TYPES = {"f32": QT.F32, "f16": QT.F16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0}
# Adapters (d x d changes of basis) carry the whole residual stream, so their error compounds
# through every layer: measured on SmolLM2, Q8_0 adapters cost +4.8% perplexity, F16 +0.02%.
# Default: F16 (F32 with --type f32). See FORMAT.md.
DEFAULT_ADAPTER_TYPE = {QT.F32: QT.F32, QT.F16: QT.F16, QT.Q8_0: QT.F16, QT.Q4_0: QT.F16}
RUNTIME_TYPES = (QT.F32, QT.F16, QT.Q8_0, QT.Q4_0)   # what the runtime can read, for any tensor


def key(name: str) -> str:
    return f"{ARCH}.{name}"


# hyper-parameters, mirrored from llama.* of the source file
K_CONTEXT = key("context_length")
K_DIM = key("embedding_length")
K_FF = key("feed_forward_length")
K_LAYERS = key("block_count")
K_HEADS = key("attention.head_count")
K_KV_HEADS = key("attention.head_count_kv")
K_HEAD_DIM = key("attention.key_length")
K_EPS = key("attention.layer_norm_rms_epsilon")
K_ROPE_BASE = key("rope.freq_base")
K_ROPE_DIM = key("rope.dimension_count")
K_VOCAB = key("vocab_size")
# LaRoSA keys
K_VERSION = key("format_version")
K_METHOD = key("method")
K_SPARSITY = key("sparsity")
K_TIED = key("tied_embeddings")
K_SOURCE_ARCH = key("source.architecture")
K_SOURCE_FILE = key("source.file")
K_CALIB_SOURCE = key("calibration.source")
K_CALIB_SHA256 = key("calibration.sha256")
K_CALIB_TOKENS = key("calibration.tokens")
K_CALIB_WINDOW = key("calibration.window")
K_ROTATED = key("rotated")                  # uint8[n_layer]: 1 where layer l has a PCA basis
K_MLP_OUT_KEY = key("mlp_out_key")          # "act" (rank |m_j|) or "gate" (rank |silu(gate_j)|)
K_THR_GRID = key("threshold.sparsity")      # float32[G]: the levels of the threshold tables
K_BUDGET = key("threshold.budget")          # bool: hold the thresholds to a per-token byte budget
# --method auto (FORMAT.md "Automatic selection"): the converter scored both selections of the same
# thresholds and scores on held-out calibration text and keeps the better as the file's default
K_AUTO_SELECTION = key("auto.selection")    # uint32: an index into AUTO_SELECTIONS
K_AUTO_PPL = key("auto.perplexity")         # float32 [3]: held-out perplexity of each, AUTO_SELECTIONS order
K_AUTO_TOKENS = key("auto.tokens")          # uint32: held-out tokens scored
# thresholds held to the per-token budget | Top-K, same keys (|x| times the score) | Top-K of |x| alone
# (the score tensors unused: the key of --method topk where the norm scales are applied at run time)
AUTO_SELECTIONS = ("budget", "topk", "topk_abs")
# what an architecture adds to llama's forward pass (FORMAT.md "Architecture keys"); each optional,
# its absence meaning llama's behaviour
K_EMBD_SCALE = key("embedding_scale")       # float32: the looked-up embedding row times this (Gemma: sqrt(d))
K_ACTIVATION = key("activation")            # "silu" (SwiGLU) or "gelu_tanh" (Gemma's GeGLU, ggml's CPU GELU)
K_SWA = key("attention.sliding_window")     # uint32 n_swa: a sliding-window layer attends to its last n_swa positions
K_SWA_LAYERS = key("attention.sliding_window_layers")   # uint8[n_layer]: 1 where layer l uses the window
K_ROPE_BASE_SWA = key("rope.freq_base_swa")  # float32: the RoPE base of the sliding-window layers
K_NO_ROPE = key("rope.no_rope_layers")      # uint8[n_layer]: 1 where layer l does not rotate q and k (SmolLM3)
K_ATTN_SOFTCAP = key("attn_logit_softcapping")    # float32 c: attention scores c tanh(s / c) (Gemma 2)
K_FINAL_SOFTCAP = key("final_logit_softcapping")  # float32 c: logits c tanh(z / c)
K_ROPE_FREQS_SWA = key("rope.freqs_swa")   # bool, default true: the sliding-window layers divide by rope_freqs too
                                            # (false: Gemma 3, whose linear scaling llama.cpp applies to its global layers only)
# LongRoPE (Phi-3): two sets of frequency divisors, the long one for a context beyond the original one
K_ROPE_ORIG_CTX = key("rope.scaling.original_context_length")   # uint32: the context the short factors serve
# Llama 4 / Mistral 3 attention temperature: q at position p times 1 + scale * ln(floor(p / length) + 1)
K_ATTN_TEMP_SCALE = key("attention.temperature_scale")    # float32 scale (0: none)
K_ATTN_TEMP_LENGTH = key("attention.temperature_length")  # uint32 length (llama.cpp: the original context)
ACTIVATIONS = ("silu", "gelu_tanh")


def K_COEF(block_input: str) -> str:
    return key(f"coef.{block_input}")   # float32[n_layer]


def K_K(block_input: str) -> str:
    return key(f"k.{block_input}")      # uint32[n_layer], k at the default sparsity


def K_THR(block_input: str) -> str:
    return key(f"threshold.{block_input}")   # float32[n_layer * G]: thresholds, layer-major


# tensors; shapes are [rows, cols] row-major (ggml ne = [cols, rows]); "input-major" = one row per input
T_EMBD = "token_embd.weight"          # [vocab, d]  lookup rows (rotated by Q_0 when untied)
T_OUTPUT = "output.weight"            # [vocab, d]  untied only: head, logits = u_rot @ output^T
T_OUTPUT_NORM = "output_norm.weight"  # [d] F32     tied only: g_out
T_OUTPUT_ADAPTER = "output_adapter.weight"  # [d, d] tied only: Q_{L-1}^T, back to the embedding basis
T_ROPE_FREQS = "rope_freqs.weight"    # [n_rot/2] F32, optional (llama3-style frequency factors)
T_ROPE_LONG = "rope_factors_long.weight"    # [n_rot/2] F32, LongRoPE: the divisors for a context > K_ROPE_ORIG_CTX
T_ROPE_SHORT = "rope_factors_short.weight"  # [n_rot/2] F32, LongRoPE: the divisors otherwise (with T_ROPE_LONG)


def T_ADAPTER(l: int) -> str:   # [d, d] input-major; r <- r @ A_l, where the basis changes
    return f"blk.{l}.adapter.weight"


def T_SCORE(l: int, block_input: str) -> str:   # [n] F32: inputs ranked by |x_i| * score_i
    return f"blk.{l}.score_{block_input}.weight"


def T_QKV(l: int) -> str:       # [d, (n_head + 2 n_kv) head_dim] input-major
    return f"blk.{l}.attn_qkv.weight"


def T_O(l: int) -> str:         # [n_head head_dim, d] input-major
    return f"blk.{l}.attn_output.weight"


def T_GATE_UP(l: int) -> str:   # [d, 2 ff] input-major, gate columns first
    return f"blk.{l}.ffn_gate_up.weight"


def T_DOWN(l: int) -> str:      # [ff, d] input-major
    return f"blk.{l}.ffn_down.weight"


# Optional per-layer vectors (F32), each present in every layer or in none (FORMAT.md "Biases and
# q/k norms"): what a source architecture adds to llama's layer. name -> its length.
#   attn_qkv.bias    added to q, k, v after their product, before the q/k norms and RoPE
#   attn_output.bias, ffn_down.bias  added to the block's output (in the layer's basis), then the residual
#   attn_q_norm, attn_k_norm  RMSNorm scales over each head of q / k (Qwen3, Gemma 3), before RoPE
#   post_attention_norm, post_ffw_norm  RMSNorm (with this scale) of the o / down output before the
#                    residual add (Gemma's "sandwich" norms)
#   attn_norm, ffn_norm  the block inputs' RMSNorm scales, applied at run time instead of being folded
#                    into the weights (Gemma: scales of 0 to ~100 next to massive activations)
# kind -> the field of the reference's Layer (converter/model.py) and of the C lr_layer holding it
LAYER_VECTOR_FIELDS = {"attn_qkv.bias": "bqkv", "attn_output.bias": "bo", "ffn_down.bias": "bdown",
                       "attn_q_norm.weight": "q_norm", "attn_k_norm.weight": "k_norm",
                       "post_attention_norm.weight": "post_attn_norm", "post_ffw_norm.weight": "post_ffn_norm",
                       "attn_norm.weight": "attn_norm", "ffn_norm.weight": "ffn_norm"}
LAYER_VECTORS = tuple(LAYER_VECTOR_FIELDS)


def layer_vector_len(hp: "HParams", kind: str) -> int:
    return {"attn_qkv.bias": hp.qkv_dim, "attn_output.bias": hp.dim, "ffn_down.bias": hp.dim,
            "attn_q_norm.weight": hp.head_dim, "attn_k_norm.weight": hp.head_dim,
            "post_attention_norm.weight": hp.dim, "post_ffw_norm.weight": hp.dim, "attn_norm.weight": hp.dim,
            "ffn_norm.weight": hp.dim}[kind]


def T_VEC(l: int, kind: str) -> str:   # kind: one of LAYER_VECTORS
    return f"blk.{l}.{kind}"


@dataclass(frozen=True)
class HParams:
    n_vocab: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    norm_eps: float
    rope_base: float
    n_ctx: int
    tied: bool
    # what an architecture adds (defaults: llama's); FORMAT.md "Architecture keys"
    embd_scale: float = 1.0          # embedding rows times this (Gemma: sqrt(d))
    act: str = "silu"                # the MLP's gate activation: silu | gelu_tanh (ACTIVATIONS)
    n_swa: int = 0                   # sliding window (positions) of the layers in swa_layers
    swa_layers: tuple = ()           # n_layers bools (empty: none)
    rope_base_swa: float = 0.0       # RoPE base of the sliding-window layers
    attn_softcap: float = 0.0        # 0: none
    final_softcap: float = 0.0       # 0: none
    no_rope_layers: tuple = ()       # n_layers bools: True where the layer has no RoPE (empty: none)
    n_rot: int = 0                   # rotated dimensions of each head (partial rotary, Phi-3/4); 0: head_dim
    rope_freqs_swa: bool = True      # the sliding-window layers divide by rope_freqs too (Gemma 3: not)
    attn_temp_scale: float = 0.0     # Mistral 3: q times 1 + scale ln(floor(pos / length) + 1); 0: none
    attn_temp_length: int = 0
    rope_orig_ctx: int = 0           # LongRoPE files: the context beyond which the long factors apply

    @property
    def rot_dims(self) -> int:
        """The dimensions RoPE rotates in each head (the first rot_dims, in adjacent pairs)."""
        return self.n_rot or self.head_dim

    def layer_rope(self, layer: int) -> tuple[float, bool]:
        """(base, divided by rope_freqs) of the layer's RoPE: its table (converter/model.py rope_sets)."""
        swa = bool(self.window(layer))
        return (self.rope_base_swa if swa else self.rope_base), (self.rope_freqs_swa or not swa)

    def attn_temperature(self, pos: np.ndarray) -> np.ndarray:
        """float32 factors on q at positions pos, as llama.cpp computes them (llm_graph_input_attn_temp:
        the float position over the length in float, floor, then log and the rest in double)."""
        p = np.asarray(pos, dtype=np.float32)
        if not self.attn_temp_scale:
            return np.ones(p.shape, np.float32)
        f = np.floor(p / np.float32(self.attn_temp_length)).astype(np.float64)
        return (np.log(f + 1.0) * np.float64(np.float32(self.attn_temp_scale)) + 1.0).astype(np.float32)

    def window(self, layer: int) -> int:
        """The sliding window of a layer (positions it attends to, itself included), 0: all."""
        return self.n_swa if self.swa_layers and self.swa_layers[layer] else 0

    def rope(self, layer: int) -> bool:
        """Whether the layer rotates q and k (RoPE)."""
        return not (self.no_rope_layers and self.no_rope_layers[layer])

    @property
    def qkv_dim(self) -> int:
        return (self.n_heads + 2 * self.n_kv_heads) * self.head_dim

    def block_input_width(self, block_input: str) -> int:
        return {"attn_in": self.dim, "attn_out": self.n_heads * self.head_dim,
                "mlp_in": self.dim, "mlp_out": self.ffn_dim}[block_input]


def kept(n: int, coef: float, sparsity: float) -> int:
    """k = the number of the n inputs that Top-K keeps: floor((1 - min(coef * s, 1)) * n), at least 1.

    Computed in float64 with a 1e-9 guard so that exact products (0.5 * 576) do not round down.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    s = min(coef * sparsity, 1.0)
    return max(1, min(n, math.floor((1.0 - s) * n + 1e-9)))


def threshold_at(grid: list[float], table: list[float], level: float) -> float:
    """The threshold for sparsity `level` from a layer's table over `grid` (linear interpolation;
    0 at level 0, where every input with a non-zero key is kept, and clamped at the last level)."""
    if level <= 0:
        return 0.0
    xs, ys = [0.0, *grid], [0.0, *table]
    if level >= xs[-1]:
        return ys[-1]
    i = next(j for j in range(1, len(xs)) if xs[j] >= level)
    f = (level - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + f * (ys[i] - ys[i - 1])


def ks_for(hp: HParams, coefs: dict[str, list[float]], sparsity: float) -> dict[str, list[int]]:
    """Per block input, per layer k at the given sparsity."""
    return {b: [kept(hp.block_input_width(b), c, sparsity) for c in coefs[b]] for b in BLOCK_INPUTS}


def row_bytes(qtype: QT, n: int) -> int:
    """Bytes of one row of n values of type qtype (n a multiple of the block size). For an
    input-major Q8_0 / Q4_0 weight (stored as codes and a scale table) the same figure: its codes
    plus its share of the scales (one fp16 per 32 values either way)."""
    block, size = GGML_QUANT_SIZES[qtype]
    return n // block * size


def check_row_length(qtype: QT, n: int, what: str) -> None:
    block = GGML_QUANT_SIZES[qtype][0]
    if n % block:
        raise UnsupportedError(f"{what}: rows of {n} values cannot be stored as {qtype.name} "
                               f"(needs a multiple of {block}); use --type f16 or f32")


# ---- input-major quantized weights (FORMAT.md "Input-major quantized types") -------------------
# W [rows = inputs, cols = outputs] as ggml's Q8_0 / Q4_0 of the output-major W^T (blocks of 32
# along the inputs), stored transposed: `<name>.weight` I8 codes, one row per input (Q8_0: the
# int8 q, [rows, cols]; Q4_0: q + 8 in nibbles, [rows, cols / 2], each 64 outputs in 32 bytes, byte
# j holding output j in its low and output j + 32 in its high nibble), and `<name>.scale` F16
# [rows / 32, cols]: W[i][c] = scale[i // 32][c] * q[i][c].
IM_TYPES = (QT.Q8_0, QT.Q4_0)
IM_GROUP, IM_CHUNK = 32, 64          # inputs sharing a scale; outputs per packed chunk


def input_major(name: str) -> bool:
    """A weight whose rows are its inputs (the layer weights and adapters), not the embedding/head."""
    return name.endswith(".weight") and (name == T_OUTPUT_ADAPTER or (
        name.startswith("blk.") and name.split(".")[2] in ("adapter", *WEIGHT_INPUT)))


def scale_name(name: str) -> str:
    return name[: -len(".weight")] + ".scale"


def check_im_shape(qtype: QT, rows: int, cols: int, what: str) -> None:
    if rows % IM_GROUP or cols % IM_CHUNK:
        raise UnsupportedError(f"{what}: a [{rows}, {cols}] input-major weight cannot be stored as {qtype.name} "
                               f"(needs rows a multiple of {IM_GROUP} and columns of {IM_CHUNK}); "
                               "use --type f16 or f32")


def im_code_cols(qtype: QT, cols: int) -> int:
    return cols if qtype == QT.Q8_0 else cols // 2


def im_quantize(w: np.ndarray, qtype: QT) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 [rows, code cols], scales float16 [rows / 32, cols]) of an input-major float
    matrix [rows, cols]: gguf's (ggml's) Q8_0 / Q4_0 quantization of w.T, transposed."""
    rows, cols = w.shape
    check_im_shape(qtype, rows, cols, "im_quantize")
    raw = quants.quantize(np.ascontiguousarray(np.asarray(w, np.float32).T), qtype)  # [cols, rows/32 blocks]
    nb = rows // IM_GROUP
    blocks = raw.reshape(cols, nb, -1)
    scales = np.ascontiguousarray(blocks[:, :, :2].copy().view(np.float16).reshape(cols, nb).T)
    if qtype == QT.Q8_0:
        q = blocks[:, :, 2:].view(np.int8).reshape(cols, rows)
        return np.ascontiguousarray(q.T), scales
    if qtype != QT.Q4_0:
        raise ValueError(f"im_quantize: {qtype.name} is not an input-major quantized type")
    packed = blocks[:, :, 2:]                                   # [cols, nb, 16]: j | j + 16 << 4
    u = np.concatenate([packed & 0x0F, packed >> 4], axis=2).reshape(cols, rows)   # q + 8
    u = u.T.reshape(rows, cols // IM_CHUNK, 2, IM_CHUNK // 2)  # [rows, chunk, half, 32]
    codes = (u[:, :, 0, :] | (u[:, :, 1, :] << 4)).astype(np.uint8).reshape(rows, cols // 2)
    return np.ascontiguousarray(codes).view(np.int8), scales


def im_dequantize(codes: np.ndarray, scales: np.ndarray, qtype: QT) -> np.ndarray:
    """The float32 [rows, cols] matrix of an input-major quantized weight."""
    rows = codes.shape[0]
    cols = scales.shape[1]
    if qtype == QT.Q8_0:
        q = codes.astype(np.float32)
    else:
        b = codes.view(np.uint8).reshape(rows, cols // IM_CHUNK, 1, IM_CHUNK // 2)
        q = (np.concatenate([b & 0x0F, b >> 4], axis=2).reshape(rows, cols).astype(np.float32) - 8.0)
    return q * np.repeat(scales.astype(np.float32), IM_GROUP, axis=0)


# which block input each layer weight reads: its rows are that input's channels
WEIGHT_INPUT = {"attn_qkv": "attn_in", "attn_output": "attn_out", "ffn_gate_up": "mlp_in", "ffn_down": "mlp_out"}


def expected_tensors(hp: HParams, rotated: list[bool], scores: set[tuple[int, str]] = frozenset(),
                     has_rope_freqs: bool = False, vectors: tuple[str, ...] = (),
                     longrope: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor of a LaRoSA file and its [rows, cols] shape, in file order. rotated[l]: layer l
    has a PCA basis (else the identity); an adapter sits wherever the basis changes, the embedding
    basis counting as the identity when tied (an untied embedding is stored in layer 0's basis).
    vectors: the LAYER_VECTORS every layer carries."""
    d, q = hp.dim, hp.n_heads * hp.head_dim
    t: dict[str, tuple[int, ...]] = {}
    for l in range(hp.n_layers):
        before = rotated[l - 1] if l > 0 else False
        if (rotated[l] or before) and (l > 0 or hp.tied):   # both identity: no change of basis
            t[T_ADAPTER(l)] = (d, d)
        t[T_QKV(l)] = (d, hp.qkv_dim)
        t[T_O(l)] = (q, d)
        t[T_GATE_UP(l)] = (d, 2 * hp.ffn_dim)
        t[T_DOWN(l)] = (hp.ffn_dim, d)
        for b in BLOCK_INPUTS:
            if (l, b) in scores:
                t[T_SCORE(l, b)] = (hp.block_input_width(b),)
        for kind in LAYER_VECTORS:
            if kind in vectors:
                t[T_VEC(l, kind)] = (layer_vector_len(hp, kind),)
    t[T_EMBD] = (hp.n_vocab, d)
    if hp.tied:
        if rotated[-1]:
            t[T_OUTPUT_ADAPTER] = (d, d)
        t[T_OUTPUT_NORM] = (d,)
    else:
        t[T_OUTPUT] = (hp.n_vocab, d)
    if has_rope_freqs:
        t[T_ROPE_FREQS] = (hp.rot_dims // 2,)
    if longrope:
        t[T_ROPE_LONG] = t[T_ROPE_SHORT] = (hp.rot_dims // 2,)
    return t


def bytes_per_token(hp: HParams, tensors: dict[str, tuple[tuple[int, ...], QT]],
                    rows: dict[str, list[float]] | None, groups: dict[str, list[float]] | None = None) -> float:
    """Weight bytes one decode step reads: rows[b][l] rows of each block weight (all rows when
    rows is None), the adapters, scores and the head in full, one embedding row.

    Without `groups`, a row of an input-major Q8_0 / Q4_0 weight counts its share of the scale table
    (1/32 of a group's scales), which is exact for whole groups. With groups[b][l], the groups of 32
    inputs that had a selected input (the runtime's count), such a weight costs its rows' codes plus
    the full scales of every group touched: what a sparse step really reads (FORMAT.md
    "Input-major quantized types": one fp16 scale per group and output)."""
    total = 0.0
    for name, (shape, qtype) in tensors.items():
        if name == T_EMBD:
            total += row_bytes(qtype, hp.dim) * (1 + (hp.n_vocab if hp.tied else 0))  # lookup, tied head
            continue
        n_rows = shape[0] if len(shape) == 2 else 1
        parts = name.split(".")
        if rows is not None and name.startswith("blk.") and parts[2] in WEIGHT_INPUT and parts[3] == "weight":
            b, l = WEIGHT_INPUT[parts[2]], int(parts[1])
            n_rows = rows[b][l]
            if groups is not None and qtype in (QT.Q8_0, QT.Q4_0):   # input-major: codes, then scales
                cols = shape[-1]
                total += n_rows * cols * (1 if qtype == QT.Q8_0 else 0.5) + groups[b][l] * cols * 2
                continue
        total += n_rows * row_bytes(qtype, shape[-1])
    return total

"""The input of the converter: a llama.cpp GGUF of the llama, qwen2, qwen3, gemma2, gemma3, granite,
smollm3, phi3 or mistral3 architecture,
validated and read one tensor at a time (dequantized on demand, so a 7B model never sits in memory whole).

Architectures (ARCHS; read in llama.cpp's llama-model.cpp, checked against its logits in
tests/test_arch_*.py): qwen2 is llama with q/k/v biases and NEOX RoPE; qwen3 is llama with an RMSNorm
over each head of q and k before RoPE (attn_q_norm / attn_k_norm), a head size of its own
(attention.key_length) and NEOX RoPE; llama files may carry attn_q/k/v/output and ffn_down biases.
NEOX RoPE rotates the pairs (i, i + hd/2) of a head, the runtime's RoPE the pairs (2i, 2i + 1) at the
same frequencies: layer() permutes the rows of q and k (and their biases and norm scales) within each
head so that one becomes the other. q . k is unchanged by a permutation shared by q and k, so the
model is exactly the same.
gemma3 (llama.cpp's llama-model.cpp and models/gemma3.cpp, checked against its logits in
tests/test_arch_gemma.py): qwen3's q/k norms and NEOX RoPE, plus an RMSNorm with its own scale on
the attention and MLP outputs before each residual add (post_attention_norm, post_ffw_norm), a GeGLU
MLP (GELU in its tanh form), the embedding row scaled by sqrt(d), and sliding-window attention
(attention.sliding_window positions) on every layer l with l % P < P - 1 (P =
attention.sliding_window_pattern, default 6: llama_hparams::set_swa_pattern), those layers with
their own RoPE base (rope.freq_base_swa, default 10000); final_logit_softcapping c, when present,
maps the logits to c tanh(z / c). llama.cpp's GGUF converter already added Gemma's +1 to every norm
scale, so they are used as stored. Scores are q.k / sqrt(head size) except for the 62-layer (27B)
model, whose q llama.cpp scales by 1 / sqrt(d / n_heads) instead (folded into attn_q_norm).
gemma2 (llama.cpp's models/gemma2-iswa.cpp): gemma3 without the q/k norms, with the attention scores
soft-capped (attn_logit_softcapping, default 50: s -> c tanh(s / c)) and the final logits
(final_logit_softcapping, default 30), every other layer (l even) sliding-window
(attention.sliding_window, default 4096) with the model's one RoPE base.
granite (models/granite.cpp): llama with the embedding times embedding_scale, q.k times
attention.scale instead of 1 / sqrt(head size) (folded into attn_q), each block's output (bias
included) times residual_scale before the residual add (folded into attn_output / ffn_down), the
logits divided by logit_scale (folded into the final norm's scale), and no RoPE at all when
rope.scaling.finetuned is false; optional attn_output / ffn_down biases. Every scale is linear where
it is folded, so the fused LaRoSA form stays exact.
smollm3 (models/smollm3.cpp): llama with optional q/k/v biases and no RoPE on every fourth layer
(l + 1 a multiple of 4).
phi3 (models/phi3.cpp, checked in tests/test_arch_phi_mistral.py): a fused attn_qkv (or q / k / v, with
optional biases), ffn_up [2 ff, d] holding the gate rows then the up rows (ggml_swiglu), NEOX RoPE over
the first rope.dimension_count values of each head (partial rotary, Phi-4-mini; the others pass
through), LongRoPE's rope_factors_long / rope_factors_short chosen by the context size against
rope.scaling.original_context_length (llama_model::get_rope_factors: both are written, the runtime
chooses), rope.scaling.attn_factor scaling the rotated values of q and k; attention.sliding_window is
read and not applied (llama.cpp switches Phi-3's window off).
mistral3 (models/mistral3.cpp): llama with YaRN (ggml's rope_yarn: per-pair divisors and a magnitude
factor, yarn_divisors() and _rope_scaling(), with the file's beta keys and yarn_log_multiplier), the
attention temperature (attention.temperature_scale: q times 1 + s ln(floor(pos / n_orig) + 1) after
RoPE, n_orig = the original context) and optional attn_output / ffn_down (and q/k/v) biases; its ffn_gate
/ ffn_up biases are refused by name.
Linear RoPE scaling on gemma3 applies to the global layers only (the sliding-window layers rotate at
rope_freq_scale_train_swa = 1: HParams.rope_freqs_swa false); on gemma2 to every layer.
Other architectures (phi2, mixture-of-experts ones, ...) are refused by name.

Metadata: every <arch>.* key is either applied as llama.cpp applies it to a llama model or refused by
name (UnsupportedError); none is accepted and ignored (LLAMA_KEYS, the same for the three). What llama.cpp does with the
RoPE and attention keys, as read in its llama-model.cpp / llama-context.cpp and checked against its
logits (tests/test_source_keys.py):
- rope.scaling.type: absent means "linear"; "none" turns any factor off; "yarn" (mistral3) and
  "longrope" (phi3, the same math as linear, its factors in tensors) where the architecture has them
  (Arch.rope_types), other types refused.
- rope.scaling.factor, else the legacy rope.scale_linear (0: none): linear position interpolation,
  angle = pos / factor * base^(-2i/d) / rope_freqs[i]. Folded into the rope_freqs divisors the
  runtime already applies (rope_freqs()).
- rope.scaling.attn_factor: ggml scales the rotated q and k by it (times YaRN's magnitude term), so
  the scores by its square; folded into attn_q (layer()), or into the rotated rows of q and k with a
  partial rotary.
- rope.scaling.original_context_length, rope.scaling.finetuned: read by llama.cpp, used only by YaRN,
  LongRoPE and the attention temperature, or not at all: accepted, no effect on a llama file.
- rope.dimension_count: must equal the head size (llama.cpp refuses partial rotary for llama too)
  except on phi3.
- feed_forward_length, attention.head_count(_kv): a number or one per layer; per-layer arrays whose
  values differ are refused as unsupported (llama.cpp aborts on them).
- attention.scale, logit/embedding/residual scales, sliding_window, YaRN's keys: llama.cpp does not
  apply them to a llama model (its logits do not move), so a file carrying one expects another
  architecture's behaviour; refused by name, like every key not in LLAMA_KEYS.
Tensors: a fused blk.N.attn_qkv (llama; q, k, v rows in that order, as llama.cpp splits it) is read as
the three; the biases llama.cpp reads for the architecture (ARCHS) are applied, where one layer has a
bias the others take zeros; other biases, mixture-of-experts tensors and LongRoPE factors outside phi3 are refused by name.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT
from gguf import quants

from larosa.runtime import format as F
from larosa.runtime.errors import FormatError, UnsupportedError
from larosa.runtime.gguf_file import Metadata, open_gguf, tensor_map, tensor_rows_cols
from larosa.runtime.loader import check_tokenizer_keys

LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")

# llama.* keys (after the prefix) the converter knows. Any other llama.* key is refused by name.
LLAMA_KEYS = {
    "context_length", "embedding_length", "block_count", "vocab_size",
    "feed_forward_length", "attention.head_count", "attention.head_count_kv",   # number or per layer
    "attention.layer_norm_rms_epsilon", "attention.key_length", "attention.value_length",
    "rope.dimension_count", "rope.freq_base",
    "rope.scaling.type", "rope.scaling.factor", "rope.scale_linear", "rope.scaling.attn_factor",
    "rope.scaling.original_context_length", "rope.scaling.finetuned",          # no effect without YaRN
    "expert_count", "expert_used_count",                                       # 0, or refused (MoE)
}
ROPE_SCALING_TYPES = ("none", "linear")      # of llama.cpp's none / linear / yarn / longrope (Arch.rope_types)


@dataclass(frozen=True)
class Arch:
    """What an architecture adds to llama's layer, as llama.cpp builds it."""
    title: str
    neox: bool = False              # RoPE pairs (i, i + hd/2): permuted to (2i, 2i + 1) at conversion
    biases: tuple[str, ...] = ()    # optional per-layer biases llama.cpp reads (tensor names, no blk.N.)
    qk_norm: bool = False           # attn_q_norm / attn_k_norm [hd], required
    fused_qkv: bool = False         # a fused attn_qkv may replace attn_q / k / v
    rope_freqs: bool = False        # rope_freqs.weight (Llama 3 factors) may be present
    post_norms: bool = False        # post_attention_norm / post_ffw_norm [d], required (Gemma)
    act: str = "silu"               # the MLP's gate activation (format.ACTIVATIONS)
    embd_scale: bool = False        # the looked-up embedding row times sqrt(d) (Gemma)
    swa_period: int = 0             # default attention.sliding_window_pattern (0: no sliding window)
    swa_default: int = 0            # attention.sliding_window when absent
    rope_base_swa: float = 0.0      # rope.freq_base_swa when absent (0: rope.freq_base)
    attn_softcap: float = 0.0       # attn_logit_softcapping when absent (read only if in keys)
    final_softcap: float = 0.0      # final_logit_softcapping when absent (read only if in keys)
    q_scale_layers: int = 0         # the block count of the model whose q llama.cpp scales by 1 / sqrt(d / nh)
    no_rope_step: int = 0           # layer l has no RoPE when (l + 1) % no_rope_step == 0 (SmolLM3: 4)
    granite: bool = False           # Granite's logit / residual / embedding / attention scales (module doc)
    norms_apart: bool = False       # the block inputs' norm scales are applied at run time (fuse.py keep_norms)
    keys: tuple[str, ...] = ()      # <arch>.* keys beyond LLAMA_KEYS that the converter applies
    rope_types: tuple[str, ...] = ROPE_SCALING_TYPES   # rope.scaling.type values applied (absent: linear)
    swa_rope_scaled: bool = True    # the sliding-window layers take the linear RoPE factor too (Gemma 3: not)
    up_gate: bool = False           # ffn_up [2 ff, d] holds the gate rows, then the up rows; no ffn_gate (Phi-3)
    partial_rotary: bool = False    # rope.dimension_count may be below the head size (Phi-3/4)
    longrope: bool = False          # rope_factors_long / rope_factors_short may be present (Phi-3)
    swa_off: bool = False           # attention.sliding_window read and not applied (llama.cpp turns Phi-3's off)
    attn_temp: bool = False         # attention.temperature_scale (Mistral 3 / Llama 4 attention temperature)


ARCHS = {
    "llama": Arch("LLaMA", biases=("attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias",
                                   "ffn_down.bias"), fused_qkv=True, rope_freqs=True),
    "qwen2": Arch("Qwen2", neox=True, biases=("attn_q.bias", "attn_k.bias", "attn_v.bias")),
    "qwen3": Arch("Qwen3", neox=True, qk_norm=True),
    # llama.cpp's hparams for gemma2 / gemma3 (llama-model.cpp): the 27B models (46 / 62 layers) scale
    # q by 1 / sqrt(d / n_heads), not 1 / sqrt(head size)
    "gemma2": Arch("Gemma 2", neox=True, post_norms=True, act="gelu_tanh", embd_scale=True, norms_apart=True,
                   swa_period=2, swa_default=4096, attn_softcap=50.0, final_softcap=30.0, q_scale_layers=46,
                   keys=("attention.sliding_window", "attn_logit_softcapping", "final_logit_softcapping")),
    "gemma3": Arch("Gemma 3", neox=True, qk_norm=True, post_norms=True, act="gelu_tanh", embd_scale=True,
                   norms_apart=True, swa_period=6, rope_base_swa=10000.0, q_scale_layers=62, swa_rope_scaled=False,
                   keys=("attention.sliding_window", "attention.sliding_window_pattern",
                         "rope.freq_base_swa", "final_logit_softcapping")),
    "granite": Arch("Granite", biases=("attn_output.bias", "ffn_down.bias"), fused_qkv=True, rope_freqs=True,
                    granite=True, keys=("logit_scale", "residual_scale", "embedding_scale", "attention.scale")),
    "smollm3": Arch("SmolLM3", biases=("attn_q.bias", "attn_k.bias", "attn_v.bias"), no_rope_step=4),
    # llama.cpp's models/phi3.cpp: fused attn_qkv (or q / k / v), ffn_up holding gate and up, NEOX RoPE over
    # rope.dimension_count values of each head, LongRoPE factors; its sliding window is switched off
    "phi3": Arch("Phi-3", neox=True, biases=("attn_q.bias", "attn_k.bias", "attn_v.bias"), fused_qkv=True,
                 up_gate=True, partial_rotary=True, longrope=True, swa_off=True,
                 rope_types=("none", "linear", "longrope"), keys=("attention.sliding_window",)),
    # models/mistral3.cpp: llama with YaRN (its beta / log-multiplier keys) and the attention temperature;
    # optional q / k / v, attn_output and ffn_down biases
    "mistral3": Arch("Mistral 3", biases=("attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias",
                                          "ffn_down.bias"), fused_qkv=True, rope_freqs=True, attn_temp=True,
                     rope_types=("none", "linear", "yarn"),
                     keys=("attention.temperature_scale", "rope.scaling.yarn_beta_fast",
                           "rope.scaling.yarn_beta_slow", "rope.scaling.yarn_log_multiplier")),
}
assert tuple(ARCHS) == F.SOURCE_ARCHS
_MOE = re.compile(r"blk\.\d+\.ffn_(gate_inp|(gate|up|down)_(exps|shexp)|gate_inp_shexp|exp_probs_b)\.")


def neox_to_pairs(hd: int, n_rot: int | None = None) -> torch.Tensor:
    """[hd] row order taking a NEOX head (pairs (i, i + n_rot/2) of its first n_rot rows) to adjacent
    pairs (2i, 2i + 1): new row 2i is old row i, new row 2i + 1 old row i + n_rot/2 (pair i keeps
    its frequency); the rows past n_rot (not rotated: partial rotary) stay in place."""
    n_rot = n_rot or hd
    half = torch.arange(n_rot // 2)
    return torch.cat([torch.stack([half, half + n_rot // 2], dim=-1).reshape(-1), torch.arange(n_rot, hd)])


def _dequantizable(qt: QT) -> bool:
    if qt in (QT.F32, QT.F16):
        return True
    try:  # one all-zero block: cheap, and exactly what gguf would do with the real data
        quants.dequantize(np.zeros((1, quants.GGML_QUANT_SIZES[qt][1]), dtype=np.uint8), qt)
        return True
    except (NotImplementedError, KeyError, ValueError):
        return False


class SourceModel:
    """A validated llama / qwen2 / qwen3 GGUF: hyper-parameters, metadata and lazily dequantized weights.

    rope_scale: the linear RoPE factor (1: none); attn_factor: llama.cpp's rope attention factor
    (1: none). Both are applied by rope_freqs() and layer(), so every user of the weights (the
    calibration, the fusion, the reference) sees the model llama.cpp runs."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.reader = open_gguf(self.path)    # header only (runtime/gguf_file.py): big arrays stay unread
        self.meta = Metadata(self.reader, self.path)
        arch = self.meta.str("general.architecture")
        if arch == F.ARCH:
            raise UnsupportedError(f"{self.path}: already a LaRoSA file (general.architecture = {arch!r})")
        if arch not in ARCHS:
            raise UnsupportedError(f"{self.path}: architecture {arch!r} is not supported (the converter reads "
                                   f"{', '.join(ARCHS)})")
        self.arch_name, self.arch, self.prefix = arch, ARCHS[arch], arch + "."
        self.tensors = tensor_map(self.reader)
        self._check_keys()
        self.hp = self._hparams()
        self.rope_kind, self.rope_scale, self.mscale = self._rope_scaling()
        if self.hp.n_swa and not self.arch.swa_rope_scaled and self.rope_scale != 1.0:
            # llama.cpp: the sliding-window layers rotate at rope_freq_scale_train_swa (1), the global ones
            # at the linear factor (llama_model::get_rope_freq_scale)
            self.hp = dataclasses.replace(self.hp, rope_freqs_swa=False)
        self.q_scale = self._q_scale()
        self.fused_qkv = self.arch.fused_qkv and "blk.0.attn_qkv.weight" in self.tensors
        # the biases any layer has: every layer of the output carries them (zeros where absent)
        self.biases = tuple(b for b in self.arch.biases
                            if any(f"blk.{l}.{b}" in self.tensors for l in range(self.hp.n_layers)))
        self._validate()
        # the runtime's checks of the vocabulary the output will carry, before any slow step
        check_tokenizer_keys(self.meta, self.hp, self.path)

    # -- metadata ---------------------------------------------------------------------------
    def _check_keys(self) -> None:
        p = self.prefix
        known = LLAMA_KEYS | set(self.arch.keys)
        unknown = [k for k in self.reader.fields if k.startswith(p) and k[len(p):] not in known]
        if unknown:
            raise UnsupportedError(f"{self.path}: metadata key {unknown[0]!r} is not supported"
                                   + (f" (nor {', '.join(unknown[1:4])})" if len(unknown) > 1 else "")
                                   + f": the converter applies only the {p}* keys llama.cpp applies to a "
                                   f"{self.arch_name} model, and refuses the others rather than ignore them")

    def _per_layer(self, key: str, n_layers: int, default: int | None = None) -> int:
        """A hyper-parameter llama.cpp takes as one number or one per layer (get_key_or_arr)."""
        m = self.meta
        if m.has(key) and m.types(key)[0] == VT.ARRAY:
            a = m.array(key, "int")
            if a.size != n_layers:
                raise FormatError(f"{self.path}: {key} has {a.size} entries, expected one per layer ({n_layers})")
            if a.size and (a != a[0]).any():
                raise UnsupportedError(f"{self.path}: {key} differs between layers ({', '.join(map(str, a[:6]))}"
                                       f"{', ...' if a.size > 6 else ''}); per-layer sizes are not supported")
            return int(a[0])
        return m.int(key, default)

    def _hparams(self) -> F.HParams:
        m, p = self.meta, self.prefix
        n_experts = m.int(f"{p}expert_count", 0)
        if n_experts > 0:
            raise UnsupportedError(f"{self.path}: mixture-of-experts models are not supported "
                                   f"({p}expert_count = {n_experts})")
        if m.int(f"{p}expert_used_count", 0) != 0:
            raise FormatError(f"{self.path}: {p}expert_used_count is set without experts")
        dim = m.int(f"{p}embedding_length")
        n_layers = m.int(f"{p}block_count")
        if not 0 < n_layers <= 4096:
            raise FormatError(f"{self.path}: {p}block_count = {n_layers} must be in [1, 4096]")
        n_heads = self._per_layer(f"{p}attention.head_count", n_layers)
        n_kv = self._per_layer(f"{p}attention.head_count_kv", n_layers, n_heads)
        if "token_embd.weight" not in self.tensors:
            raise FormatError(f"{self.path}: missing tensor 'token_embd.weight'")
        n_vocab = tensor_rows_cols(self.tensors["token_embd.weight"])[0]
        if m.int(f"{p}vocab_size", n_vocab) != n_vocab:
            raise FormatError(f"{self.path}: {p}vocab_size = {m.int(p + 'vocab_size')}, but token_embd "
                              f"has {n_vocab} rows")
        if n_heads <= 0 or n_kv <= 0 or n_heads % n_kv:
            raise FormatError(f"{self.path}: head counts {n_heads}/{n_kv} are inconsistent")
        head_dim = m.int(f"{p}attention.key_length", dim // n_heads if dim % n_heads == 0 else 0)
        if head_dim <= 0 or head_dim % 2 or m.int(f"{p}attention.value_length", head_dim) != head_dim:
            raise UnsupportedError(f"{self.path}: head size must be even and equal for keys and values "
                                   f"({p}attention.key_length / value_length)")
        n_rot = m.int(f"{p}rope.dimension_count", head_dim)
        if n_rot != head_dim and not self.arch.partial_rotary:
            raise UnsupportedError(f"{self.path}: partial rotary embeddings are not supported on {self.arch.title} "
                                   f"({p}rope.dimension_count = {n_rot}, head size {head_dim}; llama.cpp "
                                   "refuses or asserts on them)")
        if not (2 <= n_rot <= head_dim and n_rot % 2 == 0):
            raise FormatError(f"{self.path}: {p}rope.dimension_count = {n_rot} must be even and in [2, {head_dim}]")
        hp = F.HParams(
            n_vocab=n_vocab, dim=dim, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=n_kv, head_dim=head_dim, ffn_dim=self._per_layer(f"{p}feed_forward_length", n_layers),
            norm_eps=m.float(f"{p}attention.layer_norm_rms_epsilon"),
            rope_base=m.float(f"{p}rope.freq_base", 10000.0),
            n_ctx=m.int(f"{p}context_length"), tied="output.weight" not in self.tensors,
            n_rot=0 if n_rot == head_dim else n_rot)
        for name in ("dim", "n_layers", "ffn_dim", "n_ctx"):
            if getattr(hp, name) <= 0:
                raise FormatError(f"{self.path}: {name} = {getattr(hp, name)} must be positive")
        if not hp.norm_eps > 0 or not np.isfinite(hp.rope_base) or hp.rope_base <= 0:
            raise FormatError(f"{self.path}: invalid norm epsilon or rope base")
        return self._arch_hparams(hp)

    def _arch_hparams(self, hp: F.HParams) -> F.HParams:
        """What the architecture adds to llama's hyper-parameters (module doc, Arch)."""
        m, p, a = self.meta, self.prefix, self.arch
        n_swa, swa_layers, base_swa = 0, (), 0.0
        if a.swa_period:
            n_swa = m.int(f"{p}attention.sliding_window", a.swa_default)
            key = f"{p}attention.sliding_window_pattern"
            if m.has(key) and m.types(key)[0] == VT.ARRAY:
                raise UnsupportedError(f"{self.path}: {key} as one value per layer is not supported (a period is)")
            period = m.int(key, a.swa_period) if "attention.sliding_window_pattern" in a.keys else a.swa_period
            if not 0 <= n_swa <= 1 << 22 or period < 0:
                raise FormatError(f"{self.path}: {p}attention.sliding_window = {n_swa} or its pattern {period} "
                                  "is out of range")
            swa_layers = tuple(period == 0 or l % period < period - 1 for l in range(hp.n_layers)) if n_swa else ()
            if n_swa and not any(swa_layers):
                n_swa, swa_layers = 0, ()
            base_swa = m.float(f"{p}rope.freq_base_swa", a.rope_base_swa or hp.rope_base) if n_swa else 0.0
            if n_swa and not (math.isfinite(base_swa) and base_swa > 1):
                raise FormatError(f"{self.path}: {p}rope.freq_base_swa = {base_swa} is invalid")
        caps = {}
        for name, default in (("attn_logit_softcapping", a.attn_softcap), ("final_logit_softcapping", a.final_softcap)):
            caps[name] = m.float(f"{p}{name}", default) if name in a.keys else 0.0
            if not (math.isfinite(caps[name]) and 0 <= caps[name] < 1e30):
                raise FormatError(f"{self.path}: {p}{name} = {caps[name]} is invalid")
        embd_scale = float(np.sqrt(np.float32(hp.dim))) if a.embd_scale else 1.0
        no_rope: tuple = ()
        if a.no_rope_step:
            no_rope = tuple((l + 1) % a.no_rope_step == 0 for l in range(hp.n_layers))
        if a.granite:
            embd_scale = self._granite_scale("embedding_scale") or 1.0
            if not m.bool(f"{p}rope.scaling.finetuned", True):   # llama.cpp: Granite's switch for RoPE
                no_rope = (True,) * hp.n_layers
        if a.swa_off:   # read (a valid number) and not applied, as llama.cpp does (models/phi3.cpp)
            if not 0 <= m.int(f"{p}attention.sliding_window", 0) <= 1 << 22:
                raise FormatError(f"{self.path}: {p}attention.sliding_window is out of range")
        temp_scale, temp_length = 0.0, 0
        if a.attn_temp:   # llama.cpp: the length is the original context (n_ctx_orig_yarn)
            temp_scale = m.float(f"{p}attention.temperature_scale", 0.0)
            if not (math.isfinite(temp_scale) and abs(temp_scale) < 1e30):
                raise FormatError(f"{self.path}: {p}attention.temperature_scale = {temp_scale} is invalid")
            temp_length = self.orig_ctx(hp) if temp_scale else 0
            if temp_scale and temp_length <= 0:
                raise FormatError(f"{self.path}: an attention temperature needs an original context length > 0")
        orig = self.orig_ctx(hp) if a.longrope and "rope_factors_long.weight" in self.tensors else 0
        return dataclasses.replace(
            hp, act=a.act, embd_scale=embd_scale, n_swa=n_swa, swa_layers=swa_layers, rope_base_swa=base_swa,
            attn_softcap=caps["attn_logit_softcapping"], final_softcap=caps["final_logit_softcapping"],
            no_rope_layers=no_rope, attn_temp_scale=temp_scale, attn_temp_length=temp_length, rope_orig_ctx=orig)

    def orig_ctx(self, hp: F.HParams) -> int:
        """llama.cpp's n_ctx_orig_yarn: rope.scaling.original_context_length, else the context length."""
        v = self.meta.int(f"{self.prefix}rope.scaling.original_context_length", hp.n_ctx)
        if not 0 < v <= 1 << 24:
            raise FormatError(f"{self.path}: {self.prefix}rope.scaling.original_context_length = {v} is out of range")
        return v

    def _granite_scale(self, name: str, default: float = 0.0) -> float:
        """A Granite scale (0: none, as llama.cpp reads an absent one)."""
        key = self.prefix + name
        v = self.meta.float(key, default)
        if not (math.isfinite(v) and 0 <= v < 1e30):
            raise FormatError(f"{self.path}: {key} = {v} is invalid")
        return v

    def output_norm(self) -> torch.Tensor:
        """output_norm.weight, divided by Granite's logit_scale (llama.cpp divides the logits by it;
        the head is linear after the norm's scale, so the scale may sit there)."""
        g = self.weight("output_norm.weight")
        if self.arch.granite:
            s = self._granite_scale("logit_scale", 1.0)
            if s == 0:
                raise FormatError(f"{self.path}: {self.prefix}logit_scale = 0")
            g = g / s
        return g

    def _q_scale(self) -> float:
        """The factor on q beyond llama's: Gemma 2 / 3 27B's and Granite's attention scales (module
        doc). RoPE's magnitude factor (mscale) is applied by layer()."""
        f = 1.0
        if self.hp.n_layers == self.arch.q_scale_layers:
            f *= math.sqrt(self.hp.head_dim) / math.sqrt(self.hp.dim // self.hp.n_heads)
        if self.arch.granite and self._granite_scale("attention.scale"):   # llama.cpp's kq_scale
            f *= self._granite_scale("attention.scale") * math.sqrt(self.hp.head_dim)
        return f

    def _rope_scaling(self) -> tuple[str, float, float]:
        """(kind, factor, mscale) as llama.cpp derives them (module doc, llama-context.cpp): kind of
        none / linear / yarn / longrope, the scaling factor (1: none) and the factor ggml multiplies
        each rotated q and k value by (rope.scaling.attn_factor, with YaRN's magnitude terms), in
        float32 as llama.cpp computes it."""
        m, p = self.meta, self.prefix
        kind = m.str(f"{p}rope.scaling.type", "linear")     # llama.cpp's default when absent
        if kind not in self.arch.rope_types:
            raise UnsupportedError(f"{self.path}: rope scaling {kind!r} ({p}rope.scaling.type) is not "
                                   f"supported on {self.arch.title}; the converter implements "
                                   f"{', '.join(self.arch.rope_types)}")
        key = f"{p}rope.scaling.factor" if m.has(f"{p}rope.scaling.factor") else f"{p}rope.scale_linear"
        factor = m.float(key, 0.0)
        if not math.isfinite(factor) or factor < 0:
            raise FormatError(f"{self.path}: {key} = {factor} must be a finite number >= 0")
        attn = m.float(f"{p}rope.scaling.attn_factor", 1.0)
        if not (math.isfinite(attn) and attn > 0):
            raise FormatError(f"{self.path}: {p}rope.scaling.attn_factor = {attn} must be finite and > 0")
        if kind == "none" or factor == 0.0:
            factor = 1.0
        f32 = np.float32
        mscale = f32(1.0)
        if kind == "yarn":   # ext_factor 1: llama_context's yarn_attn_factor, times ggml's rope_yarn term
            fs = f32(1.0) / f32(factor)
            fac = f32(1.0) / fs

            def get_mscale(scale, ms):
                return f32(1.0) if scale <= 1 else f32(f32(0.1) * f32(ms) * np.log(scale) + f32(1.0))
            log_mul = f32(m.float(f"{p}rope.scaling.yarn_log_multiplier", 0.0))
            mscale = get_mscale(fac, 1.0) / get_mscale(fac, log_mul) if log_mul != 0 else get_mscale(fac, 1.0)
            mscale = f32(mscale * (f32(1.0) / (f32(1.0) + f32(0.1) * np.log(fac))))
            mscale = f32(f32(mscale * f32(attn)) * (f32(1.0) + f32(0.1) * np.log(f32(1.0) / fs)))
        else:
            mscale = f32(attn)
        return kind, factor, float(mscale)

    def yarn_divisors(self) -> torch.Tensor:
        """[n_rot/2] YaRN's per-pair divisors of the frequencies: ggml's rope_yarn mixes the
        interpolated angle (times 1 / factor) and the extrapolated one by a ramp over the pairs
        between the correction dims (ggml_rope_yarn_corr_dims, from the original context and the
        beta keys), theta = theta_extrap (fs (1 - mix) + mix); in float32 as ggml."""
        m, p, hp = self.meta, self.prefix, self.hp
        f32 = np.float32
        n_dims, base = hp.rot_dims, f32(hp.rope_base)
        beta_fast = f32(m.float(f"{p}rope.scaling.yarn_beta_fast", 32.0))
        beta_slow = f32(m.float(f"{p}rope.scaling.yarn_beta_slow", 1.0))
        n_orig = f32(self.orig_ctx(hp))

        def corr_dim(n_rot):
            return f32(f32(n_dims) * np.log(n_orig / f32(n_rot * f32(2) * f32(math.pi))) / f32(f32(2) * np.log(base)))
        low = max(f32(0), np.floor(corr_dim(beta_fast)))
        high = min(f32(n_dims - 1), np.ceil(corr_dim(beta_slow)))
        fs = f32(1.0) / f32(self.rope_scale)
        i = np.arange(n_dims // 2)
        y = (i.astype(np.float32) - low) / max(f32(0.001), f32(high - low))
        mix = (f32(1) - np.minimum(f32(1), np.maximum(f32(0), y))).astype(np.float32)
        return torch.from_numpy((f32(1) / (fs * (f32(1) - mix) + mix)).astype(np.float32))

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        q, kv = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim
        shapes = {"token_embd.weight": (hp.n_vocab, hp.dim), "output_norm.weight": (hp.dim,)}
        if not hp.tied:
            shapes["output.weight"] = (hp.n_vocab, hp.dim)
        if F.T_ROPE_FREQS in self.tensors and self.arch.rope_freqs:
            shapes[F.T_ROPE_FREQS] = (hp.rot_dims // 2,)
        if self.arch.longrope and (F.T_ROPE_LONG in self.tensors or F.T_ROPE_SHORT in self.tensors):
            shapes[F.T_ROPE_LONG] = shapes[F.T_ROPE_SHORT] = (hp.rot_dims // 2,)   # both, or the file is malformed
        attn = {"attn_qkv": (q + 2 * kv, hp.dim)} if self.fused_qkv else \
            {"attn_q": (q, hp.dim), "attn_k": (kv, hp.dim), "attn_v": (kv, hp.dim)}
        ffn = {"ffn_up": (2 * hp.ffn_dim, hp.dim)} if self.arch.up_gate else \
            {"ffn_gate": (hp.ffn_dim, hp.dim), "ffn_up": (hp.ffn_dim, hp.dim)}
        per_layer = {"attn_norm": (hp.dim,), **attn, "attn_output": (hp.dim, q), "ffn_norm": (hp.dim,),
                     **ffn, "ffn_down": (hp.dim, hp.ffn_dim)}
        if self.arch.qk_norm:
            per_layer.update(attn_q_norm=(hp.head_dim,), attn_k_norm=(hp.head_dim,))
        if self.arch.post_norms:
            per_layer.update(post_attention_norm=(hp.dim,), post_ffw_norm=(hp.dim,))
        bias = {"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,), "attn_output.bias": (hp.dim,),
                "ffn_down.bias": (hp.dim,)}
        for l in range(hp.n_layers):
            for n, s in per_layer.items():
                shapes[f"blk.{l}.{n}.weight"] = s
            for n in self.arch.biases:    # optional, layer by layer
                if f"blk.{l}.{n}" in self.tensors:
                    shapes[f"blk.{l}.{n}"] = bias[n]
        return shapes

    def _validate(self) -> None:
        extra = sorted(set(self.tensors) - set(self._expected_shapes()))
        for kind, hits in (("bias tensors", [n for n in extra if n.endswith(".bias")]),
                           ("mixture-of-experts tensors", [n for n in extra if _MOE.match(n)]),
                           ("LongRoPE factors", [n for n in extra if n.startswith("rope_factors_")
                                                 and not self.arch.longrope])):
            if hits:
                raise UnsupportedError(f"{self.path}: {kind} are not supported ({', '.join(hits[:3])})")
        fused = [n for n in self.tensors if n.endswith(".attn_qkv.weight")]
        split = [n for n in self.tensors if re.fullmatch(r"blk\.\d+\.attn_[qkv]\.weight", n)]
        if fused and split:
            raise FormatError(f"{self.path}: both a fused attn_qkv and separate q/k/v weights "
                              f"({fused[0]}, {split[0]})")
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
        if extra:
            raise UnsupportedError(f"{self.path}: unexpected tensors for a {self.arch.title} model: "
                                   f"{', '.join(extra[:5])}")

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

    def has_rope_freqs(self) -> bool:
        """Whether the model's RoPE needs per-pair divisors (rope_freqs.weight, a linear or YaRN
        factor), LongRoPE aside (longrope())."""
        return F.T_ROPE_FREQS in self.tensors or self.rope_scale != 1.0

    def longrope(self) -> bool:
        """Whether the file has LongRoPE's long and short factors (Phi-3), chosen by the context."""
        return self.arch.longrope and F.T_ROPE_LONG in self.tensors

    def rope_freqs(self, n_ctx: int | None = None, name: str | None = None) -> torch.Tensor | None:
        """[n_rot / 2] float32 divisors of the RoPE frequencies: the file's factors (rope_freqs, or
        LongRoPE's long ones for a context n_ctx beyond the original one and its short ones otherwise,
        as llama.cpp chooses; name: that set) times the scaling's per-pair divisors (linear: the
        factor; YaRN: yarn_divisors()); None when there are none."""
        if self.longrope():
            name = name or (F.T_ROPE_LONG if n_ctx is not None and n_ctx > self.hp.rope_orig_ctx else F.T_ROPE_SHORT)
        elif not self.has_rope_freqs():
            return None
        else:
            name = F.T_ROPE_FREQS if F.T_ROPE_FREQS in self.tensors else None
        base = self.weight(name).reshape(-1) if name else torch.ones(self.hp.rot_dims // 2)
        if self.rope_kind == "yarn":
            return (base.double() * self.yarn_divisors().double()).float()
        return (base.double() * self.rope_scale).float()

    def layer(self, l: int) -> dict[str, torch.Tensor]:
        """Layer l's weights by llama.cpp's names (LAYER_TENSORS; "attn_q.bias" etc. for the file's
        biases, zeros in a layer without one; "attn_q_norm" / "attn_k_norm" [hd] for qwen3); a fused
        attn_qkv split into its q, k, v rows. NEOX files: the rows of q and k (their biases and norm
        scales) permuted within each head to the runtime's RoPE pairing (module doc). attn_factor^2
        (ggml scales the rotated q and k each by it) scales q's norm scale where there is one (a
        scale before the norm would vanish in it), else attn_q and its bias."""
        hp = self.hp
        q, kv = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim
        names = [n for n in LAYER_TENSORS if not (self.fused_qkv and n in ("attn_q", "attn_k", "attn_v"))
                 and not (self.arch.up_gate and n == "ffn_gate")]
        if self.arch.qk_norm:
            names += ["attn_q_norm", "attn_k_norm"]
        if self.arch.post_norms:
            names += ["post_attention_norm", "post_ffw_norm"]
        w = {n: self.weight(f"blk.{l}.{n}.weight") for n in names}
        if self.fused_qkv:
            w["attn_q"], w["attn_k"], w["attn_v"] = self.weight(f"blk.{l}.attn_qkv.weight").split([q, kv, kv])
        if self.arch.up_gate:   # ggml_swiglu: silu of the first half of the up product times the second
            w["ffn_gate"], w["ffn_up"] = w["ffn_up"].split([hp.ffn_dim, hp.ffn_dim])
        size = {"attn_q.bias": q, "attn_k.bias": kv, "attn_v.bias": kv, "attn_output.bias": hp.dim,
                "ffn_down.bias": hp.dim}
        for b in self.biases:
            name = f"blk.{l}.{b}"
            w[b] = self.weight(name).reshape(-1) if name in self.tensors else torch.zeros(size[b])
        if self.arch.neox:
            perm = neox_to_pairs(hp.head_dim, hp.rot_dims)
            for n in ("attn_q", "attn_k", "attn_q.bias", "attn_k.bias"):
                if n in w:
                    heads = w[n].shape[0] // hp.head_dim
                    w[n] = w[n].reshape(heads, hp.head_dim, -1)[:, perm].reshape(w[n].shape).contiguous()
            for n in ("attn_q_norm", "attn_k_norm"):
                if n in w:
                    w[n] = w[n][perm].contiguous()
        q_scale = self.q_scale
        if self.mscale != 1.0 and hp.rope(l):
            # ggml scales the rotated values of q and k each by mscale: the scores by its square, or, with
            # a partial rotary, the rotated rows of q and k by it (their other rows are not rotated)
            if hp.rot_dims == hp.head_dim:
                q_scale *= self.mscale ** 2
            elif self.arch.qk_norm:
                raise UnsupportedError(f"{self.path}: a RoPE attention factor with a partial rotary and q/k norms "
                                       "is not supported")
            else:
                rot = torch.ones(hp.head_dim, dtype=torch.float64)
                rot[:hp.rot_dims] = self.mscale
                for n in ("attn_q", "attn_k", "attn_q.bias", "attn_k.bias"):
                    if n in w:
                        heads = w[n].shape[0] // hp.head_dim
                        w[n] = (w[n].reshape(heads, hp.head_dim, -1).double() * rot[None, :, None]).float() \
                            .reshape(w[n].shape)
        if q_scale != 1.0:
            for n in (("attn_q_norm",) if self.arch.qk_norm else ("attn_q", "attn_q.bias")):
                if n in w:
                    w[n] = w[n] * q_scale
        rs = self._granite_scale("residual_scale") if self.arch.granite else 0.0
        if rs:   # llama.cpp scales each block's output (bias included) before the residual add
            for n in ("attn_output", "attn_output.bias", "ffn_down", "ffn_down.bias"):
                if n in w:
                    w[n] = w[n] * rs
        return w

    def vectors(self) -> tuple[str, ...]:
        """The per-layer vectors of the LaRoSA file (format.LAYER_VECTORS) this model needs."""
        have = {"attn_qkv.bias": any(b in self.biases for b in ("attn_q.bias", "attn_k.bias", "attn_v.bias")),
                "attn_output.bias": "attn_output.bias" in self.biases, "ffn_down.bias": "ffn_down.bias" in self.biases,
                "attn_q_norm.weight": self.arch.qk_norm, "attn_k_norm.weight": self.arch.qk_norm,
                "post_attention_norm.weight": self.arch.post_norms, "post_ffw_norm.weight": self.arch.post_norms,
                "attn_norm.weight": self.arch.norms_apart, "ffn_norm.weight": self.arch.norms_apart}
        return tuple(k for k in F.LAYER_VECTORS if have[k])

    def tokenizer_fields(self) -> list[str]:
        return [k for k in self.reader.fields if k.startswith("tokenizer.")]

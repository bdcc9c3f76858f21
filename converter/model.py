"""A LLaMA forward pass (with what Qwen2 / Qwen3 / Gemma 2 and 3 / SmolLM3 / Phi-3 / Mistral 3 add:
biases, q/k norms, post norms, sliding windows, GeGLU, soft-capping, layers without RoPE, partial
rotary, an attention temperature; Layer and HParams) in torch:
the reference for calibration and for the C runtime.

One function serves both the original model and the fused LaRoSA model; they differ only in
their weights (see FORMAT.md). Conventions: activations are row vectors, every linear is
stored input-major, y = x @ W with W [in, out]. With `ks` given, Top-K keeps the k largest
|x| of each block input per token (ties: the lower index wins), as the C runtime does.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as Fn

from larosa.runtime.format import BLOCK_INPUTS, HParams


@dataclass
class Layer:
    wqkv: torch.Tensor                     # [d, (nh + 2 nkv) hd]
    wo: torch.Tensor                       # [nh hd, d]
    wgu: torch.Tensor                      # [d, 2 ff]  gate columns, then up
    wdown: torch.Tensor                    # [ff, d]
    attn_norm: torch.Tensor | None = None  # [d] RMSNorm scale; None once folded into wqkv (fuse.py)
    ffn_norm: torch.Tensor | None = None   # [d]
    adapter: torch.Tensor | None = None    # [d, d] change of basis of the residual: r <- r @ adapter
    # what an architecture adds to llama's layer (None: absent; FORMAT.md "Biases and q/k norms")
    bqkv: torch.Tensor | None = None       # [(nh + 2 nkv) hd] added to q, k, v (Qwen2, llama biases)
    bo: torch.Tensor | None = None         # [d] added to the o product (in the layer's basis)
    bdown: torch.Tensor | None = None      # [d] added to the down product
    q_norm: torch.Tensor | None = None     # [hd] RMSNorm scale over each head of q, before RoPE (Qwen3)
    k_norm: torch.Tensor | None = None     # [hd] the same for k
    post_attn_norm: torch.Tensor | None = None  # [d] RMSNorm scale of the o output before the residual add (Gemma)
    post_ffn_norm: torch.Tensor | None = None   # [d] the same for the down output
    act_q8: frozenset = frozenset()        # names of the weights above whose inputs the runtime
                                           # quantizes to 8 bits (Q8_0 / Q4_0 weights: quantize_act)


@dataclass
class Weights:
    hp: HParams
    embd: torch.Tensor                       # [vocab, d] rows looked up per token
    head: torch.Tensor                       # [vocab, d] logits = h @ head^T
    layers: list[Layer]
    out_norm: torch.Tensor | None = None     # [d]
    out_adapter: torch.Tensor | None = None  # [d, d]
    rope_freqs: torch.Tensor | None = None   # [hd/2] frequency divisors (llama3 style)
    act_q8: frozenset = frozenset()          # "out_adapter", "head": inputs quantized to 8 bits
    kv_types: tuple = ("f32", "f32")         # the runtime's KV cache (type_k, type_v): kv_round


class Budget:
    """Budget mode (c_kernels/forward.c budget_k): a threshold's count c scaled to c (1 - D / R),
    D the token's cost above plan so far, R the planned cost from here on; the last selection
    takes what remains. plan[b][l] rows, cost[b][l] bytes per row (rounded to float32 as in C)."""

    def __init__(self, plan: dict, cost: dict):
        self.n_layers = len(plan["attn_in"])
        self.plan = {b: [float(torch.tensor(v, dtype=torch.float32)) for v in plan[b]] for b in BLOCK_INPUTS}
        self.cost = {b: [float(torch.tensor(v, dtype=torch.float32)) for v in cost[b]] for b in BLOCK_INPUTS}
        self.remain, rest = {b: [0.0] * self.n_layers for b in BLOCK_INPUTS}, 0.0
        for l in reversed(range(self.n_layers)):
            for b in reversed(BLOCK_INPUTS):             # a layer selects in BLOCK_INPUTS order
                rest += self.plan[b][l] * self.cost[b][l]
                self.remain[b][l] = rest
        self.over = None                                  # [B, T] float64, per token

    def k(self, count: torch.Tensor, l: int, b: str, n: int) -> torch.Tensor:
        """count [B, T] keys above the threshold -> k [B, T] inputs to keep."""
        if self.over is None or (l == 0 and b == "attn_in"):
            self.over = torch.zeros(count.shape, dtype=torch.float64)
        plan, cost = self.plan[b][l], self.cost[b][l]
        if l == self.n_layers - 1 and b == "mlp_out":
            want = plan - self.over / cost
        else:
            want = count.double() * (1.0 - self.over / self.remain[b][l])
        k = torch.where(want < 1, 1.0, torch.where(want > n, float(n), want.round())).long()
        self.over = self.over + (k.double() - plan) * cost
        return k


def rank_mask(key: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """True at the k[..] largest keys of each row (k varies per row; ties: the lower index)."""
    idx = torch.argsort(-key, dim=-1, stable=True)
    rank = torch.empty_like(idx).scatter_(-1, idx, torch.arange(key.shape[-1]).expand_as(idx))
    return rank < k[..., None]


@dataclass
class TopK:
    """The selection of each block input (FORMAT.md, format.BLOCK_INPUTS): k per layer for Top-K.

    score[b][l], a [n] weight, ranks inputs by |x_i| * score_i instead of |x_i|; threshold[b][l] >= 0
    keeps the inputs whose key exceeds it instead of the k largest; gate_key ranks the down input by
    |silu(gate_j)| (CATS). Test hooks: forced[b][l], a 0/1 mask [B, T, n], replaces the selection (to
    replay the C runtime's decisions); seen[b][l] receives each block input before masking, and
    keys[b][l] (when a dict) its ranking key."""
    attn_in: list[int]
    attn_out: list[int]
    mlp_in: list[int]
    mlp_out: list[int]
    score: dict | None = None
    threshold: dict | None = None
    gate_key: bool = False
    forced: dict | None = None
    seen: dict | None = None
    keys: dict | None = None
    budget: Budget | None = None


def quantize_act(x: torch.Tensor) -> torch.Tensor:
    """x [..., n] (n a multiple of 32) as the runtime's integer kernels take it (c_kernels/qmatvec.c,
    llama.cpp's Q8_0 activations): per block of 32 along the last dim, dx = max |x| / 127 and
    q = round-half-even(x * (1 / dx)), all in float32 (zeros, such as the inputs a selection drops,
    do not change the max); returns q dx."""
    shape = x.shape
    g = x.float().reshape(*shape[:-1], shape[-1] // 32, 32)
    dx = g.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(dx > 0, 1 / dx, torch.zeros_like(dx))
    inv = torch.where(torch.isfinite(inv), inv, torch.zeros_like(inv))   # 1 / dx overflows: codes 0
    return (torch.round(g * inv).clamp(-127, 127) * dx).reshape(shape)


def kv_round(x: torch.Tensor, kv_type: str) -> torch.Tensor:
    """x [..., hd] as the runtime's KV cache stores it (c_kernels/kernels.c lr_kv_quantize): "f32"
    as is, "f16" rounded to nearest even, "q8_0" ggml's blocks of 32 along hd (d = max |x| / 127
    stored as f16, codes round(x / d) half away from zero); the Q8_0 keys' scores also take q so."""
    if kv_type == "f32":
        return x
    if kv_type == "f16":
        return x.half().float()
    shape = x.shape
    g = x.float().reshape(*shape[:-1], shape[-1] // 32, 32)
    d = g.abs().amax(-1, keepdim=True) / 127
    v = (g * torch.where(d > 0, 1 / d, torch.zeros_like(d))).double()
    codes = (v.sign() * (v.abs() + 0.5).floor()).clamp(-127, 127).float()
    return (codes * d.half().float()).reshape(shape)


def matmul(x: torch.Tensor, w: torch.Tensor, q8: bool) -> torch.Tensor:
    """x @ w, with x quantized first when the runtime does (q8)."""
    return (quantize_act(x) if q8 else x) @ w


def rmsnorm(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x if w is None else x * w


def topk_mask(x: torch.Tensor, k: int, score: torch.Tensor | None = None) -> torch.Tensor:
    """True at the k largest |x| (times score, if given) along the last dim; ties keep the lower
    index."""
    n = x.shape[-1]
    if k >= n:
        return torch.ones_like(x, dtype=torch.bool)
    key = x.abs() if score is None else x.abs() * score
    idx = torch.argsort(-key, dim=-1, stable=True)[..., :k]
    return torch.zeros_like(x, dtype=torch.bool).scatter_(-1, idx, True)


def topk_keep(x: torch.Tensor, k: int, score: torch.Tensor | None = None) -> torch.Tensor:
    """Zero all but the k largest |x| (times score) along the last dim."""
    return x if k >= x.shape[-1] else x * topk_mask(x, k, score)


def rope_tables(hp: HParams, n_pos: int, rope_freqs: torch.Tensor | None, offset: int = 0,
                base: float | None = None):
    """cos/sin [T, n_rot/2] for llama's pairing: (x[2i], x[2i+1]) rotates by pos * base^(-2i/n_rot)
    / rope_freqs[i] (base: hp.rope_base unless given; n_rot: hp.rot_dims, the head size unless
    the rotary is partial)."""
    n_rot = hp.rot_dims
    i = torch.arange(0, n_rot, 2, dtype=torch.float64)
    inv_freq = (hp.rope_base if base is None else base) ** (-i / n_rot)
    if rope_freqs is not None:
        inv_freq = inv_freq / rope_freqs.double()
    ang = torch.arange(offset, offset + n_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return ang.cos().float(), ang.sin().float()


def rope_sets(hp: HParams, n_pos: int, rope_freqs: torch.Tensor | None) -> dict:
    """{hp.layer_rope(l): (cos, sin)} for every RoPE table the layers use (their base, and whether
    they divide by rope_freqs)."""
    return {(b, div): rope_tables(hp, n_pos, rope_freqs if div else None, base=b)
            for b, div in {hp.layer_rope(l) for l in range(hp.n_layers)}}


@functools.cache
def _gelu_table() -> torch.Tensor:
    """[65536] float32: GELU of every half-precision value, as ggml builds its table (and the C
    runtime, c_kernels/forward.c gelu_build): 0.5 h (1 + tanhf(sqrt(2/pi) h (1 + 0.044715 h h)))
    in float32 operations in that order, with libm's tanhf, rounded to half."""
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.tanhf.restype, libm.tanhf.argtypes = ctypes.c_float, [ctypes.c_float]
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    f32 = np.float32
    with np.errstate(all="ignore"):   # the inf / NaN entries are never looked up
        inner = f32(0.79788456080286535587989211986876) * h * (f32(1.0) + f32(0.044715) * h * h)
        t = np.array([libm.tanhf(v) for v in inner.tolist()], dtype=np.float32)
        y = f32(0.5) * h * (f32(1.0) + t)
        return torch.from_numpy(y.astype(np.float16).astype(np.float32))


def gelu_tanh_ggml(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh form 0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))), as ggml's CPU backend
    computes it (ggml-cpu vec.h, GGML_GELU_FP16, used by llama.cpp's GeGLU): looked up by x rounded
    to half in a table of half-precision results (_gelu_table); 0 for x <= -10, x for x >= 10.
    Exact GELU differs from llama.cpp's logits by ~1e-4 relative on the synthetic Gemma test, this
    by ~2e-5."""
    idx = x.float().half().view(torch.int16).long() & 0xFFFF
    y = _gelu_table()[idx]
    return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x.float(), y))


ACTIVATION = {"silu": Fn.silu, "gelu_tanh": gelu_tanh_ggml}


def attention(q, k, v, window: int, softcap: float) -> torch.Tensor:
    """Causal attention of q [B, H, T, hd] over k, v [B, Hkv, T, hd] (grouped heads), scores
    q.k / sqrt(hd), soft-capped c tanh(s / c) when softcap > 0, each position seeing the last
    `window` positions (itself included; 0: all), as llama.cpp masks a sliding-window layer
    (llama_hparams::is_masked_swa: key p0 hidden from query p1 when p1 - p0 >= n_swa)."""
    if not window and not softcap:
        return Fn.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = (q @ k.transpose(-1, -2)) * (1.0 / q.shape[-1] ** 0.5)
    if softcap:
        s = softcap * torch.tanh(s * (1.0 / softcap))
    T = q.shape[2]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    seen = (j <= i) & ((i - j < window) if window else True)
    return s.masked_fill(~seen, float("-inf")).softmax(-1) @ v


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [B, T, H, hd]; cos/sin [T, n_rot/2]: the first n_rot values of each head rotate, the rest pass
    n_rot = 2 * cos.shape[-1]
    r = x[..., :n_rot]
    x0, x1 = r[..., 0::2], r[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    y = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    return y if n_rot == x.shape[-1] else torch.cat((y, x[..., n_rot:]), dim=-1)


def add_bias(y: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return y if b is None else y + b


def layer_forward(lw: Layer, r: torch.Tensor, hp: HParams, cos, sin, ks: TopK | None = None,
                  l: int = 0, kv_types: tuple = ("f32", "f32")) -> torch.Tensor:
    """One decoder layer l on the residual r [B, T, d] (positions 0..T-1, causal; cos, sin: the
    tables of the layer's RoPE base, rope_sets); keys and values rounded as a KV cache of kv_types
    stores them. A post norm (Gemma) normalizes a block's output before the residual add."""
    act = ACTIVATION[hp.act]
    def keep(x, which, gate=None):
        if ks is None:
            return x
        if ks.seen is not None:
            ks.seen.setdefault(which, {})[l] = x
        score = None if ks.score is None else ks.score.get(which, {}).get(l)
        key = act(gate) if gate is not None and ks.gate_key else x
        if ks.keys is not None:
            ks.keys.setdefault(which, {})[l] = key.abs() if score is None else key.abs() * score
        if ks.forced is not None:
            return x * ks.forced[which][l]
        thr = None if ks.threshold is None else ks.threshold[which][l]
        if thr is not None and thr >= 0:
            k = key.abs() if score is None else key.abs() * score
            if ks.budget is not None:
                return x * rank_mask(k, ks.budget.k((k > thr).sum(-1), l, which, x.shape[-1]))
            return x * (k > thr)
        return x * topk_mask(key, getattr(ks, which)[l], score)

    B, T, _ = r.shape
    nh, nkv, hd = hp.n_heads, hp.n_kv_heads, hp.head_dim
    q8 = lw.act_q8
    if lw.adapter is not None:
        r = matmul(r, lw.adapter, "adapter" in q8)
    h = keep(rmsnorm(r, lw.attn_norm, hp.norm_eps), "attn_in")
    qkv = add_bias(matmul(h, lw.wqkv, "wqkv" in q8), lw.bqkv)
    q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    q, k = q.view(B, T, nh, hd), k.view(B, T, nkv, hd)
    if lw.q_norm is not None:
        q = rmsnorm(q, lw.q_norm, hp.norm_eps)
    if lw.k_norm is not None:
        k = rmsnorm(k, lw.k_norm, hp.norm_eps)
    if hp.rope(l):
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if hp.attn_temp_scale:   # Mistral 3: q times the temperature of its position (HParams.attn_temperature)
        q = q * torch.from_numpy(hp.attn_temperature(np.arange(T)))[None, :, None, None]
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    v = v.view(B, T, nkv, hd).transpose(1, 2)
    if kv_types[0] == "q8_0":
        q = kv_round(q, "q8_0")
    k, v = kv_round(k, kv_types[0]), kv_round(v, kv_types[1])
    a = attention(q, k, v, hp.window(l), hp.attn_softcap)
    a = keep(a.transpose(1, 2).reshape(B, T, nh * hd), "attn_out")
    r = r + post_norm(add_bias(matmul(a, lw.wo, "wo" in q8), lw.bo), lw.post_attn_norm, hp.norm_eps)
    h = keep(rmsnorm(r, lw.ffn_norm, hp.norm_eps), "mlp_in")
    gate, up = matmul(h, lw.wgu, "wgu" in q8).chunk(2, dim=-1)
    m = keep(act(gate) * up, "mlp_out", gate)
    return r + post_norm(add_bias(matmul(m, lw.wdown, "wdown" in q8), lw.bdown), lw.post_ffn_norm, hp.norm_eps)


def post_norm(y: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    return y if w is None else rmsnorm(y, w, eps)


def embed(w: Weights, tokens: torch.Tensor) -> torch.Tensor:
    """The residual entering layer 0: the embedding rows, times hp.embd_scale (Gemma: sqrt(d),
    applied to the looked-up row only, so a tied head reads the stored rows)."""
    r = w.embd[tokens]
    return r if w.hp.embd_scale == 1.0 else r * torch.tensor(w.hp.embd_scale, dtype=torch.float32)


def softcap(z: torch.Tensor, c: float) -> torch.Tensor:
    """c tanh(z / c) (Gemma 2's final logits; ggml scales by 1 / c, tanh, scales by c); c = 0: z."""
    return z if not c else torch.tanh(z * torch.tensor(1.0 / c, dtype=torch.float32)) * c


def head_forward(w: Weights, r: torch.Tensor) -> torch.Tensor:
    if w.out_adapter is not None:
        r = matmul(r, w.out_adapter, "out_adapter" in w.act_q8)
    return softcap(matmul(rmsnorm(r, w.out_norm, w.hp.norm_eps), w.head.T, "head" in w.act_q8), w.hp.final_softcap)


@torch.inference_mode()
def forward(w: Weights, tokens: torch.Tensor, ks: TopK | None = None) -> torch.Tensor:
    """tokens [B, T] int -> logits [B, T, vocab] (float32)."""
    ropes = rope_sets(w.hp, tokens.shape[1], w.rope_freqs)
    r = embed(w, tokens)
    for l, lw in enumerate(w.layers):
        r = layer_forward(lw, r, w.hp, *ropes[w.hp.layer_rope(l)], ks, l, w.kv_types)
    return head_forward(w, r)

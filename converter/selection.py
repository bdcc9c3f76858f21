"""What each sparsity method stores: the basis of each layer, the ranking scores, the coefficients
and the threshold tables (FORMAT.md, "Selection"). Pass 1 of the converter feeds `LayerStats` with
each layer's calibration activations; `decide` turns them into the layer's plan.

Methods (all run by the same kernels; a threshold also yields an index list):
  auto    the default: budget's keys and tables, then one of three selections of them: budget, Top-K
          of those keys (wina) or Top-K of |x| alone (the scores unused: topk's key where the norm
          scales are applied at run time), budget unless another is clearly better on held-out
          calibration text (convert.auto_choice; RESULTS.md: budget on SmolLM2, Top-K of |x| on
          Gemma 3); all read fixed bytes per token
  budget  the default: no rotation, thresholds on |x| * ||row of W||, 0.8 / 1.2, each token held to
          the planned bytes: a threshold's count is scaled by how far the token is above or below its
          plan so far (RESULTS.md: better than every fixed-K method at equal bytes on SmolLM2)
  wina    no rotation, Top-K of |x| * ||row of W||, coefficients 0.8 / 1.2 (the best fixed-K method)
  larosa  the paper: PCA basis per layer, Top-K of |z|, coefficients 0.8 / 1.2
  topk    no rotation, Top-K of |input| (the RMSNorm scale is kept in the ranking through a score)
  teal    no rotation, static thresholds on |input| from the calibration distribution (TEAL)
  cats    no rotation, attention dense, the down input kept where |silu(gate)| exceeds a threshold
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from larosa.runtime import format as F
from larosa.runtime.errors import LarosaError

from .model import ACTIVATION, Layer, post_norm, rmsnorm, topk_mask

# threshold tables are stored at these sparsity levels; the runtime interpolates between them
GRID = [round(0.05 * i, 2) for i in range(1, 20)]
MAX_QUANTILE_SAMPLES = 1 << 20


@dataclass(frozen=True)
class Method:
    rotation: str                 # pca | identity | auto
    score: str                    # none | norm (|g| on the normed inputs) | wina (row norms of W)
    coefs: dict[str, float]
    thresholds: tuple[str, ...]   # block inputs selected by threshold instead of Top-K
    mlp_out_key: str = "act"      # act | gate (CATS)
    budget: bool = False          # the runtime holds the thresholds to a per-token byte budget


METHODS = {
    # auto: budget's tables; the converter then scores budget, Top-K of the same keys and Top-K of |x|
    # on held-out text and records the file's default (convert.choose_selection)
    "auto": Method("identity", "wina", dict(F.PAPER_COEFS), F.BLOCK_INPUTS, budget=True),
    "budget": Method("identity", "wina", dict(F.PAPER_COEFS), F.BLOCK_INPUTS, budget=True),
    "wina": Method("identity", "wina", dict(F.PAPER_COEFS), ()),
    "larosa": Method("pca", "none", dict(F.PAPER_COEFS), ()),
    "topk": Method("identity", "norm", dict.fromkeys(F.BLOCK_INPUTS, 1.0), ()),
    "teal": Method("identity", "norm", dict.fromkeys(F.BLOCK_INPUTS, 1.0), F.BLOCK_INPUTS),
    "cats": Method("identity", "none", {"attn_in": 0.0, "attn_out": 0.0, "mlp_in": 0.0, "mlp_out": 1.0},
                   ("mlp_out",), "gate"),
}


def method(name: str, rotation: str | None = None, score: str | None = None,
           coefs: dict[str, float] | None = None) -> Method:
    """A method, with its defaults overridden (rotation, score, coefficients)."""
    if name not in METHODS:
        raise LarosaError(f"--method must be one of {', '.join(METHODS)}, got {name!r}")
    m = METHODS[name]
    rotation = rotation or m.rotation
    if score is None and m.score == "norm" and rotation == "pca":
        score = "none"   # |g u| ranks identity-basis inputs only; rotated thresholds rank |z| (paper ablation)
    score = score or m.score
    if rotation not in ("pca", "identity", "auto"):
        raise LarosaError(f"--rotation must be pca, identity or auto, got {rotation!r}")
    if score not in ("none", "norm", "wina"):
        raise LarosaError(f"--score must be none, norm or wina, got {score!r}")
    if score == "norm" and rotation == "pca":
        raise LarosaError("--score norm ranks by |g u| and needs an identity basis (--rotation identity or auto)")
    c = dict(m.coefs) if coefs is None else coefs
    if set(c) != set(F.BLOCK_INPUTS) or not all(0 <= v <= 10 for v in c.values()):
        raise LarosaError("coefficients: four values in [0, 10], one per block input")
    return Method(rotation, score, c, m.thresholds, m.mlp_out_key, m.budget)


@dataclass
class LayerPlan:
    Q: torch.Tensor | None                               # float64 [d, d] or None (identity)
    score: str = "none"                                  # none | norm | wina, for this layer
    thresholds: dict[str, list[float]] = field(default_factory=dict)   # block input -> one per GRID level


SCORED = {"none": (), "norm": ("attn_in", "mlp_in"), "wina": F.BLOCK_INPUTS}   # block inputs with a score


def layer_score(m: Method, rotated: bool, norms_apart: bool = False) -> str:
    """The score of a layer: the method's; an identity layer of an automatic plan whose method has
    none ranks by |g u| (norm), as plain Top-K does. With the norm scales applied at run time
    (norms_apart) the input is g u already: "norm" needs no score."""
    score = "norm" if not rotated and m.rotation == "auto" and m.score == "none" else m.score
    return "none" if score == "norm" and norms_apart else score


def scores_of(mode: str, fused: Layer, src: Layer) -> dict[str, torch.Tensor]:
    """Ranking scores of a fused layer: key_i = |x_i| * score_i."""
    if mode == "norm":     # identity basis: |u_i| * |g_i| = |input of the original linear|
        return {"attn_in": src.attn_norm.abs(), "mlp_in": src.ffn_norm.abs()}
    if mode == "wina":     # |x_i| * ||row i of the fused weight||: the size of input i's contribution
        # A post norm (Gemma) writes RMSNorm(x W) * g to the residual: input i contributes
        # x_i W[i, :] * g / rms(x W), and rms(x W) is the same for every input of the token, so
        # the rows are measured with g on their output channels.
        def out_rows(w, g):
            return (w if g is None else w * g[None, :]).norm(dim=1)
        return {"attn_in": fused.wqkv.norm(dim=1), "attn_out": out_rows(fused.wo, fused.post_attn_norm),
                "mlp_in": fused.wgu.norm(dim=1), "mlp_out": out_rows(fused.wdown, fused.post_ffn_norm)}
    return {}


def block_inputs(src: Layer, x: torch.Tensor, hp: F.HParams, Q: torch.Tensor | None,
                 attn: torch.Tensor, gate: torch.Tensor, keep_norms: bool = False) -> dict[str, torch.Tensor]:
    """The four block inputs as the runtime sees them, in layer l's basis, for the calibration
    residuals x [N, d]: attn is the attention output [N, nh hd], gate the MLP gate [N, ff]
    (both from the dense original layer); keep_norms: the normed inputs carry their scales."""
    Qf = None if Q is None else Q.float()
    eps = hp.norm_eps
    u = rmsnorm(x, None, eps)
    u2 = rmsnorm(x + post_norm(attn @ src.wo + (0 if src.bo is None else src.bo), src.post_attn_norm, eps), None, eps)
    up = (u2 * src.ffn_norm) @ src.wgu[:, hp.ffn_dim:]
    if keep_norms:
        u, u2 = u * src.attn_norm, u2 * src.ffn_norm
    return {"attn_in": u if Qf is None else u @ Qf, "attn_out": attn,
            "mlp_in": u2 if Qf is None else u2 @ Qf, "mlp_out": ACTIVATION[hp.act](gate) * up}


def threshold_table(keys: torch.Tensor, seed: int) -> list[float]:
    """Thresholds at the GRID levels: level s keeps the keys above the s-quantile."""
    flat = keys.reshape(-1).float().numpy()
    if flat.size > MAX_QUANTILE_SAMPLES:
        flat = np.random.default_rng(seed).choice(flat, MAX_QUANTILE_SAMPLES, replace=False)
    return [float(v) for v in np.quantile(flat, GRID)]


def output_error(v: torch.Tensor, k: int, score: torch.Tensor | None, W: torch.Tensor) -> float:
    """||(v - S_k(v)) W||^2 summed over the calibration tokens: what Top-K costs this block."""
    dropped = v * ~topk_mask(v, k, score)
    return float((dropped @ W).pow(2).sum())


def choose_rotation(m: Method, src: Layer, fused_pca: Layer, fused_id: Layer, inputs_pca: dict,
                    inputs_id: dict, ks: dict[str, int], scores_pca: dict, scores_id: dict) -> bool:
    """auto: keep the PCA basis only where its Top-K loses less of the q/k/v and gate/up outputs
    than the identity basis ranked as plain Top-K ranks (|g u|) on the calibration data."""
    def cost(inputs, fused, scores):
        return (output_error(inputs["attn_in"], ks["attn_in"], scores.get("attn_in"), fused.wqkv)
                + output_error(inputs["mlp_in"], ks["mlp_in"], scores.get("mlp_in"), fused.wgu))
    return cost(inputs_pca, fused_pca, scores_pca) < cost(inputs_id, fused_id, scores_id)


def key_of(b: str, v: torch.Tensor, score: torch.Tensor | None, gate: torch.Tensor | None,
           mlp_out_key: str, act: str = "silu") -> torch.Tensor:
    """The runtime's ranking key of block input b (CATS: |act(gate)|)."""
    base = ACTIVATION[act](gate) if b == "mlp_out" and mlp_out_key == "gate" else v
    return base.abs() if score is None else base.abs() * score

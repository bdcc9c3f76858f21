"""Rotations and their fusion into the weights (the paper's deployment form; FORMAT.md has the math).

Layer l carries its residual stream in the basis of Q_l: r = x @ Q_l. Because rms(x Q) = rms(x),
the scale-free norm u = x / rms(x) rotates with it, u_rot = u @ Q_l, and every weight that reads
u gets diag(g) Q_l folded in on its input side; every weight that writes r gets Q_l on its output side.
"""
from __future__ import annotations

import torch

from .model import Layer


def rotation_from_moments(H: torch.Tensor) -> torch.Tensor:
    """Q [d, d] float64: eigenvectors of the second-moment matrix H, largest eigenvalue first."""
    H = H.double()
    H = 0.5 * (H + H.T)
    _, V = torch.linalg.eigh(H)
    return V.flip(-1).contiguous()


def source_layer(w: dict[str, torch.Tensor]) -> Layer:
    """The original layer (weights W[out, in] from the GGUF, SourceModel.layer) in the reference's
    input-major form; q, k, v biases (any of them, the others zero) as one [qkv] vector."""
    qkv = ("attn_q", "attn_k", "attn_v")
    bqkv = None
    if any(f"{n}.bias" in w for n in qkv):
        bqkv = torch.cat([w.get(f"{n}.bias", torch.zeros(w[n].shape[0])) for n in qkv])
    return Layer(
        wqkv=torch.cat([w["attn_q"], w["attn_k"], w["attn_v"]], dim=0).T.contiguous(),
        wo=w["attn_output"].T.contiguous(),
        wgu=torch.cat([w["ffn_gate"], w["ffn_up"]], dim=0).T.contiguous(),
        wdown=w["ffn_down"].T.contiguous(),
        attn_norm=w["attn_norm"], ffn_norm=w["ffn_norm"],
        bqkv=bqkv, bo=w.get("attn_output.bias"), bdown=w.get("ffn_down.bias"),
        q_norm=w.get("attn_q_norm"), k_norm=w.get("attn_k_norm"),
        post_attn_norm=w.get("post_attention_norm"), post_ffn_norm=w.get("post_ffw_norm"))


def fuse_layer(src: Layer, Q: torch.Tensor, adapter: torch.Tensor | None, keep_norms: bool = False) -> Layer:
    """src in original form (norm scales present), Q = Q_l; adapter = Q_{l-1}^T Q_l or None.
    keep_norms (identity basis only): the block inputs' norm scales stay vectors that the runtime
    applies (the block input is g u, which the 8-bit activations then quantize, as llama.cpp does),
    instead of being folded into Wqkv / Wgate_up (the input u, quantized without them): on Gemma,
    whose scales range from 0 to ~100 next to massive activations, folding cost 8-bit activations
    +70 % perplexity (u's outliers in channels that g zeroes flattened the rest of their blocks).
    The q/k/v bias and the q/k norms act after the product, on the unrotated heads: unchanged; an
    output bias writes the residual, so it turns with the basis like the output weights. A post norm
    (Gemma) scales the residual's channels after an RMSNorm, which a rotation does not commute with:
    only the identity basis fuses exactly there (convert.py refuses a rotated plan for such models)."""
    Qf = Q.float()
    identity = torch.equal(Qf, torch.eye(len(Qf)))
    if (src.post_attn_norm is not None or src.post_ffn_norm is not None or keep_norms) and not identity:
        raise ValueError("post norms and norm scales kept apart fuse only with the identity basis")
    g_attn, g_ffn = (torch.ones_like(src.attn_norm), torch.ones_like(src.ffn_norm)) if keep_norms else \
        (src.attn_norm, src.ffn_norm)
    return Layer(
        wqkv=Qf.T @ (g_attn[:, None] * src.wqkv),   # u_rot Q^T diag(g) W
        wo=src.wo @ Qf,                                       # writes the rotated residual
        wgu=Qf.T @ (g_ffn[:, None] * src.wgu),
        attn_norm=src.attn_norm if keep_norms else None, ffn_norm=src.ffn_norm if keep_norms else None,
        wdown=src.wdown @ Qf,
        adapter=None if adapter is None else adapter.float(),
        bqkv=src.bqkv, bo=None if src.bo is None else src.bo @ Qf,
        bdown=None if src.bdown is None else src.bdown @ Qf, q_norm=src.q_norm, k_norm=src.k_norm,
        post_attn_norm=src.post_attn_norm, post_ffn_norm=src.post_ffn_norm)


def adapter(Q_prev: torch.Tensor | None, Q: torch.Tensor) -> torch.Tensor:
    """Change of basis from layer l-1's residual to layer l's: Q_{l-1}^T Q_l (Q_{-1} = I)."""
    return Q.clone() if Q_prev is None else Q_prev.T @ Q


def fuse_head(head: torch.Tensor, out_norm: torch.Tensor, Q_last: torch.Tensor) -> torch.Tensor:
    """Untied head [vocab, d]: logits = u_rot Q^T diag(g) W^T, so head' = W diag(g) Q."""
    return (head * out_norm[None, :]) @ Q_last.float()

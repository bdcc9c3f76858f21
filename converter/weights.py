"""Whole models in the reference's Weights form: the original (from a llama / qwen2 / qwen3 GGUF) and the fused
LaRoSA model (from a converted file, dequantized). For tests and the reference simulation; the
converter itself streams layer by layer."""
from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from gguf import quants

from larosa.runtime import format as F
from larosa.runtime.gguf_file import tensor_rows_cols
from larosa.runtime.loader import LarosaFile, load

from .fuse import source_layer
from .model import Budget, Layer, TopK, Weights
from .source import SourceModel


def source_weights(src: SourceModel, n_ctx: int | None = None) -> Weights:
    """The original model, in the reference's input-major form with its norm scales (LongRoPE: the
    factors of a context of n_ctx, the short ones when None)."""
    hp = src.hp
    embd = src.weight("token_embd.weight")
    return Weights(
        hp=hp, embd=embd, head=embd if hp.tied else src.weight("output.weight"),
        layers=[source_layer(src.layer(l)) for l in range(hp.n_layers)],
        out_norm=src.output_norm(),
        rope_freqs=src.rope_freqs(n_ctx))


def larosa_weights(f: LarosaFile | str, quantized_activations: bool = True, n_ctx: int | None = None) -> Weights:
    """The fused model exactly as stored (dequantized to float32), with the runtime's 8-bit
    activations marked where it uses them (the inputs of Q8_0 / Q4_0 weights; quantized_activations
    False: float activations everywhere, the fusion's math alone); LongRoPE: the factors a runtime
    of n_ctx positions uses (None: the short ones)."""
    f = load(f) if isinstance(f, str) else f
    hp = f.hp

    shapes_types = f.shapes_types()

    def get(name: str) -> torch.Tensor | None:
        t = f.tensors.get(name)
        if t is None:
            return None
        if t.tensor_type == QT.I8:   # input-major Q8_0 / Q4_0: codes and scale table
            arr = F.im_dequantize(np.asarray(t.data), np.asarray(f.tensors[F.scale_name(name)].data),
                                  shapes_types[name][1])
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        arr = quants.dequantize(np.asarray(t.data), t.tensor_type)
        return torch.from_numpy(np.array(arr, dtype=np.float32).reshape(tensor_rows_cols(t)))

    def q8(names: dict[str, str]) -> frozenset:   # the runtime quantizes the inputs of Q8_0 / Q4_0 weights
        return frozenset(k for k, n in names.items() if quantized_activations and n in shapes_types
                         and shapes_types[n][1] in F.IM_TYPES)

    layers = []
    for l in range(hp.n_layers):
        names = {"wqkv": F.T_QKV(l), "wo": F.T_O(l), "wgu": F.T_GATE_UP(l), "wdown": F.T_DOWN(l),
                 "adapter": F.T_ADAPTER(l)}
        vecs = {f: get(F.T_VEC(l, kind)) for kind, f in F.LAYER_VECTOR_FIELDS.items()}
        layers.append(Layer(**{k: get(n) for k, n in names.items()}, **vecs, act_q8=q8(names)))
    embd = get(F.T_EMBD)
    head = F.T_EMBD if hp.tied else F.T_OUTPUT
    return Weights(hp=hp, embd=embd, head=embd if hp.tied else get(F.T_OUTPUT), layers=layers,
                   out_norm=get(F.T_OUTPUT_NORM), out_adapter=get(F.T_OUTPUT_ADAPTER),
                   rope_freqs=get(f.rope_freqs_name(0 if n_ctx is None else n_ctx) or F.T_ROPE_FREQS), act_q8=q8({"out_adapter": F.T_OUTPUT_ADAPTER, "head": head}))


def topk_of(f: LarosaFile, sparsity: float | None = None, budget: bool | None = None) -> TopK:
    """The file's selection at `sparsity`, as the reference simulation takes it (budget: as
    Model(budget=...) selects; None: as the file says)."""
    use_scores = f.scores_mode(budget)
    budget, topk = f.selection_mode(budget)
    sel = f.selection(sparsity, thresholds=not topk)
    scores: dict = {}
    for name, t in f.tensors.items() if use_scores else ():
        parts = name.split(".")
        if name.startswith("blk.") and parts[2].startswith("score_"):
            arr = torch.from_numpy(np.array(t.data, dtype=np.float32))
            scores.setdefault(parts[2][len("score_"):], {})[int(parts[1])] = arr
    return TopK(**sel.k, score=scores or None, threshold=sel.threshold, gate_key=f.mlp_out_key == "gate",
                budget=Budget(*f.budget(sparsity)) if budget else None)

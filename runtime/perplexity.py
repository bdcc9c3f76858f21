"""Perplexity on non-overlapping windows, through the C runtime or, for the dense baseline, through
llama.cpp on the same windows and the same scoring code.

Protocol: the whole text is tokenized as llama.cpp does for the model (BOS if the model adds one);
window i is tokens[i c : (i + 1) c], its first token replaced by BOS when the model uses BOS; every
token after the first of each window is scored (c - 1 per window).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm


@dataclass
class Result:
    ppl: float
    nll: float        # mean negative log-likelihood per scored token (nats)
    tokens: int       # scored tokens
    windows: int
    seconds: float


def make_windows(tokens: list[int], ctx: int, n_chunks: int | None, bos: int | None) -> np.ndarray:
    if ctx < 2:
        raise ValueError("the window (-c) must be at least 2 tokens")
    n = len(tokens) // ctx
    if n_chunks is not None:
        n = min(n, n_chunks)
    if n == 0:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one window of {ctx}")
    w = np.asarray(tokens[: n * ctx], dtype=np.int64).reshape(n, ctx)
    if bos is not None:
        w[:, 0] = bos
    return w


def nll_sum(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum over rows of -log softmax(logits)[target], in float64."""
    x = logits.astype(np.float64)
    mx = x.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(x - mx).sum(axis=1))
    return float((lse - x[np.arange(len(targets)), targets]).sum())


def score(windows: np.ndarray, window_logits: Callable[[list[int]], np.ndarray],
          progress: bool = True, desc: str = "perplexity") -> Result:
    """window_logits(tokens) must return the logits [c, vocab] of every position of one window."""
    total, count, t0 = 0.0, 0, time.perf_counter()
    bar = tqdm(windows, desc=desc, unit="win", disable=not progress)
    for w in bar:
        logits = window_logits(w.tolist())
        total += nll_sum(logits[:-1], w[1:])
        count += len(w) - 1
        bar.set_postfix(ppl=f"{math.exp(total / count):.4f}")
    nll = total / count
    return Result(ppl=math.exp(nll), nll=nll, tokens=count, windows=len(windows),
                  seconds=time.perf_counter() - t0)


def larosa_logits(model) -> Callable[[list[int]], np.ndarray]:
    def run(tokens: list[int]) -> np.ndarray:
        model.reset()
        return model.eval(tokens, all_logits=True)
    return run


def llama_cpp_logits(path: str, ctx: int, n_threads: int, type_k: str = "f16",
                     type_v: str = "f16") -> Callable[[list[int]], np.ndarray]:
    """llama.cpp (llama-cpp-python) on the original GGUF, all logits of a window; KV cache types by
    name (llama.cpp needs flash attention for a quantized V cache)."""
    from llama_cpp import Llama
    from .model import KV_TYPES
    llm = Llama(path, n_ctx=ctx, n_batch=min(ctx, 512), logits_all=True, n_threads=n_threads,
                type_k=KV_TYPES[type_k], type_v=KV_TYPES[type_v], flash_attn=type_v == "q8_0", verbose=False)

    def run(tokens: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    return run

"""Sampling and the generation loop (llama.cpp's sampler order: penalty, top-k, top-p, min-p,
temperature). Pure numpy on the logits; the model is anything with eval/eval_prompt/tokenizer."""
from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class Sampling:
    temperature: float = 0.8     # 0: greedy
    top_k: int = 40              # 0: off
    top_p: float = 0.95          # 1: off
    min_p: float = 0.05          # 0: off
    repeat_penalty: float = 1.0  # 1: off; applied to the last repeat_last_n tokens
    repeat_last_n: int = 64
    seed: int | None = None      # same seed, same text

    def __post_init__(self):
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0 or not 0 < self.top_p <= 1 or not 0 <= self.min_p <= 1:
            raise ValueError("top_k must be >= 0, top_p in (0, 1], min_p in [0, 1]")
        if not self.repeat_penalty > 0 or self.repeat_last_n < 0:
            raise ValueError("repeat_penalty must be > 0 and repeat_last_n >= 0")


def sample(logits: np.ndarray, s: Sampling, rng: np.random.Generator, history: list[int]) -> int:
    x = logits.astype(np.float64, copy=True)
    if s.repeat_penalty != 1.0 and history:
        recent = np.unique(np.asarray(history[-s.repeat_last_n:], dtype=np.int64)) if s.repeat_last_n else []
        if len(recent):
            v = x[recent]
            x[recent] = np.where(v > 0, v / s.repeat_penalty, v * s.repeat_penalty)
    if s.temperature == 0:
        return int(np.argmax(x))
    cand = np.arange(x.size)
    if s.top_k and s.top_k < x.size:
        cand = np.argpartition(-x, s.top_k - 1)[: s.top_k]
    cand = cand[np.argsort(-x[cand], kind="stable")]
    p = np.exp(x[cand] - x[cand[0]])
    p /= p.sum()
    if s.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), s.top_p) + 1)
        cand, p = cand[:keep], p[:keep]
    if s.min_p > 0:
        keep = p >= s.min_p * p[0]
        cand = cand[keep]
    z = x[cand] / s.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(cand[rng.choice(len(cand), p=p)])


def generate_tokens(model, prompt: list[int], max_tokens: int, s: Sampling) -> Iterator[int]:
    """Evaluates the prompt (re-using a cached prefix), then samples up to max_tokens tokens,
    stopping after an end-of-generation token or when the context is full. Fills model.timings."""
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    if max_tokens < 0:
        raise ValueError("max_tokens must be >= 0")
    from .model import ContextError, Timings   # here: model.py imports this module
    if len(prompt) > model.n_ctx:
        raise ContextError(f"prompt of {len(prompt)} tokens exceeds n_ctx = {model.n_ctx}")
    rng = np.random.default_rng(s.seed)
    t = model.timings = Timings()
    t0 = time.perf_counter()
    logits, t.prompt_tokens = model.eval_prompt(list(prompt))
    t.prompt_seconds = time.perf_counter() - t0
    history = list(prompt)
    for _ in range(max_tokens):
        t0 = time.perf_counter()
        tok = sample(logits, s, rng, history)
        t.sample_seconds += time.perf_counter() - t0
        history.append(tok)
        yield tok
        if model.tokenizer.is_eog(tok) or len(model.tokens) >= model.n_ctx:
            return
        t0 = time.perf_counter()
        logits = model.eval([tok])
        t.decode_seconds += time.perf_counter() - t0
        t.decode_tokens += 1

def generate_text(model, prompt: str | list[int], max_tokens: int, stop: list[str],
                  s: Sampling) -> Iterator[str]:
    """Text pieces as soon as they are valid UTF-8; a stop string ends the text (not included)."""
    stop = [stop] if isinstance(stop, str) else [x for x in stop if x]   # one string, as in llama-cpp-python
    tokens = model.tokenize(prompt) if isinstance(prompt, (str, bytes)) else list(prompt)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    hold = max((len(x) for x in stop), default=0) - 1   # a tail that may begin a stop string
    for tok in generate_tokens(model, tokens, max_tokens, s):
        if model.tokenizer.is_eog(tok):
            break
        pending += decoder.decode(model.tokenizer.piece(tok))
        hits = [at for at in (pending.find(x) for x in stop) if at >= 0]
        if hits:                                  # the earliest stop string ends the text
            if pending[:min(hits)]:
                yield pending[:min(hits)]
            return
        if hold > 0:
            safe = len(pending) - hold
            if safe > 0:
                yield pending[:safe]
                pending = pending[safe:]
        elif pending:
            yield pending
            pending = ""
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending

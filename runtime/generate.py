"""Sampling and the generation loop (llama.cpp's sampler order: penalty, top-k, top-p, min-p,
temperature). Pure numpy on the logits; the model is anything with eval/eval_prompt/tokenizer."""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

RANDOM_SEED = 0xFFFFFFFF   # llama.cpp's LLAMA_DEFAULT_SEED: a seed drawn at random (so is -1)


@dataclass
class Sampling:
    """Sampler settings, with llama-cpp-python's meaning for every edge value (its sampler chain is
    penalty, top-k, top-p, min-p, temperature, draw; top-p and min-p see temperature-1 probabilities):

    temperature   > 0 divides the logits; 0: greedy (the first most likely token); < 0: a draw from
                  the whole distribution at temperature 1, top_k/top_p/min_p unused (as
                  llama-cpp-python). Tiny values tend to greedy (ties share) and inf to uniform over
                  what the filters keep, never NaN.
    top_k         keep the k most likely tokens; <= 0 or >= the vocabulary: off. An integer.
    top_p         keep the most likely tokens until their probability reaches top_p; >= 1: off;
                  0: only the most likely token (greedy). In [0, inf).
    min_p         keep tokens with probability >= min_p * the largest; 0: off; >= 1: only the most
                  likely token(s). In [0, inf).
    repeat_penalty  divides a positive logit, multiplies a negative one, of each token among the last
                  repeat_last_n; 1: off; finite and > 0 (< 1 favours repetition).
    repeat_last_n how many of the last tokens (prompt included) are penalized; 0: off; -1: all.
    seed          same seed, same text; None, -1 or 0xFFFFFFFF: a random seed; other negative values
                  wrap to 32 bits (llama.cpp's seeds are uint32).
    Raises ValueError for values with no meaning: NaN, negative probabilities, a penalty <= 0 or
    infinite, a non-integer top_k, repeat_last_n < -1."""
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self):
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
                raise ValueError(f"{name} must be a number, got {v!r}")
        for name in ("top_k", "repeat_last_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        if self.top_p < 0 or self.min_p < 0:
            raise ValueError(f"top_p and min_p are probabilities and must be >= 0, got top_p = {self.top_p}, "
                             f"min_p = {self.min_p} (0 turns min_p off and makes top_p greedy)")
        if not 0 < self.repeat_penalty < math.inf:
            raise ValueError(f"repeat_penalty must be finite and > 0 (1: off), got {self.repeat_penalty}")
        if self.repeat_last_n < -1:
            raise ValueError(f"repeat_last_n must be >= 0, or -1 for all tokens; got {self.repeat_last_n}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")

    def rng(self) -> np.random.Generator:
        """The random generator this seed gives."""
        if self.seed is None or self.seed == -1 or self.seed % 2**32 == RANDOM_SEED:
            return np.random.default_rng()
        return np.random.default_rng(self.seed % 2**32 if self.seed < 0 else self.seed)


def _probs(x: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(x / temperature), without NaN for any logits and temperature > 0: infinite logits
    share the mass (+inf) or get none (-inf); when every logit is -inf, all share."""
    top = x.max()
    if np.isinf(top):
        p = (x == top).astype(np.float64)
    else:
        d = x - top                               # <= 0; -inf for -inf logits
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            z = np.where(np.isneginf(d), -np.inf, d / temperature)   # -inf / inf would be NaN
        p = np.exp(z)                             # the top token's is exactly 1
    return p / p.sum()


def sample(logits: np.ndarray, s: Sampling, rng: np.random.Generator, history: list[int]) -> int:
    """One token id drawn from logits (n_vocab floats) after the penalty and filters of s."""
    x = logits.astype(np.float64, copy=True)
    if s.repeat_penalty != 1.0 and history and s.repeat_last_n:
        recent = history if s.repeat_last_n < 0 else history[-s.repeat_last_n:]
        recent = np.unique(np.asarray(recent, dtype=np.int64))
        v = x[recent]
        with np.errstate(over="ignore"):
            x[recent] = np.where(v > 0, v / s.repeat_penalty, v * s.repeat_penalty)
    if s.temperature == 0:
        return int(np.argmax(x))
    if s.temperature < 0:          # llama-cpp-python: the plain distribution, no filters
        return int(rng.choice(x.size, p=_probs(x, 1.0)))
    cand = np.arange(x.size)
    if 0 < s.top_k < x.size:
        cand = np.argpartition(-x, s.top_k - 1)[: s.top_k]
    cand = cand[np.argsort(-x[cand], kind="stable")]
    if s.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(_probs(x[cand], 1.0)), s.top_p) + 1)
        cand = cand[:keep]
    if s.min_p > 0:
        p = _probs(x[cand], 1.0)
        keep = p >= s.min_p * p[0]
        keep[0] = True             # the most likely token always stays (llama.cpp's min_keep 1)
        cand = cand[keep]
    return int(cand[rng.choice(len(cand), p=_probs(x[cand], s.temperature))])


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
    rng = s.rng()
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

@dataclass
class TextScan:
    """What text_pieces saw: the tokens it turned into text, and whether an end token or a stop
    string ended the text (finish_reason "stop"; else the tokens ran out: "length")."""
    tokens: int = 0
    stopped: bool = False


def first_stop(text: str, stop: Sequence[str]) -> int:
    """Where the earliest of the stop strings begins in text, -1 if none does."""
    hits = [at for at in (text.find(x) for x in stop) if at >= 0]
    return min(hits) if hits else -1


def text_pieces(tokens: Iterable[int], text, is_end: Callable[[int], bool], stop: Sequence[str],
                scan: TextScan | None = None) -> Iterator[str]:
    """The text of `tokens` in pieces as soon as they are final: `text` (a Tokenizer.stream) turns
    each token into text; an end token (is_end, not turned into text) or the earliest stop string
    (not included) ends it; a tail that may begin a stop string is held back. The one loop behind
    generate_text, the chat replies and the server's completions. Closes `tokens` when it ends."""
    scan = TextScan() if scan is None else scan
    hold = max((len(x) for x in stop), default=1) - 1
    pending = ""
    try:
        for tok in tokens:
            if is_end(tok):
                scan.stopped = True
                break
            scan.tokens += 1
            pending += text.feed(tok)
            at = first_stop(pending, stop)
            if at >= 0:
                scan.stopped = True
                if pending[:at]:
                    yield pending[:at]
                return
            if len(pending) > hold:
                yield pending[:len(pending) - hold]
                pending = pending[len(pending) - hold:]
    finally:
        close = getattr(tokens, "close", None)
        if close is not None:
            close()
    pending += text.finish()
    at = first_stop(pending, stop)
    if at >= 0:
        scan.stopped = True
        pending = pending[:at]
    if pending:
        yield pending


def generate_text(model, prompt: str | list[int], max_tokens: int, stop: list[str],
                  s: Sampling) -> Iterator[str]:
    """Text pieces of the continuation of prompt as soon as they are final (Tokenizer.stream with
    the prompt as context: the text goes on from the prompt's, spaces included; never a split
    UTF-8 character); a stop string ends the text (not included)."""
    stop = [stop] if isinstance(stop, str) else [x for x in stop if x]   # one string, as in llama-cpp-python
    tokens = model.tokenize(prompt) if isinstance(prompt, (str, bytes)) else list(prompt)
    yield from text_pieces(generate_tokens(model, tokens, max_tokens, s), model.tokenizer.stream(context=tokens),
                           model.tokenizer.is_eog, stop)

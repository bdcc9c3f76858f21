"""larosa-eval: zero-shot multiple-choice accuracy through the C runtime, scored as
lm-evaluation-harness 0.4 scores `multiple_choice` tasks.

For each choice i the log-likelihood ll_i = sum_j log p(cont_j | context, cont_<j) of its
continuation tokens; acc = [argmax_i ll_i == gold], acc_norm = [argmax_i ll_i / len(choice_i) ==
gold] with len the harness's len() of the choice string (characters, without the delimiter; the
harness's byte-normalized variant is a separate metric, acc_bytes). Per task the mean and its
standard error sqrt(sum (x - mean)^2 / (n - 1)) / sqrt(n) (none for n = 1).

Tokenization is the harness's: trailing whitespace of the context moves to the continuation,
whole = encode(context + continuation), context_enc = encode(context), continuation_enc =
whole[len(context_enc):], encode being the model's llama.cpp tokenizer (BOS as the model says).
A request longer than the window is cut from the left as the harness does: the model sees
(context_enc + continuation_enc)[-(n_ctx + 1):][:-1]; a continuation longer than n_ctx is an error,
and so is an empty context (none of the tasks has one; the harness would condition on BOS/EOS).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from .cli import add_kv_args
from .errors import LarosaError
from .tasks import ACC, ACC_NORM, Doc, get_task, load_docs

Tokenize = Callable[[str], list[int]]


def encode_pair(tokenize: Tokenize, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context_enc, continuation_enc) as the harness splits a request."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:   # " yes" tokenizes as one word; "Answer: " + "yes" would not
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenize(context + continuation)
    context_enc = tokenize(context)
    return context_enc, whole[len(context_enc):]


def token_logprobs(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """log softmax(logits[j])[targets[j]] per row, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    mx = x.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(x - mx).sum(axis=1))
    return x[np.arange(len(targets)), np.asarray(targets)] - lse


class Scorer:
    """Log-likelihoods of continuations through a Model (or anything with its tokenize, tokens,
    reset, rewind, eval and n_ctx). The KV cache carries the context from one choice to the next:
    the context runs once, then each choice rewinds to it and runs only its continuation (and
    contexts that share a prefix, as winogrande's do, share its evaluation)."""

    def __init__(self, model):
        self.model = model
        self._prefix: list[int] = []              # tokens whose last logits are kept below
        self._prefix_logits: np.ndarray | None = None
        self.truncated = 0                        # requests cut from the left to fit n_ctx

    def reset(self) -> None:
        """Empties the cache. Called per document, so a document's scores do not depend on the one
        before it (batched and single-token evaluation round differently)."""
        self.model.reset()
        self._prefix, self._prefix_logits = [], None

    def loglikelihood(self, context: str, continuation: str) -> float:
        return self.loglikelihood_tokens(*encode_pair(self.model.tokenize, context, continuation))

    def loglikelihood_tokens(self, context_enc: list[int], continuation_enc: list[int]) -> float:
        if not continuation_enc:
            return 0.0
        return float(token_logprobs(self.continuation_logits(context_enc, continuation_enc),
                                    continuation_enc).sum())

    def continuation_logits(self, context_enc: list[int], continuation_enc: list[int]) -> np.ndarray:
        """The logits [len(continuation_enc), vocab] that predict each continuation token."""
        if not context_enc:
            raise LarosaError("empty context: no token to predict the continuation from")
        n_ctx = self.model.n_ctx
        if len(continuation_enc) > n_ctx:
            raise LarosaError(f"a continuation of {len(continuation_enc)} tokens does not fit "
                              f"n_ctx = {n_ctx}")
        full = context_enc + continuation_enc
        window = full[-(n_ctx + 1):][:-1]          # the harness's left truncation
        self.truncated += int(len(window) < len(full) - 1)
        # prefix ends with the token before the first continuation token; the rest runs per choice
        split = len(window) - len(continuation_enc) + 1
        first = self._logits_after(window[:split])
        rest = window[split:]
        if not rest:
            return first[None, :]
        return np.vstack([first[None, :], self.model.eval(rest, all_logits=True)])

    def _logits_after(self, prefix: list[int]) -> np.ndarray:
        """Logits after `prefix`, leaving exactly `prefix` in the cache; re-uses what is cached."""
        m, n = self.model, len(prefix)
        if self._prefix_logits is not None and self._prefix == prefix and m.tokens[:n] == prefix:
            m.rewind(n)
            return self._prefix_logits
        common = 0
        for a, b in zip(m.tokens, prefix):
            if a != b:
                break
            common += 1
        common = min(common, n - 1)                # the last prefix token must run for its logits
        m.rewind(common)
        self._prefix, self._prefix_logits = list(prefix), m.eval(prefix[common:])
        return self._prefix_logits


@dataclass
class DocScore:
    lls: np.ndarray     # log-likelihood of each choice
    acc: float
    acc_norm: float


def score_doc(scorer: Scorer, doc: Doc) -> DocScore:
    scorer.reset()
    lls = np.array([scorer.loglikelihood(c, x) for c, x in doc.requests], dtype=np.float64)
    lengths = np.array([float(len(c)) for c in doc.choices])
    with np.errstate(divide="ignore", invalid="ignore"):   # an empty choice: as numpy does in the harness
        pred_norm = int(np.argmax(lls / lengths))
    return DocScore(lls, float(int(np.argmax(lls)) == doc.gold), float(pred_norm == doc.gold))


def mean_stderr(xs: Sequence[float]) -> float | None:
    """Standard error of the mean with the sample standard deviation; None for fewer than 2."""
    n = len(xs)
    if n < 2:
        return None
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


@dataclass
class TaskResult:
    task: str
    n: int
    metrics: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0
    truncated: int = 0

    def to_json(self) -> dict:
        out: dict = {}
        for k, v in self.metrics.items():
            out[k], out[f"{k}_stderr"] = v, self.stderr[k]
        out.update(n=self.n, seconds=round(self.seconds, 3), truncated=self.truncated)
        return out


def evaluate_task(scorer: Scorer, name: str, docs: Sequence[Doc], progress: bool = True) -> TaskResult:
    task = get_task(name)
    t0, truncated0 = time.perf_counter(), scorer.truncated
    per_metric: dict[str, list[float]] = {k: [] for k in task.metrics}
    bar = tqdm(docs, desc=name, unit="doc", disable=not progress, file=sys.stderr)
    for doc in bar:
        s = score_doc(scorer, doc)
        for k, v in ((ACC, s.acc), (ACC_NORM, s.acc_norm)):
            if k in per_metric:
                per_metric[k].append(v)
        bar.set_postfix({k: f"{np.mean(v):.3f}" for k, v in per_metric.items()})
    return TaskResult(name, len(docs), {k: float(np.mean(v)) for k, v in per_metric.items()},
                      {k: mean_stderr(v) for k, v in per_metric.items()},
                      time.perf_counter() - t0, scorer.truncated - truncated0)


def format_table(results: Sequence[TaskResult]) -> str:
    def cell(r: TaskResult, k: str) -> str:
        if k not in r.metrics:
            return ""
        se = r.stderr[k]
        return f"{r.metrics[k]:.4f} ± {se:.4f}" if se is not None else f"{r.metrics[k]:.4f} ± N/A"
    rows = [("task", "n", "acc", "acc_norm", "seconds")]
    rows += [(r.task, str(r.n), cell(r, ACC), cell(r, ACC_NORM), f"{r.seconds:.1f}") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


# -- command line -------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):   # one line and exit 1, like every other input error
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(1)


def parse_tasks(spec: str) -> list[str]:
    names = list(dict.fromkeys(t.strip() for t in spec.split(",") if t.strip()))
    if not names:
        raise LarosaError("--tasks needs at least one task name")
    for n in names:
        get_task(n)
    return names


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="larosa-eval",
                description="Zero-shot multiple-choice accuracy (acc, acc_norm) of a LaRoSA model, "
                            "scored as lm-evaluation-harness 0.4 does, through the C runtime. Data: "
                            "$LAROSA_DATA or ../shared/data.")
    p.add_argument("-m", "--model", required=True, help="LaRoSA GGUF (from larosa-convert)")
    p.add_argument("--tasks", required=True,
                   help="comma-separated: piqa, arc_easy, arc_challenge, hellaswag, winogrande, "
                        "boolq, openbookqa")
    p.add_argument("--limit", type=int, help="only the first N documents of each task")
    p.add_argument("--sparsity", type=float, help="model sparsity in [0, 1) (default: the file's)")
    p.add_argument("-t", "--threads", type=int, default=min(os.cpu_count() or 1, 8), help="CPU threads")
    p.add_argument("--budget", action=argparse.BooleanOptionalAction,
                   help="hold each token to the planned bytes (threshold files; default: as the file says)")
    p.add_argument("--json", action="store_true", help="print a JSON object of the results as the last line")
    add_kv_args(p)
    a = p.parse_args(argv)
    try:
        names = parse_tasks(a.tasks)
        if a.limit is not None and a.limit < 1:
            raise LarosaError(f"--limit must be >= 1, got {a.limit}")
        docs = {n: load_docs(n, a.limit) for n in names}   # all data problems before the model loads
        from .model import Model
        m = Model(a.model, sparsity=a.sparsity, n_threads=a.threads, budget=a.budget,
                  type_k=a.cache_type_k, type_v=a.cache_type_v)
        scorer = Scorer(m)
        results = [evaluate_task(scorer, n, docs[n]) for n in names]
        skipped = m.skipped_fraction()    # measured over every token evaluated (counted since set_sparsity)
        print(f"{os.path.basename(a.model)}: sparsity {m.sparsity:g}, {skipped:.1%} of block weight bytes "
              f"skipped (measured), {m.bytes_per_token() / 2**20:.1f} MiB weights/token nominal, "
              f"{m.n_threads} threads")
        print(format_table(results))
        if any(r.truncated for r in results):
            print(f"note: {sum(r.truncated for r in results)} requests were cut from the left to fit "
                  f"n_ctx = {m.n_ctx}", file=sys.stderr)
        if a.json:
            out = {r.task: r.to_json() for r in results}
            out.update(sparsity=round(m.sparsity, 6), budget=m.budget, skipped_fraction=skipped, bytes_per_token=m.bytes_per_token())
            print(json.dumps(out))
        return 0
    except (LarosaError, ValueError, OSError) as e:
        print(f"larosa-eval: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nlarosa-eval: interrupted", file=sys.stderr)
        return 130

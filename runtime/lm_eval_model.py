"""The larosa runtime as an lm-evaluation-harness (0.4.x) model, named "larosa" (optional extra:
pip install "larosa[lm-eval]").

lm-eval 0.4 has no entry point for model plugins: a model is known only once the module that
registers it is imported, so a plain `lm-eval --model larosa` does not find it (--include_path adds
tasks, not models). Run the harness's command line through this module, which registers it first:

    python -m larosa.runtime.lm_eval_model --model larosa \\
        --model_args path=model.larosa-q8_0.gguf,sparsity=0.4,threads=2,n_ctx=2048 --tasks arc_easy

or from Python: import larosa.runtime.lm_eval_model, then lm_eval.simple_evaluate(model="larosa",
model_args="path=...", tasks=[...]). model_args: path (required), sparsity in [0, 1) (default: the
file's), threads, n_ctx. Log-likelihoods are larosa-eval's (evaluate.Scorer: the harness's
tokenization split, left truncation to n_ctx); an empty context is conditioned on BOS (EOS
without one), as is the first token of a rolling window.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from .errors import LarosaError
from .evaluate import Scorer, encode_pair, token_logprobs
from .model import Model

log = logging.getLogger(__name__)
_HARNESS_ARGS = ("batch_size", "max_batch_size", "device")   # passed by simple_evaluate; ignored


def _number(name: str, value: Any, kind: type) -> int | float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"larosa: {name} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {value!r}") from None


@register_model("larosa")
class LarosaLM(LM):
    def __init__(self, path: str | None = None, sparsity: Any = None, threads: Any = None,
                 n_ctx: Any = None, budget: Any = None, **kwargs: Any) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - set(_HARNESS_ARGS))
        if unknown:
            raise ValueError(f"larosa: unknown model_args {', '.join(unknown)} "
                             "(accepted: path, sparsity, threads, n_ctx, budget)")
        if not isinstance(path, str) or not path:
            raise ValueError("larosa: model_args needs path=<LaRoSA GGUF file>")
        s = _number("model_args sparsity", sparsity, float)
        if s is not None and not 0.0 <= s < 1.0:
            raise ValueError(f"larosa: model_args sparsity must be in [0, 1), got {sparsity!r}")
        if budget is not None and str(budget).lower() not in ("true", "false", "1", "0"):   # strings or bools
            raise ValueError(f"larosa: model_args budget must be true or false, got {budget!r}")
        self.model = Model(path, sparsity=s, n_threads=_number("model_args threads", threads, int),
                           n_ctx=_number("model_args n_ctx", n_ctx, int),
                           budget=None if budget is None else str(budget).lower() in ("true", "1"))
        self.scorer = Scorer(self.model)
        tok = self.model.tokenizer
        self.prefix_token = tok.bos_id if tok.bos_id >= 0 else tok.eos_id
        self._context: list[int] | None = None   # context of the last scored request

    def _prefix(self) -> list[int]:
        if self.prefix_token < 0:
            raise LarosaError("empty context and the model has neither a BOS nor an EOS token")
        return [self.prefix_token]

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for req in tqdm(requests, desc="larosa loglikelihood", disable=disable_tqdm):
            context, continuation = req.args
            ctx, cont = encode_pair(self.model.tokenize, context, continuation)
            ctx = ctx or self._prefix()
            if not cont:
                out.append((0.0, True))
                continue
            if ctx != self._context:   # a fresh cache per context: scores do not depend on order
                self.scorer.reset()
                self._context = ctx
            logits = self.scorer.continuation_logits(ctx, cont)
            out.append((float(token_logprobs(logits, cont).sum()),
                        bool((logits.argmax(axis=1) == np.asarray(cont)).all())))
        return out

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Each token predicted once: windows of n_ctx predictions, the first after the prefix token,
        the last with a full window of context (lm-eval's rolling windows)."""
        n_ctx, out = self.model.n_ctx, []
        self._context = None
        for req in tqdm(requests, desc="larosa loglikelihood_rolling", disable=disable_tqdm):
            tokens = self.model.tokenize(req.args[0], add_bos=False)
            seq = self._prefix() + tokens          # seq[k] predicts tokens[k]
            total = 0.0
            for start in range(0, len(tokens), n_ctx):
                end = min(start + n_ctx, len(tokens))
                first = max(0, end - n_ctx)        # window seq[first:end], its rows start-first.. score
                self.model.reset()
                logits = self.model.eval(seq[first:end], all_logits=True)[start - first:]
                total += float(token_logprobs(logits, tokens[start:end]).sum())
            out.append(total)
        return out

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        out = []
        self._context = None
        for req in tqdm(requests, desc="larosa generate_until", disable=disable_tqdm):
            context, kw = req.args
            kw = dict(kw or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = _number("gen_kwargs max_gen_toks", kw.pop("max_gen_toks", None), int)
            max_gen = 256 if max_gen is None else max_gen
            if max_gen < 0:
                raise ValueError(f"larosa: gen_kwargs max_gen_toks must be >= 0, got {max_gen}")
            temperature = _number("gen_kwargs temperature", kw.pop("temperature", None), float)
            do_sample = bool(kw.pop("do_sample", bool(temperature)))   # greedy unless sampling is asked
            if not do_sample or temperature == 0:
                temperature = 0.0
            sampling: dict[str, Any] = dict(temperature=1.0 if temperature is None else temperature,
                                            top_k=0, top_p=1.0, min_p=0.0, seed=kw.pop("seed", 1234))
            for k in ("top_k", "top_p"):
                if k in kw:
                    sampling[k] = type(sampling[k])(kw.pop(k))
            if kw:
                log.warning("larosa: ignoring generation arguments %s", sorted(kw))
            prompt = self.model.tokenize(context) or self._prefix()
            prompt = prompt[-max(1, self.model.n_ctx - max_gen):]   # room for the generated tokens
            out.append("".join(self.model.generate(prompt, max_tokens=max_gen, stop=until, **sampling)))
        return out


if __name__ == "__main__":   # python -m larosa.runtime.lm_eval_model --model larosa ...
    from lm_eval.__main__ import cli_evaluate
    cli_evaluate()

"""The lm-evaluation-harness adapter (runtime/lm_eval_model.py) on a tiny converted model: its
log-likelihoods against evaluate.Scorer and against one plain evaluation, is_greedy, rolling
windows, generation, bad model_args, and offline end-to-end runs of lm-eval's own evaluator (the
library call and the documented command line) on a local multiple-choice task."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from larosa.runtime.errors import LarosaError  # noqa: E402
from larosa.runtime.evaluate import Scorer, encode_pair, token_logprobs  # noqa: E402
from larosa.runtime.lm_eval_model import LarosaLM  # noqa: E402
from larosa.runtime.model import Model  # noqa: E402

from conftest import convert_for_test  # noqa: E402

LETTERS = "etaoinshrdlucmfwypvbgkjqxz"


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> str:
    from larosa.tools.make_synthetic import make_synthetic
    d = tmp_path_factory.mktemp("lm_eval")
    src = make_synthetic(str(d / "src.gguf"), dim=64, ff=128, layers=2, heads=4, kv_heads=2, vocab=512,
                         qtype="q8_0", tied=False, seed=11)   # untied: spread-out next-token distributions
    return convert_for_test(src, str(d / "tiny.larosa.gguf"), "q8_0")


@pytest.fixture(scope="module")
def lm(gguf) -> LarosaLM:
    return LarosaLM(path=gguf, threads=1)


def words(rng: np.random.Generator, n: int) -> str:
    return " ".join("".join(rng.choice(list(LETTERS), rng.integers(1, 5))) for _ in range(n))


def reqs(kind: str, *args: tuple) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_loglikelihood_matches_scorer(gguf, lm):
    rng = np.random.default_rng(0)
    ctx = words(rng, 6)
    pairs = [(ctx, " " + words(rng, 2)), (ctx, " " + words(rng, 3)),   # shared context
             (words(rng, 4) + " ", words(rng, 2)),                      # trailing space moves
             (words(rng, 9), " " + words(rng, 1)), ("", words(rng, 3))]  # empty context: after BOS
    got = lm.loglikelihood(reqs("loglikelihood", *pairs))
    ref = Scorer(Model(gguf, n_threads=1))
    for (c, x), (ll, _) in zip(pairs, got):
        ref.reset()
        assert ll == pytest.approx(ref.loglikelihood(c, x), abs=1e-4)
    lls = [ll for ll, _ in got]
    assert all(ll < 0 for ll in lls) and len(set(np.round(lls, 3))) == len(lls)
    # the same requests in another order give the same numbers (a fresh cache per context)
    again = lm.loglikelihood(reqs("loglikelihood", *pairs[::-1]))[::-1]
    assert [ll for ll, _ in again] == pytest.approx(lls, abs=1e-5)


def test_empty_context_is_conditioned_on_bos(lm):
    m = lm.model
    assert m.tokenizer.add_bos and m.tokenizer.bos_id >= 0
    text = "tea in a hat"
    toks = m.tokenize(text, add_bos=False)
    m.reset()
    logits = m.eval([m.tokenizer.bos_id] + toks[:-1], all_logits=True)
    (ll, _), = lm.loglikelihood(reqs("loglikelihood", ("", text)))
    assert ll == pytest.approx(float(token_logprobs(logits, toks).sum()), abs=1e-3)


def test_is_greedy(lm):
    """A continuation of the model's own greedy tokens is greedy; its last token swapped for the
    least likely one is not, and neither is that token alone."""
    m, rng = lm.model, np.random.default_rng(1)
    for _ in range(20):   # a context whose greedy continuation tokenizes back to the same tokens
        ctx = words(rng, 5)
        greedy = lm.generate_until(reqs("generate_until", (ctx, {"max_gen_toks": 3})))[0]
        gen = list(m.generate_tokens(m.tokenize(ctx), 3, sampling=_greedy()))
        if greedy and encode_pair(m.tokenize, ctx, greedy)[1] == gen and len(gen) == 3:
            break
    else:
        pytest.fail("no context found whose greedy continuation round-trips")
    m.reset()
    logits = m.eval(m.tokenize(ctx) + gen[:-1], all_logits=True)[-1]
    worst = [t for t in np.argsort(logits) if 259 <= t][0]   # a text token (not control/byte)
    worst_text = continued(m, m.tokenize(ctx), [int(worst)])
    bad = continued(m, m.tokenize(ctx), gen[:-1] + [int(worst)])
    out = lm.loglikelihood(reqs("loglikelihood", (ctx, greedy), (ctx, bad), (ctx, worst_text)))
    assert encode_pair(m.tokenize, ctx, bad)[1] == gen[:-1] + [int(worst)]
    assert [g for _, g in out] == [True, False, False]
    assert out[0][0] > out[1][0]


def continued(m, ctx_ids: list[int], ids: list[int]) -> str:
    """The text ids add after ctx_ids (detokenize alone drops a SentencePiece first space, as llama.cpp)."""
    return m.detokenize(ctx_ids + ids)[len(m.detokenize(ctx_ids)):]


def _greedy():
    from larosa.runtime.generate import Sampling
    return Sampling(temperature=0)


def test_loglikelihood_rolling_one_window(lm):
    m, text = lm.model, words(np.random.default_rng(2), 12)
    toks = m.tokenize(text, add_bos=False)
    m.reset()
    logits = m.eval([m.tokenizer.bos_id] + toks[:-1], all_logits=True)
    expected = float(token_logprobs(logits, toks).sum())
    got = lm.loglikelihood_rolling(reqs("loglikelihood_rolling", (text,), ("",)))
    assert got[0] == pytest.approx(expected, abs=1e-3) and got[1] == 0.0


def test_loglikelihood_rolling_windows(gguf, lm):
    """n_ctx = 8: every token predicted once; windows as the harness's documentation draws them
    (the last one with a full context), and as lm-eval's own window helpers cut them."""
    from lm_eval.utils import get_rolling_token_windows
    small = LarosaLM(path=gguf, threads="1", n_ctx="8")
    m = small.model
    rng = np.random.default_rng(3)
    text = next(x for x in (words(rng, n) for n in range(3, 30)) if 17 <= len(m.tokenize(x, add_bos=False)) <= 23)
    t = m.tokenize(text, add_bos=False)    # three windows, the last one partial
    bos = m.tokenizer.bos_id
    hand = [([bos] + t[:7], t[0:8]), (t[7:15], t[8:16]), (t[len(t) - 9:len(t) - 1], t[16:])]
    assert list(get_rolling_token_windows(t, bos, 8, 1)) == hand
    expected = 0.0
    for inp, pred in hand:
        m.reset()
        logits = m.eval(inp, all_logits=True)[len(inp) - len(pred):]
        expected += float(token_logprobs(logits, pred).sum())
    got = small.loglikelihood_rolling(reqs("loglikelihood_rolling", (text,)))[0]
    assert got == pytest.approx(expected, abs=1e-3)
    one = lm.loglikelihood_rolling(reqs("loglikelihood_rolling", (text,)))[0]
    assert got != pytest.approx(one, abs=1e-3)   # less context, another number


def test_generate_until(lm):
    m, ctx = lm.model, words(np.random.default_rng(4), 6)
    gen = list(m.generate_tokens(m.tokenize(ctx), 12, sampling=_greedy()))
    assert len(gen) == 12 and not any(m.tokenizer.is_eog(x) for x in gen)
    full = continued(m, m.tokenize(ctx), gen)
    out = lm.generate_until(reqs("generate_until", (ctx, {"max_gen_toks": 12, "do_sample": False}),
                                 (ctx, {"max_gen_toks": 4}), (ctx, {"max_gen_toks": 0})))
    assert out == [full, continued(m, m.tokenize(ctx), gen[:4]), ""]
    # sampled text (seeded, plain temperature sampling), so that the stop string is not everywhere
    kw = {"do_sample": True, "temperature": 1.0, "seed": 7, "max_gen_toks": 16}
    text = "".join(m.generate(m.tokenize(ctx), 16, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7))
    assert len(set(text)) > 4, text
    stop = next(text[i:i + 2] for i in range(4, len(text) - 2) if text[i:i + 2].isascii() and text[i:i + 2].isalpha())
    cut = text[:text.find(stop)]
    assert 0 < len(cut) < len(text)
    out = lm.generate_until(reqs("generate_until", (ctx, kw), (ctx, {**kw, "until": [stop, "\n\n"]}),
                                 (ctx, {**kw, "until": stop})))
    assert out == [text, cut, cut]


def test_bad_model_args(gguf, tmp_path):
    def err(args: str) -> str:
        with pytest.raises((ValueError, LarosaError)) as e:
            LarosaLM.create_from_arg_string(args)
        return str(e.value)
    assert "needs path=" in err("sparsity=0.4")
    assert "needs path=" in err("")
    assert "sparsity must be in [0, 1)" in err(f"path={gguf},sparsity=2")
    assert "sparsity must be a number" in err(f"path={gguf},sparsity=high")
    assert "threads must be an integer" in err(f"path={gguf},threads=1.5")
    assert "n_ctx must be an integer" in err(f"path={gguf},n_ctx=big")
    assert "unknown model_args sparsty" in err(f"path={gguf},sparsty=0.4")
    assert "n_ctx" in err(f"path={gguf},n_ctx=0")
    assert "budget must be true or false" in err(f"path={gguf},budget=maybe")
    assert "budget mode scales thresholds" in err(f"path={gguf},budget=true")   # a Top-K file
    with pytest.raises((LarosaError, OSError)):
        LarosaLM.create_from_arg_string(f"path={tmp_path / 'none.gguf'}")
    lm = LarosaLM.create_from_arg_string(f"path={gguf},sparsity=0.2,threads=1,n_ctx=64",
                                         {"batch_size": 1, "device": "cpu"})
    assert (lm.model.sparsity, lm.model.n_threads, lm.model.n_ctx, lm.model.budget) == (0.2, 1, 64, False)


# -- lm-eval's evaluator, offline ---------------------------------------------------------------

TASK = "larosa_tiny_mc"


@pytest.fixture(scope="module")
def mc_task(lm, tmp_path_factory):
    """A local multiple-choice task of 4 documents whose gold answers make the expected accuracy
    0.5: documents 0-1 take the adapter's own choice as gold, documents 2-3 another one."""
    d = tmp_path_factory.mktemp("mc_task")
    rng = np.random.default_rng(5)
    docs = [{"question": words(rng, 5), "choices": [words(rng, 2) for _ in range(3)]} for _ in range(4)]
    for i, doc in enumerate(docs):
        lls = [ll for ll, _ in lm.loglikelihood(reqs("loglikelihood", *[(doc["question"], " " + c)
                                                                         for c in doc["choices"]]))]
        pred = int(np.argmax(lls))
        assert sorted(lls)[-1] - sorted(lls)[-2] > 1e-3   # no near-tie to flip
        doc["gold"] = pred if i < 2 else (pred + 1) % 3
        doc["lls"] = lls
    data = d / "docs.jsonl"
    data.write_text("".join(json.dumps({k: v for k, v in x.items() if k != "lls"}) + "\n" for x in docs))
    (d / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {d / 'hf_cache'}
test_split: test
output_type: multiple_choice
doc_to_text: question
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return d, docs


def offline_env(monkeypatch) -> None:
    for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(k, "1")
    import datasets.config
    import huggingface_hub.constants
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_simple_evaluate_offline(gguf, mc_task, monkeypatch):
    """lm_eval.simple_evaluate with model="larosa" on a local JSON task, the HF libraries offline
    and every socket connection refused: the accuracy it reports is the one computed from the
    adapter's log-likelihoods (0.5 by construction), and its per-document scores are the adapter's."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager
    d, docs = mc_task
    offline_env(monkeypatch)

    def no_network(*a, **k):
        raise OSError("network access in an offline test")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    res = simple_evaluate(model="larosa", model_args=f"path={gguf},threads=1", tasks=[TASK],
                          task_manager=TaskManager(include_path=str(d)), bootstrap_iters=0,
                          log_samples=True)
    acc = float(np.mean([int(np.argmax(x["lls"])) == x["gold"] for x in docs]))
    assert acc == 0.5
    assert res["results"][TASK]["acc,none"] == pytest.approx(acc)
    samples = sorted(res["samples"][TASK], key=lambda s: s["doc_id"])
    for s, doc in zip(samples, docs):
        assert [r[0][0] for r in s["resps"]] == pytest.approx(doc["lls"], abs=1e-4)


def test_command_line_offline(gguf, mc_task, tmp_path):
    """The documented command: python -m larosa.runtime.lm_eval_model --model larosa ..."""
    d, docs = mc_task
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "larosa.runtime.lm_eval_model", "--model", "larosa",
                        "--model_args", f"path={gguf},threads=1", "--tasks", TASK, "--include_path", str(d),
                        "--output_path", str(tmp_path / "out")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("results*.json")]
    assert len(out) == 1 and math.isclose(out[0]["results"][TASK]["acc,none"], 0.5)

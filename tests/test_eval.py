"""larosa-eval: the task loaders on the real data files, the scorer on a fake model with known
logits, the harness's tokenization split, cache re-use against fresh evaluation (fake and C
runtime), the command line, and an end-to-end run on a converted SmolLM2."""
from __future__ import annotations

import collections
import json
import math

import numpy as np
import pytest

from larosa.runtime.errors import LarosaError
from larosa.runtime.evaluate import Scorer, encode_pair, evaluate_task, main, mean_stderr, score_doc
from larosa.runtime.tasks import TASKS, Doc, data_dir, hellaswag_preprocess, hellaswag_query, load_docs

from conftest import random_calibration

LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def data():
    d = data_dir()
    if not (d / "piqa" / "valid.jsonl").is_file():
        pytest.skip(f"shared data not found at {d} (set LAROSA_DATA)")
    return d


# -- loaders on the real files ----------------------------------------------------------------

COUNTS = {"piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "hellaswag": 10042,
          "winogrande": 1267, "boolq": 3270, "openbookqa": 500}


@pytest.mark.parametrize("name", list(COUNTS))
def test_loader_counts_and_metrics(data, name):
    docs = load_docs(name)
    assert len(docs) == COUNTS[name]
    assert TASKS[name].metrics == (("acc",) if name in ("boolq", "winogrande") else ("acc", "acc_norm"))
    for d in docs:
        assert len(d.requests) == len(d.choices) >= 2 and 0 <= d.gold < len(d.choices)
        assert all(cont.startswith(" ") and ctx for ctx, cont in d.requests)


def test_loader_label_statistics(data):
    """Gold distributions against the published ones (SOURCES.md) and the separate label files."""
    assert sum(d.gold for d in load_docs("piqa")) == 928
    assert collections.Counter(d.gold for d in load_docs("hellaswag")) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}
    assert sum(d.gold for d in load_docs("boolq")) == 2033                      # True -> " yes"
    assert collections.Counter(len(d.choices) for d in load_docs("arc_easy")) == {3: 7, 4: 2365, 5: 4}
    assert collections.Counter(len(d.choices) for d in load_docs("arc_challenge")) == {3: 4, 4: 1165, 5: 3}
    wino_labels = [int(x) - 1 for x in (data / "winogrande" / "dev-labels.lst").read_text().split()]
    assert [d.gold for d in load_docs("winogrande")] == wino_labels


def test_prompt_formats_first_documents(data):
    """Document 0 of each task, written out from the harness's templates."""
    piqa = load_docs("piqa", 1)[0]
    assert piqa.requests[0] == (
        "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
        " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, "
        "you will also need to supply it with a water bottle and a food dish.")
    assert piqa.gold == 0 and piqa.requests[1][1].startswith(" Provide") and "jeans" in piqa.requests[1][1]

    arc = load_docs("arc_easy", 1)[0]
    ctx = "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    assert arc.requests == tuple((ctx, " " + c) for c in (
        "Sunlight is the source of energy for nearly all ecosystems.",
        "Most ecosystems are found on land instead of in water.",
        "Carbon dioxide is more available than other gases.",
        "The producers in all ecosystems are plants."))
    assert arc.gold == 0
    ch = load_docs("arc_challenge", 1)[0]
    assert ch.requests[0][0] == ("Question: An astronomer observes that a planet rotates faster after a meteorite "
                                 "impact. Which is the most likely effect of this increase in rotation?\nAnswer:")
    assert ch.choices[ch.gold] == "Planetary days will become shorter."

    hs = load_docs("hellaswag", 2)
    assert hs[0].requests[3] == ("Roof shingle removal: A man is sitting on a roof. He",
                                 " starts pulling up roofing on a roof.")
    assert hs[1].requests[0][0] == ("Clean and jerk: A lady walks to a barbell. She bends down and grabs the "
                                    "pole. The lady")
    assert (hs[0].gold, hs[1].gold) == (3, 3)

    wino = load_docs("winogrande", 1)[0]
    assert wino.requests == (("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                             ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."))
    assert wino.gold == 1

    bq = load_docs("boolq", 1)[0]
    ctx = bq.requests[0][0]
    assert ctx.startswith("Ethanol fuel -- All biomass goes through at least some of these steps: it needs to be grown")
    assert ctx.endswith("uses much less petroleum than producing gasoline.\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert bq.requests == ((ctx, " no"), (ctx, " yes")) and bq.gold == 0

    obqa = load_docs("openbookqa", 1)[0]
    stem = ("A person wants to start saving money so that they can afford a nice vacation at the end of the year. "
            "After looking over their budget and expenses, they decide the best way to save money is to")
    assert obqa.requests[1] == (stem, " quit eating lunch out") and obqa.gold == 1


def test_hellaswag_text_processing():
    # the harness: ctx_b.capitalize(), " [title]" -> ". ", other tags removed, double spaces collapsed
    assert hellaswag_query("Roof: A man is on a roof. the Man") == "Roof: A man is on a roof. The man"
    assert hellaswag_query("Home: How to cook. Boil water.") == "Home: How to cook. Boil water."
    assert hellaswag_query("Pets: Brush the dog [portrait] daily. then") == "Pets: Brush the dog daily. Then"
    assert hellaswag_preprocess(" Go [title] Stop [step] now  ") == "Go. Stop now"


def test_limit_and_data_errors(data, tmp_path, monkeypatch):
    assert load_docs("piqa", 3) == load_docs("piqa")[:3]
    with pytest.raises(LarosaError, match="limit must be >= 1"):
        load_docs("piqa", 0)
    with pytest.raises(LarosaError, match="unknown task 'mmlu'"):
        load_docs("mmlu")
    monkeypatch.setenv("LAROSA_DATA", str(tmp_path))
    with pytest.raises(LarosaError, match="not found"):
        load_docs("boolq")
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "dev.jsonl").write_text('{"question": "q", "title": "t"}\n')
    with pytest.raises(LarosaError, match="cannot read"):
        load_docs("boolq")


# -- the scorer on fake models ----------------------------------------------------------------

class FakeModel:
    """Character tokens; the next-token logits are a bigram table (plus, with history=True, terms
    that depend on the whole cached history and the position, so a stale cache would show)."""
    CHARS = "x abé"

    def __init__(self, logits: np.ndarray, n_ctx: int = 64, history: bool = False, bos: int | None = None):
        self.table, self.n_ctx, self.history, self.bos = logits, n_ctx, history, bos
        self.tokens: list[int] = []
        self.evaluated = 0
        rng = np.random.default_rng(1)
        self.h_sum, self.h_pos = rng.normal(size=(7, logits.shape[1])), rng.normal(size=(5, logits.shape[1]))

    def tokenize(self, text: str) -> list[int]:
        ids = [self.CHARS.index(c) for c in text]
        return ids if self.bos is None else [self.bos] + ids

    def reset(self) -> None:
        self.tokens = []

    def rewind(self, n: int) -> None:
        assert 0 <= n <= len(self.tokens)
        self.tokens = self.tokens[:n]

    def _logits(self) -> np.ndarray:
        row = self.table[self.tokens[-1]].copy()
        if self.history:
            row += self.h_sum[sum(self.tokens) % 7] + self.h_pos[len(self.tokens) % 5]
        return row

    def eval(self, tokens: list[int], all_logits: bool = False) -> np.ndarray:
        assert tokens and len(self.tokens) + len(tokens) <= self.n_ctx
        rows = []
        for t in tokens:
            self.tokens.append(t)
            rows.append(self._logits())
        self.evaluated += len(tokens)
        return np.array(rows, dtype=np.float32) if all_logits else np.array(rows[-1], dtype=np.float32)


# P[prev, next] over the tokens x, ' ', a, b, é; logits = log P + a per-row offset (softmax ignores it)
P = np.array([[1 / 8, 1 / 2, 1 / 8, 1 / 8, 1 / 8],
              [1 / 8, 1 / 8, 1 / 4, 1 / 4, 1 / 4],
              [1 / 4, 1 / 4, 1 / 4, 1 / 8, 1 / 8],
              [1 / 4, 1 / 4, 1 / 8, 1 / 4, 1 / 8],
              [1 / 4, 1 / 4, 1 / 4, 1 / 8, 1 / 8]])
BIGRAM = np.log(P) + np.array([[5.0], [-3.0], [0.5], [2.0], [-1.0]])


def test_scorer_hand_computed():
    """Doc A: ll(" a") = log(1/2 * 1/4) = -3 ln2, ll(" bbbb") = log(1/2 * 1/4 * (1/4)^3) = -9 ln2:
    acc picks "a" (wrong), acc_norm -3/1 < -9/4 picks "bbbb" (gold); dividing by the length with
    the delimiter (-3/2 > -9/5) would not. Doc B: ll(" é") = -3 ln2, ll(" bb") = -5 ln2: acc right,
    acc_norm by characters -3/1 < -5/2 wrong (by UTF-8 bytes, -3/2 > -5/2, it would be right)."""
    m = FakeModel(BIGRAM)
    s = Scorer(m)
    a = score_doc(s, Doc.shared_context("x", ["a", "bbbb"], gold=1))
    np.testing.assert_allclose(a.lls, [-3 * LN2, -9 * LN2], rtol=1e-6)
    assert (a.acc, a.acc_norm) == (0.0, 1.0)
    b = score_doc(s, Doc.shared_context("x", ["é", "bb"], gold=0))
    np.testing.assert_allclose(b.lls, [-3 * LN2, -5 * LN2], rtol=1e-6)
    assert (b.acc, b.acc_norm) == (1.0, 0.0)
    # the context ran once per document, each choice all but its last token
    assert m.evaluated == (1 + 1 + 4) + (1 + 1 + 2)


def test_evaluate_task_means_and_stderr():
    docs = [Doc.shared_context("x", ["a", "bbbb"], 1), Doc.shared_context("x", ["é", "bb"], 0),
            Doc.shared_context("x", ["a", "b"], 0)]           # ll -3 vs -3 ln2: argmax takes the first
    r = evaluate_task(Scorer(FakeModel(BIGRAM)), "piqa", docs, progress=False)
    assert r.n == 3 and r.metrics == pytest.approx({"acc": 2 / 3, "acc_norm": 2 / 3})
    # sample sd of (0, 1, 1) = sqrt(1/3), over sqrt(3)
    assert r.stderr["acc"] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))
    assert set(evaluate_task(Scorer(FakeModel(BIGRAM)), "boolq", docs, progress=False).metrics) == {"acc"}
    assert mean_stderr([1, 0, 0, 1, 1]) == pytest.approx(math.sqrt(0.3) / math.sqrt(5))
    assert mean_stderr([1.0]) is None


def fresh_loglikelihood(model: FakeModel, ctx: list[int], cont: list[int]) -> float:
    """The harness's computation, written out: one fresh pass over the truncated window."""
    window = (ctx + cont)[-(model.n_ctx + 1):][:-1]
    model.tokens = []
    logits = model.eval(window, all_logits=True).astype(np.float64)
    total = 0.0
    for j, tok in enumerate(cont):
        row = logits[len(window) - len(cont) + j]
        total += row[tok] - math.log(np.exp(row).sum())
    return total


@pytest.mark.parametrize("n_ctx,bos", [(64, None), (64, 0), (9, None)])
def test_scorer_cache_matches_fresh_evaluation(n_ctx, bos):
    rng = np.random.default_rng(n_ctx)
    model = FakeModel(rng.normal(size=(5, 5)) * 2, n_ctx=n_ctx, history=True, bos=bos)
    ref = FakeModel(model.table, n_ctx=n_ctx, history=True, bos=bos)
    s = Scorer(model)
    word = lambda k: "".join(rng.choice(list("xabé"), k))
    docs = []
    for i in range(12):
        ctx = word(int(rng.integers(1, 8)))
        conts = [" " + word(int(rng.integers(1, 4))) for _ in range(int(rng.integers(2, 5)))]
        if i % 3 == 2:   # winogrande-like: the choice in the context, a shared continuation
            docs.append(Doc(tuple((ctx + c.strip(), conts[0]) for c in conts), tuple(conts), 0))
        else:
            docs.append(Doc.shared_context(ctx, [c[1:] for c in conts], 0))
    for d in docs:
        got = score_doc(s, d).lls
        want = [fresh_loglikelihood(ref, *encode_pair(ref.tokenize, c, x)) for c, x in d.requests]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (s.truncated > 0) == (n_ctx == 9)


def test_scorer_continuation_longer_than_window():
    with pytest.raises(LarosaError, match="does not fit"):
        Scorer(FakeModel(BIGRAM, n_ctx=3)).loglikelihood("x", " abab")


# -- the tokenization split -------------------------------------------------------------------

def test_encode_pair_moves_trailing_space_and_splits_whole():
    utf8 = lambda s: list(s.encode())
    assert encode_pair(utf8, "Answer:  ", "yes") == (utf8("Answer:"), utf8("  yes"))
    with_bos = lambda s: [1] + list(s.encode())
    assert encode_pair(with_bos, "ab", " c") == ([1, 97, 98], [32, 99])

    # a merging tokenizer: the continuation is whole[len(context_enc):], not encode(continuation)
    def merging(s: str) -> list[int]:
        out, i = [], 0
        while i < len(s):
            if s.startswith(" y", i):
                out.append(1000)
                i += 2
            else:
                out.append(ord(s[i]))
                i += 1
        return out
    assert encode_pair(merging, "A: ", "yes") == ([65, 58], [1000, 101, 115])


def test_encode_pair_smollm2_tokenizer(smollm2):
    from larosa.runtime.tokenizer import Tokenizer
    tok = Tokenizer(smollm2)
    ctx, cont = encode_pair(tok.encode, "Question: Is the sky blue?\nAnswer: ", "yes")
    assert ctx == tok.encode("Question: Is the sky blue?\nAnswer:")
    assert cont == tok.encode(" yes") and len(cont) == 1
    ctx, cont = encode_pair(tok.encode, "Sarah was a better surgeon than Maria so Maria", " always got the easier cases.")
    assert tok.decode(ctx + cont) == "Sarah was a better surgeon than Maria so Maria always got the easier cases."
    assert ctx + cont == tok.encode("Sarah was a better surgeon than Maria so Maria always got the easier cases.")


# -- the C runtime ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_larosa(tmp_path_factory) -> str:
    from larosa.converter import convert as C
    from larosa.tools.make_synthetic import make_synthetic
    d = tmp_path_factory.mktemp("eval_tiny")
    src = make_synthetic(str(d / "src.gguf"), dim=64, ff=128, layers=2, heads=4, kv_heads=2, vocab=512,
                         qtype="q8_0", tied=True, seed=5)
    out = str(d / "tiny.larosa.gguf")
    C.convert(src, out, random_calibration(512), C.Options(sparsity=0.4, progress=False, force=True))
    return out


@pytest.mark.parametrize("n_ctx", [256, 20])
def test_scorer_on_runtime_matches_fresh_eval(data, tiny_larosa, n_ctx):
    """Cache re-use (shared contexts, rewinds, common prefixes across documents) gives the same
    log-likelihoods as evaluating each request's window from an empty cache."""
    from larosa.runtime.evaluate import token_logprobs
    from larosa.runtime.model import Model
    m = Model(tiny_larosa, n_threads=1, n_ctx=n_ctx)
    assert m.tokenizer.add_bos   # the synthetic vocabulary adds BOS: context_enc starts with it
    s = Scorer(m)
    docs = load_docs("winogrande", 2) + [Doc.shared_context("a b", ["c d", "e", "a b c"], 0)]
    for d in docs:
        got = score_doc(s, d).lls
        for (c, x), ll in zip(d.requests, got):
            ctx, cont = encode_pair(m.tokenize, c, x)
            window = (ctx + cont)[-(n_ctx + 1):][:-1]
            m.reset()
            logits = m.eval(window, all_logits=True)[len(window) - len(cont):]
            assert ll == pytest.approx(float(token_logprobs(logits, cont).sum()), rel=1e-5, abs=1e-4)
    assert (s.truncated > 0) == (n_ctx == 20)


# -- the command line -------------------------------------------------------------------------

def one_error_line(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("larosa-eval: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_cli_errors(data, tmp_path, capsys, monkeypatch):
    missing = str(tmp_path / "none.gguf")
    assert "unknown task 'mmlu'" in one_error_line(capsys, ["-m", missing, "--tasks", "piqa,mmlu"])
    assert "--limit must be >= 1" in one_error_line(capsys, ["-m", missing, "--tasks", "piqa", "--limit", "0"])
    assert "no such file" in one_error_line(capsys, ["-m", missing, "--tasks", "piqa", "--limit", "1"])
    with pytest.raises(SystemExit) as e:   # argparse's own errors: one line too, and exit 1
        main(["-m", missing, "--tasks", "piqa", "--limit", "many"])
    assert e.value.code == 1 and capsys.readouterr().err.count("\n") == 1
    monkeypatch.setenv("LAROSA_DATA", str(tmp_path))
    assert "not found" in one_error_line(capsys, ["-m", missing, "--tasks", "arc_easy"])


@pytest.fixture(scope="session")
def smol_larosa(smollm2_q8) -> str:
    return smollm2_q8      # conftest.py: SmolLM2 converted once per session


def test_loglikelihoods_match_llama_cpp_on_source(data, smollm2, smol_larosa):
    """At sparsity 0 the converted model is the source up to requantization (Q4_1 -> Q8_0): the
    scorer's log-likelihoods agree with llama.cpp's on the source GGUF request by request (a
    logit row off by one position would be off by several nats)."""
    from llama_cpp import Llama

    from larosa.runtime.evaluate import token_logprobs
    from larosa.runtime.model import Model
    m = Model(smol_larosa, sparsity=0.0, n_threads=1, n_ctx=256)
    llm = Llama(smollm2, n_ctx=256, logits_all=True, n_threads=1, verbose=False)
    s, diffs = Scorer(m), []
    for d in load_docs("openbookqa", 1) + load_docs("winogrande", 1):
        for c, x in d.requests:
            ctx, cont = encode_pair(m.tokenize, c, x)
            llm.reset()
            llm.eval(ctx + cont)
            logits = np.array(llm.scores[len(ctx) - 1: len(ctx) + len(cont) - 1])
            diffs.append(s.loglikelihood(c, x) - float(token_logprobs(logits, cont).sum()))
    assert len(diffs) == 6
    assert max(map(abs, diffs)) < 1.0 and float(np.mean(np.abs(diffs))) < 0.3, np.round(diffs, 3)


def test_end_to_end_smollm2(data, smol_larosa, capsys):
    from larosa.runtime.loader import load
    assert main(["-m", smol_larosa, "--tasks", "arc_easy,winogrande", "--limit", "5", "-t", "1", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    res = json.loads(out[-1])
    assert res["sparsity"] == pytest.approx(0.4)
    f = load(smol_larosa)
    assert res["bytes_per_token"] == f.bytes_per_token(0.4)
    # Top-K: the measured fraction is exact; every block weight has one type, so bytes ~ rows * out width
    hp, ks = f.hp, f.ks(0.4)
    out_width = {"attn_in": hp.qkv_dim, "attn_out": hp.dim, "mlp_in": 2 * hp.ffn_dim, "mlp_out": hp.dim}
    read = sum(k * out_width[b] for b in ks for k in ks[b])
    dense = hp.n_layers * sum(hp.block_input_width(b) * w for b, w in out_width.items())
    assert res["skipped_fraction"] == pytest.approx(1 - read / dense, abs=1e-9)
    assert set(res["arc_easy"]) >= {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}
    assert "acc_norm" not in res["winogrande"]
    for task in ("arc_easy", "winogrande"):
        r = res[task]
        assert r["n"] == 5
        for k in [k for k in ("acc", "acc_norm") if k in r]:
            p = r[k]
            assert p * 5 == pytest.approx(round(p * 5))   # a mean of five 0/1 scores
            assert r[f"{k}_stderr"] == pytest.approx(math.sqrt(p * (1 - p) * 5 / 4 / 5))
    assert any(line.startswith("arc_easy") for line in out) and any(line.startswith("winogrande") for line in out)

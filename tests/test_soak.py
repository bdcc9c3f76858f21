"""Load and faults over time: many generations back to back with flat memory, the KV cache filled
to its last position and one past it, several models in one process and in several threads, and
activations that overflow from finite weights."""
import gc
import os
import shutil
import threading
import time

import numpy as np
import pytest
from gguf import GGUFReader

from larosa.runtime import format as F
from larosa.runtime.generate import Sampling
from larosa.runtime.model import ContextError, Model, NumericsError

SOAK_SECONDS = 35      # the whole soak, warm-up included
WARMUP_ROUNDS = 3
MIN_ROUNDS = 6         # measured rounds, even on a slow machine
GROWTH_SLACK = 2 << 20  # bytes; measured: +0 to 0.55 MiB over 60 rounds, +1.8 MiB with a 100-byte leak per eval
GREEDY = Sampling(temperature=0)


def anon_rss() -> int:
    """Resident memory not backed by a file (/proc/self/statm: resident - shared pages). The weights
    are memory-mapped: their pages join the RSS as Top-K first touches them, which is no leak."""
    with open("/proc/self/statm") as f:
        _, resident, shared = (int(x) for x in f.read().split()[:3])
    return (resident - shared) * os.sysconf("SC_PAGE_SIZE")


def handles(paths) -> tuple[int, int, int]:
    """Open descriptors, mappings of the model files, threads: a freed Model gives all back."""
    with open("/proc/self/maps") as f:
        maps = sum(1 for line in f if any(p in line for p in paths))
    return len(os.listdir("/proc/self/fd")), maps, len(os.listdir("/proc/self/task"))


def scaled_copy(src: str, dst, name: str, scale: float) -> str:
    """A copy of a converted file with the F32 tensor `name` multiplied by scale (finite)."""
    shutil.copy(src, dst)
    t = {t.name: t for t in GGUFReader(str(dst)).tensors}[name]
    assert t.tensor_type.name == "F32"
    data = np.asarray(t.data, dtype=np.float32).reshape(-1) * np.float32(scale)
    assert np.isfinite(data).all()
    with open(dst, "r+b") as f:
        f.seek(t.data_offset)
        f.write(data.tobytes())
    return str(dst)


def soak_round(i: int, keep: Model, converted: dict, huge: str) -> int:
    """One round of everything a long session does; returns the tokens generated."""
    rng = np.random.default_rng(i)
    n = 0
    for j in range(4):      # the long-lived model: sampled generations to the full context
        prompt = rng.integers(0, keep.hp.n_vocab, 8 + j).tolist()
        out = list(keep.generate_tokens(prompt, 200, Sampling(seed=i * 4 + j)))
        assert 1 <= len(out) <= keep.n_ctx - len(prompt) + 1
        keep.rewind(len(prompt) + 2)
        keep.eval_prompt(prompt + out[:4])   # prefix re-use
        n += len(out)
    n += len(list(keep.generate("hello world", max_tokens=24, stop=["zz"], temperature=0.7, seed=i)))
    with pytest.raises(ContextError):
        keep.eval([1] * (keep.n_ctx - len(keep.tokens) + 1))
    with pytest.raises(ValueError):
        keep.eval([keep.hp.n_vocab])
    names = sorted(converted)           # a short-lived model: load, evaluate, change sparsity, free
    m = Model(converted[names[i % len(names)]], n_threads=2, n_ctx=40, sparsity=0.3)
    assert np.isfinite(m.eval(rng.integers(0, m.hp.n_vocab, 30).tolist(), all_logits=True)).all()
    m.set_sparsity(0.6)
    n += len(list(m.generate_tokens([1, 2, 3], 16, GREEDY)))
    del m
    h = Model(huge, n_threads=1, n_ctx=8)    # the error path
    with pytest.raises(NumericsError):
        h.eval([1, 2, 3])
    del h
    return n


def test_soak_memory_stays_flat(converted, tmp_path):
    start = time.monotonic()
    huge = scaled_copy(converted["untied_f32"], tmp_path / "huge.gguf", F.T_GATE_UP(0), 1e30)
    keep = Model(converted["tied_q8"], n_threads=2, n_ctx=64, sparsity=0.4)
    files = list(converted.values()) + [huge]
    samples, held, tokens, rounds = [], [], 0, 0
    while rounds < WARMUP_ROUNDS + MIN_ROUNDS or time.monotonic() - start < SOAK_SECONDS:
        tokens += soak_round(rounds, keep, converted, huge)
        rounds += 1
        if rounds > WARMUP_ROUNDS:
            gc.collect()
            samples.append(anon_rss())
            held.append(handles(files))
    s = np.array(samples, dtype=np.float64)
    slope = np.polyfit(np.arange(len(s)), s, 1)[0]          # bytes per round
    print(f"soak: {rounds} rounds, {tokens} tokens in {time.monotonic() - start:.1f} s; anonymous RSS "
          f"{s[0] / 2**20:.2f} -> {s[-1] / 2**20:.2f} MiB (max {s.max() / 2**20:.2f}), "
          f"trend {slope / 1024:+.1f} KiB/round")
    assert tokens > 100 * rounds
    assert held == [held[0]] * len(held), "descriptors, mappings or threads leak"
    assert s.max() - s[0] < GROWTH_SLACK, "memory grows over the soak"
    assert slope * len(s) < GROWTH_SLACK / 2, "memory has a growth trend"


@pytest.mark.parametrize("sparsity", [0.0, 0.4])
def test_context_filled_exactly_then_one_more(converted, sparsity):
    n_ctx, prompt = 80, list(range(5, 25))          # 80 > one 64-token prefill batch
    path = converted["tied_q8"]
    m = Model(path, n_threads=2, n_ctx=n_ctx, sparsity=sparsity)
    out = list(m.generate_tokens(prompt, 1000, GREEDY))
    assert len(out) == n_ctx - len(prompt) + 1      # the last one is sampled, not evaluated
    assert m.tokens == prompt + out[:-1] and len(m.tokens) == n_ctx

    fresh = Model(path, n_threads=2, n_ctx=n_ctx, sparsity=sparsity)   # the same path, by hand
    last, _ = fresh.eval_prompt(prompt)
    steps = [last]
    for t in out[:-1]:
        steps.append(fresh.eval([t]))
    assert [int(np.argmax(x)) for x in steps] == out
    # one batched call to the last position: the same bits (the prompt path computes each token as
    # the decode step does, the F16 adapters of this larosa-method file included)
    batched = Model(path, n_threads=2, n_ctx=n_ctx, sparsity=sparsity).eval(m.tokens, all_logits=True)
    np.testing.assert_array_equal(batched[len(prompt) - 1:].view(np.uint32), np.stack(steps).view(np.uint32))

    cached = list(m.tokens)                          # one more token: refused, nothing lost
    with pytest.raises(ContextError, match="exceed n_ctx"):
        m.eval([out[-1]])
    with pytest.raises(ContextError):
        m.eval_prompt(cached + [out[-1]])
    with pytest.raises(ContextError):
        list(m.generate_tokens(cached + [out[-1]], 4, GREEDY))
    with pytest.raises(ContextError):
        m.eval_prompt([1] + cached)                  # diverges at once: too long all the same
    with pytest.raises(ValueError):
        m.eval_prompt([])
    assert m.tokens == cached
    assert list(m.generate_tokens(cached, 5, GREEDY)) == [out[-1]]   # full prompt: one token
    m.rewind(n_ctx - 1)
    np.testing.assert_array_equal(m.eval([cached[-1]]), steps[-1])


def run_alone(path: str, sparsity: float, tokens: list[int]) -> np.ndarray:
    m = Model(path, n_threads=2, n_ctx=64, sparsity=sparsity)
    rows = [m.eval_prompt(tokens[:8])[0]] + [m.eval([t]) for t in tokens[8:]]
    return np.stack(rows)


SPECS = [("tied_q8", 0.4), ("tied_q8", 0.7), ("gqa_q4", 0.5), ("odd_f16", 0.0)]


def spec_tokens(converted, k: int) -> list[int]:
    vocab = Model(converted[SPECS[k][0]], n_threads=1, n_ctx=8).hp.n_vocab
    return np.random.default_rng(k).integers(0, vocab, 40).tolist()


def test_models_interleaved_match_each_alone(converted):
    seqs = [spec_tokens(converted, k) for k in range(len(SPECS))]
    alone = [run_alone(converted[n], s, t) for (n, s), t in zip(SPECS, seqs)]
    models = [Model(converted[n], n_threads=2, n_ctx=64, sparsity=s) for n, s in SPECS]
    rows = [[m.eval_prompt(t[:8])[0]] for m, t in zip(models, seqs)]
    for pos in range(8, 40):                         # one token of each model in turn
        for m, t, r in zip(models, seqs, rows):
            r.append(m.eval([t[pos]]))
    for r, a in zip(rows, alone):
        np.testing.assert_array_equal(np.stack(r), a)


def run_threads(fns) -> list:
    """Runs the functions in threads started together; their results, or their exception."""
    results, go = [None] * len(fns), threading.Barrier(len(fns))

    def run(i):
        go.wait()
        try:
            results[i] = fns[i]()
        except BaseException as e:  # re-raised in the test's thread
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hangs"
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_threads_with_their_own_models_match_sequential(converted):
    specs = SPECS[:2] + SPECS[2:3]
    seqs = [spec_tokens(converted, k) for k in range(len(specs))]

    def job(k):
        def f():
            gen = Model(converted[specs[k][0]], n_threads=2, n_ctx=64, sparsity=specs[k][1])
            out = list(gen.generate_tokens(seqs[k][:8], 30, Sampling(seed=k)))
            return run_alone(converted[specs[k][0]], specs[k][1], seqs[k]), out
        return f
    sequential = [job(k)() for k in range(len(specs))]
    for _ in range(3):
        concurrent = run_threads([job(k) for k in range(len(specs))])
        for (a, out_a), (b, out_b) in zip(sequential, concurrent):
            np.testing.assert_array_equal(a, b)
            assert out_a == out_b


def test_one_model_shared_by_threads_stays_consistent(converted):
    """Documented: do not share a Model, but its calls are locked, so each eval_prompt of a thread
    sees the cache as some previous call left it and returns that prompt's logits exactly."""
    path = converted["tied_q8"]
    prompts = [[3 + k] + spec_tokens(converted, 0)[k:k + 11] for k in range(2)]   # no common prefix
    ref = [Model(path, n_threads=2, n_ctx=64, sparsity=0.4).eval_prompt(p)[0] for p in prompts]
    m = Model(path, n_threads=2, n_ctx=64, sparsity=0.4)

    def job(k):
        def f():
            for _ in range(60):
                logits, _ = m.eval_prompt(prompts[k])
                np.testing.assert_array_equal(logits, ref[k])
                m.eval([1, 2])                       # moves the cache under the other thread
            return True
        return f
    assert run_threads([job(0), job(1)]) == [True, True]
    # after the last eval_prompt (either thread's) come its own eval and at most one of the other's
    assert any(m.tokens in (p + [1, 2], p + [1, 2, 1, 2]) for p in prompts), m.tokens


HUGE = {   # F32 tensor of untied_f32 -> a finite factor; the activations stay inside float32
    "embedding x1e25": (F.T_EMBD, 1e25),
    "embedding x1e37": (F.T_EMBD, 1e37),
    "gate/up x1e18": (F.T_GATE_UP(0), 1e18),
    "down x1e30": (F.T_DOWN(1), 1e30),
}


@pytest.mark.parametrize("name", list(HUGE))
def test_huge_finite_weights_compute(converted, tmp_path, name):
    """A residual stream of |x| up to ~1e38 is still a valid input of the RMS norm (its sum of squares
    is taken in double; in float32 it overflowed from ~1e19 and zeroed every logit)."""
    p = scaled_copy(converted["untied_f32"], tmp_path / "big.gguf", *HUGE[name])
    m = Model(p, n_threads=1, sparsity=0.0)
    for toks in ([1, 5, 9], [7]):                    # batched prompt path, single-token decode path
        m.reset()
        logits = m.eval(toks, all_logits=True)
        assert np.isfinite(logits).all() and (np.ptp(logits, axis=-1) > 0.1).all()


def test_activations_overflowing_float32_are_reported(converted, tmp_path):
    """gate/up x1e30: SiLU(g) u overflows to Inf, and NaN follows: reported, never garbage text."""
    p = scaled_copy(converted["untied_f32"], tmp_path / "big.gguf", F.T_GATE_UP(0), 1e30)
    m = Model(p, n_threads=1, sparsity=0.0)
    with pytest.raises(NumericsError):
        m.eval([1, 5, 9])                            # batched prompt path
    assert m.tokens == [1, 5, 9]                     # evaluated and cached, as with NaN logits
    m.reset()
    with pytest.raises(NumericsError):
        m.eval([7])                                  # single-token decode path
    m.reset()
    with pytest.raises(NumericsError):
        m.eval([1, 5, 9], all_logits=True)
    with pytest.raises(NumericsError):
        list(m.generate("hello", max_tokens=4, temperature=0))


def test_large_finite_weights_without_overflow_are_not_flagged(converted, tmp_path):
    p = scaled_copy(converted["untied_f32"], tmp_path / "big.gguf", F.T_EMBD, 1e6)
    m = Model(p, n_threads=1, sparsity=0.0)
    logits = m.eval([1, 5, 9], all_logits=True)
    assert np.isfinite(logits).all() and (np.ptp(logits, axis=-1) > 0).all()
    assert len(list(m.generate_tokens([1, 2, 3], 8, GREEDY))) >= 1


SMOL_SECONDS = 12


def test_smollm2_session_memory_stays_flat(smollm2_q8):
    """A long chat-like session on the real model: growing prompts with a shared prefix (prefix
    re-use, prompts over one 64-token batch), sampled text with a stop string, to the full context."""
    start = time.monotonic()
    m = Model(smollm2_q8, n_threads=2, n_ctx=160)
    m.wait_huge_pages()   # load's background move (one thread until done) is not the session's
    history, samples, held, rounds = "The weather today is", [], [], 0
    while rounds < 2 + 4 or time.monotonic() - start < SMOL_SECONDS:
        prompt = m.tokenize(history)
        if len(prompt) > 120:
            history, prompt = history[-200:], m.tokenize(history[-200:])
        text = "".join(m.generate(prompt, max_tokens=12, stop=["\n\n"], temperature=0.8, seed=rounds))
        assert m.tokens[:len(prompt)] == prompt
        history += text + " And then"
        rounds += 1
        if rounds > 2:
            gc.collect()
            samples.append(anon_rss())
            held.append(handles([smollm2_q8]))
    tail = m.tokenize(history)[-150:]                # <= 150 tokens: history may have been cut
    full = list(m.generate_tokens(tail, m.n_ctx, GREEDY))   # more than fits: the context ends it
    assert m.tokenizer.is_eog(full[-1]) or (len(m.tokens) == m.n_ctx
                                            and len(full) == m.n_ctx - len(tail) + 1)
    s = np.array(samples, dtype=np.float64)
    print(f"smollm2 soak: {rounds} rounds in {time.monotonic() - start:.1f} s; anonymous RSS "
          f"{s[0] / 2**20:.2f} -> {s[-1] / 2**20:.2f} MiB (max {s.max() / 2**20:.2f})")
    assert held == [held[0]] * len(held), "descriptors, mappings or threads leak"
    assert s.max() - s[0] < GROWTH_SLACK, "memory grows over the session"

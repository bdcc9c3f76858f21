"""The sampler's edge values follow llama-cpp-python (generate.Sampling's docstring lists them):
each meaningful value gives a defined, NaN-free draw; values with no meaning are refused clearly."""
from __future__ import annotations

import math

import numpy as np
import pytest

from larosa.runtime.generate import Sampling, sample

LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05, 1e-9], dtype=np.float32))
OFF = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "temperature": 1.0}


def drawn(logits=LOGITS, n=400, history=(), **kw) -> dict[int, int]:
    """token -> times drawn in n draws."""
    s = Sampling(**{**OFF, **kw})
    rng = np.random.default_rng(0)
    out: dict[int, int] = {}
    for _ in range(n):
        t = sample(np.asarray(logits, dtype=np.float32), s, rng, list(history))
        out[t] = out.get(t, 0) + 1
    return out


def test_temperature_edges():
    assert set(drawn(temperature=0)) == {0}                       # greedy
    for tiny in (5e-324, 1e-300, 1e-30, 1e-8):                     # the limit is greedy, never NaN
        assert set(drawn(temperature=tiny, n=50)) == {0}
    tied = np.array([1.0, 3.0, 3.0, -2.0])                         # ties at the top share
    assert set(drawn(tied, temperature=5e-324)) == {1, 2}
    assert set(drawn(tied, temperature=0)) == {1}                  # greedy: the first of the ties
    flat = drawn(temperature=math.inf, n=4000)                     # uniform over all 5
    assert set(flat) == {0, 1, 2, 3, 4} and min(flat.values()) > 600
    assert 4 in drawn(temperature=1e300, n=2000)
    # negative: llama-cpp-python draws from the plain distribution (temperature 1), no filters
    neg = drawn(temperature=-1.0, top_k=1, top_p=0.1, min_p=0.9, n=4000)
    assert set(neg) == {0, 1, 2, 3} and abs(neg[0] / 4000 - 0.5) < 0.03 and abs(neg[1] / 4000 - 0.3) < 0.03
    assert drawn(temperature=-math.inf, n=200).keys() <= {0, 1, 2, 3, 4}


def test_top_k_edges():
    assert set(drawn(top_k=2)) == {0, 1}
    assert set(drawn(top_k=1)) == {0}
    for off in (0, -1, -40, 5, 10**9):                             # <= 0 or >= vocabulary: off
        assert set(drawn(top_k=off)) == {0, 1, 2, 3}
    assert set(drawn(top_k=np.int64(2))) == {0, 1}


def test_top_p_edges():
    assert set(drawn(top_p=0)) == {0}                              # llama-cpp-python: greedy
    assert set(drawn(top_p=1e-12)) == {0}
    assert set(drawn(top_p=0.5)) == {0}                            # 0.5 reaches 0.5
    assert set(drawn(top_p=0.7)) == {0, 1}
    for off in (1.0, 1.5, math.inf):
        assert set(drawn(top_p=off)) == {0, 1, 2, 3}


def test_min_p_edges():
    assert set(drawn(min_p=0.25)) == {0, 1, 2}                     # p >= 0.25 * 0.5
    assert set(drawn(min_p=0)) == {0, 1, 2, 3}
    for strict in (1.0, 2.0, math.inf):                            # only the most likely token stays
        assert set(drawn(min_p=strict)) == {0}
    assert set(drawn(np.array([2.0, 2.0, 0.0]), min_p=1.0)) == {0, 1}   # and its ties


def test_repeat_penalty_and_window():
    assert set(drawn(temperature=0, repeat_penalty=4.0, history=[0])) == {1}   # 0.5 / 4 < 0.3 (log space)
    assert set(drawn(temperature=0, repeat_penalty=4.0, history=[0], repeat_last_n=0)) == {0}
    assert set(drawn(temperature=0, repeat_penalty=4.0, history=[0, 3, 3], repeat_last_n=2)) == {0}
    assert set(drawn(temperature=0, repeat_penalty=4.0, history=[0, 3, 3], repeat_last_n=-1)) == {1}
    # extreme but finite penalties: logits overflow to +-inf, still no NaN
    pos = np.array([5.0, 4.0, -3.0, 1.0])
    assert set(drawn(pos, repeat_penalty=1e-308, history=[0, 1])) == {0, 1}       # +inf: those share
    assert set(drawn(pos, repeat_penalty=1e308, history=[0, 1, 2], n=300)) == {0, 1, 3}  # 2 went to -inf
    every = np.array([-10.0, -20.0])
    assert set(drawn(every, repeat_penalty=1e308, history=[0, 1], n=200)) == {0, 1}  # all -inf: all share
    assert set(drawn(pos, repeat_penalty=0.5, history=[3], temperature=0)) == {0}


def test_seed_conventions():
    logits = np.linspace(0, 1, 50).astype(np.float32)
    def run(seed):
        s = Sampling(**{**OFF, "seed": seed})
        rng = s.rng()
        return [sample(logits, s, rng, []) for _ in range(30)]
    assert run(7) == run(7) != run(8)
    assert run(-2) == run(2**32 - 2)                               # 32-bit, as llama.cpp's seeds
    assert len({tuple(run(None)), tuple(run(-1)), tuple(run(0xFFFFFFFF))}) == 3   # random each time


@pytest.mark.parametrize("bad", [
    {"temperature": math.nan}, {"top_p": math.nan}, {"min_p": math.nan}, {"repeat_penalty": math.nan},
    {"top_p": -0.1}, {"min_p": -1e-9}, {"repeat_penalty": 0}, {"repeat_penalty": -1.0},
    {"repeat_penalty": math.inf}, {"top_k": 2.5}, {"top_k": "40"}, {"temperature": "hot"},
    {"repeat_last_n": -2}, {"seed": 1.5}, {"temperature": True},
])
def test_meaningless_values_are_refused(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=name):
        Sampling(**bad)


def test_no_nan_over_a_grid_of_finite_values():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(64).astype(np.float32) * 20
    grid = [0.0, 5e-324, 1e-12, 0.3, 1.0, 7.0, 1e12, 1e308]
    for t in grid + [-1.0]:
        for p in (0.0, 1e-9, 0.5, 1.0, 3.0):
            for k in (-1, 0, 1, 3, 64):
                s = Sampling(temperature=t, top_p=p, min_p=min(p, 2.0), top_k=k, repeat_penalty=1e-3,
                             seed=0)
                tok = sample(logits, s, s.rng(), [1, 2, 3])
                assert 0 <= tok < 64

"""The block weights' copy on 2 MiB pages (runtime/hugepages.py): the same bytes as the file, the
same logits as the file mapping, before and after the background collapse."""
import os

import numpy as np
import pytest

from larosa.runtime import hugepages
from larosa.runtime.model import Model

needs_thp = pytest.mark.skipif(not hugepages.available(), reason="no transparent huge pages on this kernel")


def test_arena_reads_the_files_bytes(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 3 * hugepages.HUGE + 12345, dtype=np.uint8)
    p = tmp_path / "blob"
    p.write_bytes(data.tobytes())
    spans = [(0, 100), (777, hugepages.HUGE + 5), (2 * hugepages.HUGE + 1, 999)]
    arena = hugepages.Arena(sum(n + 64 for _, n in spans))
    assert arena.address % hugepages.HUGE == 0
    with open(p, "rb") as f:
        outs = [arena.place(f.fileno(), off, n) for off, n in spans]
    for (off, n), out in zip(spans, outs):
        assert out.ctypes.data % 64 == 0
        np.testing.assert_array_equal(out, data[off:off + n])
    with pytest.raises(ValueError, match="cannot hold"):
        with open(p, "rb") as f:
            arena.place(f.fileno(), 0, arena.buf.nbytes)


@needs_thp
def test_collapse_keeps_the_bytes(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 4 * hugepages.HUGE, dtype=np.uint8)
    p = tmp_path / "blob"
    p.write_bytes(data.tobytes())
    arena = hugepages.Arena(data.nbytes)
    with open(p, "rb") as f:
        out = arena.place(f.fileno(), 0, data.nbytes)
    c = hugepages.Collapser([(arena.address, arena.buf.nbytes)])
    assert c.wait(60)
    assert c.huge_bytes % hugepages.HUGE == 0 and c.huge_bytes <= arena.buf.nbytes
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("name", ["tied_q8", "gqa_q4", "odd_f16"])
def test_logits_same_bits_with_and_without_the_copy(converted, name, monkeypatch):
    rng = np.random.default_rng(2)
    out = {}
    for env in ("1", "0"):
        monkeypatch.setenv("LAROSA_HUGEPAGES", env)
        m = Model(converted[name], sparsity=0.4, n_threads=2)
        toks = rng.integers(0, m.hp.n_vocab, 9).tolist() if env == "1" else toks
        first = m.eval(toks[:5])              # while the collapse may still run
        moved = m.wait_huge_pages(60)
        out[env] = (first, m.eval(toks[5:]), moved, m._arena is not None, hugepages.available())
    (a1, b1, moved, arena, avail), (a0, b0, moved0, arena0, _) = out["1"], out["0"]
    np.testing.assert_array_equal(a1, a0)
    np.testing.assert_array_equal(b1, b0)
    assert moved0 == 0 and not arena0
    assert arena == avail and moved % hugepages.HUGE == 0


def test_available_follows_the_switch(monkeypatch):
    monkeypatch.setenv("LAROSA_HUGEPAGES", "0")
    assert not hugepages.available()
    monkeypatch.setenv("LAROSA_HUGEPAGES", "1")
    assert hugepages.available() == (os.path.exists(hugepages._THP) and
                                     "[never]" not in open(hugepages._THP).read())


@needs_thp
def test_collapse_stops_before_the_memory_goes(tmp_path):
    """stop() returns only once the thread has let go: a Model's memory is freed right after."""
    arena = hugepages.Arena(64 * hugepages.HUGE)
    c = hugepages.Collapser([(arena.address, arena.buf.nbytes)])
    c.stop()
    assert c.wait(0) and c.huge_bytes <= arena.buf.nbytes

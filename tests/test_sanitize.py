"""The C library under AddressSanitizer + UBSan, LeakSanitizer and valgrind (tools/sanitize.sh), and
the Python side of load/unload cycles: no finding, nothing left allocated or mapped.

Skips only where gcc has no usable sanitizer runtime (tools/sanitize.sh exits 77) or, for the
valgrind half, where valgrind is not installed (the LeakSanitizer half still runs).
"""
from __future__ import annotations

import ctypes
import gc
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "sanitize.sh"


def _sanitize(part: str, timeout: int) -> str:
    r = subprocess.run(["sh", str(SCRIPT), part], capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT)
    if r.returncode == 77:
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, f"tools/sanitize.sh {part} exited {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    assert "sanitize.sh: no findings" in r.stdout, r.stdout
    return r.stdout


def test_runtime_tests_under_asan_ubsan():
    """The kernel, runtime and error-path tests with a sanitized larosa._kernels: all pass, no report."""
    out = _sanitize("runtime", timeout=420)
    assert "canary overflow reported by ASan" in out        # the sanitized build was really in use
    assert re.search(r"sanitized larosa\._kernels: \S+/ext/larosa/_kernels", out), out
    passed = int(re.search(r"runtime: (\d+) passed", out).group(1))
    assert passed >= 90, out                                   # the whole selection ran, not a few tests


def test_c_library_frees_everything():
    """leak_check.c: model new / eval / free cycles and the refusal and out-of-memory paths of
    lr_model_new, under LeakSanitizer and valgrind memcheck."""
    out = _sanitize("leaks", timeout=300)
    m = re.search(r"LeakSanitizer\): leak_check: (\d+) cycles, (\d+) calls ok, 0 failed, 0 leaks", out)
    assert m and int(m.group(1)) == 20 and int(m.group(2)) > 400, out
    if shutil.which("valgrind"):
        assert re.search(r"valgrind memcheck\): leak_check: 5 cycles, \d+ calls ok, 0 failed, no errors", out), out


# ---- Python: load / unload cycles -------------------------------------------------------------

class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_in_use():
    """bytes malloc has handed out and not got back (glibc, all arenas), or None elsewhere"""
    try:
        f = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    f.restype = _Mallinfo2
    i = f()
    return i.uordblks + i.hblkhd


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _open_handles(path: str) -> tuple[int, int]:
    """(mappings of path, open descriptors of path) in this process"""
    with open("/proc/self/maps") as f:
        maps = sum(line.rstrip().endswith(path) for line in f)
    fds = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds += os.readlink(f"/proc/self/fd/{fd}") == path
        except OSError:
            pass
    return maps, fds


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_load_unload_cycles_leave_nothing(converted):
    """30 Model() + eval + del cycles: the C heap, the RSS, the file's mappings and descriptors
    come back to where they were. The heap check is calibrated by what one live model holds."""
    from larosa.runtime.loader import load
    from larosa.runtime.model import Model
    path = os.path.realpath(converted["tied_q8"])
    tokens = list(range(1, 40))

    def cycle():
        m = Model(path, n_threads=2, n_ctx=2048)
        assert np.isfinite(m.eval(tokens)).all()
        m.eval([5])
        del m
        gc.collect()

    for _ in range(5):                      # warm-up: caches, imports, arenas reach their size
        cycle()
    heap0, rss0 = _heap_in_use(), _rss()
    m = Model(path, n_threads=2, n_ctx=2048)
    m.eval(tokens)
    heap_live = _heap_in_use()
    del m
    gc.collect()
    for _ in range(30):
        cycle()
    heap1, rss1 = _heap_in_use(), _rss()
    assert _open_handles(path) == (0, 0)
    assert rss1 - rss0 < 8 << 20, f"RSS grew by {(rss1 - rss0) >> 10} KiB over 30 cycles"
    if heap0 is None:
        pytest.skip("no mallinfo2 (not glibc): only RSS, mappings and descriptors were checked")
    one_model = heap_live - heap0
    c_bytes = load(path).memory_bytes(2048, 2)   # what lr_model_new allocates: what a leak would add
    assert c_bytes > 1 << 20 and one_model >= c_bytes, (one_model, c_bytes)
    assert heap1 - heap0 < one_model // 4, (
        f"malloc'd bytes in use grew by {heap1 - heap0} over 30 cycles (one live model: {one_model})")
    print(f"30 cycles: heap {heap1 - heap0:+d} B (one live model {one_model} B), RSS {rss1 - rss0:+d} B")

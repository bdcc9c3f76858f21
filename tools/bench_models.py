"""The model pairs of the benchmark: for a shape and a weight type, a dense llama GGUF (run by
llama.cpp) and its LaRoSA conversion, both at that type. Existing files are reused.

    python -m larosa.tools.bench_models --shape llama2-7b --type q4_0 --dir /data/bench
    larosa-bench -m /data/bench/llama2-7b.q4_0.gguf -M /data/bench/llama2-7b.larosa-q4_0.gguf

Synthetic shapes (random weights: speed is real, quality meaningless) are written by
make_synthetic at the type; smollm2 is the cached SmolLM2-135M-Instruct re-quantized by llama.cpp's
own quantizer. The LaRoSA side is converted from the same source with a small calibration
(256 tokens), block weights at the type and the head at the dense file's head type when the
runtime reads it, so both engines read the same bits per weight.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from larosa.runtime import format as F
from larosa.runtime.errors import LarosaError

from .make_synthetic import TYPES, make_synthetic, tensor_plan
from .requantize import RequantizeError, format_counts, requantize

# name -> make_synthetic arguments
SHAPES = {
    "llama2-7b": dict(dim=4096, ff=11008, layers=32, heads=32, kv_heads=32, vocab=32000, tied=False),
    "llama-1b": dict(dim=2048, ff=8192, layers=16, heads=32, kv_heads=8, vocab=128256, tied=True,
                     rope_freqs=True, rope_base=500000.0),   # Llama-3.2-1B-like: tied, llama3 RoPE
    "gqa-1.5b": dict(dim=1536, ff=8960, layers=28, heads=12, kv_heads=2, vocab=151936, tied=True,
                     rope_base=1000000.0),   # Qwen2.5-1.5B-like: tied, 6:1 grouped-query attention
    "small": dict(dim=1024, ff=2816, layers=8, heads=16, kv_heads=16, vocab=32000, tied=False),
}
REAL = ("smollm2",)
CALIB = Path(os.environ.get("LAROSA_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "calibration" / "wikitext2_raw_train_first1MB.txt"
CALIB_TOKENS = 256


def pair_paths(shape: str, qtype: str, folder: str | os.PathLike) -> tuple[Path, Path]:
    d = Path(folder)
    return d / f"{shape}.{qtype}.gguf", d / f"{shape}.larosa-{qtype}.gguf"


def synthetic_bytes(shape: str, qtype: str) -> int:
    """Size of the dense synthetic file's tensor data."""
    a = SHAPES[shape]
    plan = tensor_plan(a["dim"], a["ff"], a["layers"], a["heads"], a["kv_heads"], a["vocab"], a["tied"],
                       a.get("rope_freqs", False))
    qt = TYPES[qtype]
    return sum(F.row_bytes(qt if len(s) == 2 else TYPES["f32"], s[-1]) * (s[0] if len(s) == 2 else 1)
               for _, s in plan)


def _check_space(folder: Path, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < need:
        raise LarosaError(f"{folder}: {free / 2**30:.1f} GiB free, about {need / 2**30:.1f} GiB needed")


def _head_type(dense: Path) -> str | None:
    """The converter's --head-type matching the dense file's head, if the runtime reads that type."""
    from gguf import GGUFReader
    tensors = {t.name: t for t in GGUFReader(str(dense)).tensors}
    head = tensors.get("output.weight", tensors.get("token_embd.weight"))
    names = {qt: n for n, qt in F.WEIGHT_TYPES.items()}
    return names.get(head.tensor_type) if head is not None else None


def make_dense(shape: str, qtype: str, out: Path) -> None:
    if shape == "smollm2":
        from .fetch_model import fetch_smollm2
        counts = requantize(fetch_smollm2(), out, qtype)
        print(f"llama.cpp's quantizer wrote {out.name}: tensors {format_counts(counts)}")
        return
    tmp = out.with_name(out.name + ".tmp")
    try:
        make_synthetic(str(tmp), seed=0, qtype=qtype, **SHAPES[shape])
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def convert(source: Path, dense: Path, qtype: str, out: Path, threads: int | None) -> None:
    from larosa.converter.cli import main as convert_main
    args = [str(source), "-o", str(out), "--type", qtype, "--calib-tokens", str(CALIB_TOKENS),
            "--calib-window", str(CALIB_TOKENS), "-q"]
    if CALIB.is_file():
        args += ["--calib", str(CALIB)]
    head = _head_type(dense)
    if head is not None:
        args += ["--head-type", head]
    if threads:
        args += ["-t", str(threads)]
    if convert_main(args) != 0:
        raise LarosaError(f"conversion of {source} failed")


def build_pair(shape: str, qtype: str, folder: str | os.PathLike, threads: int | None = None) -> tuple[Path, Path]:
    """(dense GGUF, LaRoSA GGUF) for shape and type in folder, made when missing."""
    if shape not in SHAPES and shape not in REAL:
        raise LarosaError(f"unknown shape {shape!r}")
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    dense, sparse = pair_paths(shape, qtype, d)
    if not dense.exists():
        if shape in SHAPES:   # the dense file, then its conversion (about as large), with slack
            _check_space(d, int((1.1 if sparse.exists() else 2.2) * synthetic_bytes(shape, qtype)))
        t0 = time.perf_counter()
        make_dense(shape, qtype, dense)
        print(f"dense {dense}: made in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"dense {dense}: exists, reused")
    if not sparse.exists():
        if shape in SHAPES:
            _check_space(d, int(1.1 * dense.stat().st_size))
        source = dense
        if shape == "smollm2":   # convert the original, not the re-quantized copy
            from .fetch_model import fetch_smollm2
            source = fetch_smollm2()
        t0 = time.perf_counter()
        convert(source, dense, qtype, sparse, threads)
        print(f"larosa {sparse}: converted in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"larosa {sparse}: exists, reused")
    return dense, sparse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_models", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", required=True, choices=[*SHAPES, *REAL])
    p.add_argument("--type", dest="qtype", required=True, choices=["q4_0", "q8_0"])
    p.add_argument("--dir", required=True, help="folder of the model files")
    p.add_argument("-t", "--threads", type=int, help="converter threads (default: all)")
    a = p.parse_args(argv)
    try:
        dense, sparse = build_pair(a.shape, a.qtype, a.dir, a.threads)
    except (LarosaError, RequantizeError, OSError, ValueError) as e:
        print(f"bench_models: error: {e}", file=sys.stderr)
        return 1
    print(f"larosa-bench -m {dense} -M {sparse}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

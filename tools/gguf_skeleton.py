"""A GGUF pair for timing on another machine without copying gigabytes: `skeleton` keeps a file's
header (every key, the tokenizer, the tensor table) and its small tensors (norms, scores, RoPE
factors: real values); `inflate` writes a file of the same layout whose large tensors are filled
with random codes under small valid fp16 scales (ggml Q8_0 / Q4_0 blocks, or a LaRoSA file's I8
codes and F16 scale tables). Speed-only: the values are noise, the shapes, types and keys the
original's, so llama.cpp and larosa read exactly the bytes they read from the original.

    python -m larosa.tools.gguf_skeleton skeleton /tmp/b7/llama2-7b.q4_0.gguf skel/llama2-7b.q4_0
    python -m larosa.tools.gguf_skeleton inflate skel/llama2-7b.q4_0 /data/llama2-7b.q4_0.gguf

Used for the H200 timings of BENCHMARKS.md (the 7B-shape pair of tools/bench_models takes half an
hour to convert on two cores; the device's time is short)."""
from __future__ import annotations

import argparse
import sys

import numpy as np

SMALL = 1 << 20          # tensors below this many bytes are kept with their values
SCALE_LO, SCALE_HI = 2e-4, 4e-4   # fp16 scales of the random blocks: weights of std ~0.02


def skeleton(src: str, out: str) -> None:
    from gguf import GGUFReader
    r = GGUFReader(src)
    start = min(int(t.data_offset) for t in r.tensors)
    raw = np.memmap(src, dtype=np.uint8, mode="r")
    small = {t.name: np.asarray(raw[int(t.data_offset):int(t.data_offset) + int(t.n_bytes)])
             for t in r.tensors if int(t.n_bytes) < SMALL}
    table = np.array([(int(t.data_offset), int(t.n_bytes), int(t.tensor_type)) for t in r.tensors], dtype=np.int64)
    names = np.array([t.name for t in r.tensors])
    np.savez(out + ".npz", header=np.asarray(raw[:start]), table=table, names=names,
             **{"t:" + k: v for k, v in small.items()})
    print(f"{out}.npz: header {start} bytes, {len(small)} small tensors kept, {len(table)} tensors")


def _scales(rng, n: int) -> np.ndarray:
    return rng.uniform(SCALE_LO, SCALE_HI, n).astype(np.float16)


def _pattern(rng, ttype: int, name: str, nbytes: int) -> np.ndarray:
    """Random bytes of one tensor, as a pattern of at most 64 MiB (tiled by the writer)."""
    n = min(nbytes, 64 << 20)
    if ttype == 8:      # Q8_0 blocks: fp16 scale + 32 int8
        n = n // 34 * 34
        b = rng.integers(-127, 128, n, dtype=np.int8).view(np.uint8).reshape(-1, 34)
        b[:, :2] = _scales(rng, len(b)).view(np.uint8).reshape(-1, 2)
        return b.reshape(-1)
    if ttype == 2:      # Q4_0 blocks: fp16 scale + 16 bytes of nibbles
        n = n // 18 * 18
        b = rng.integers(0, 256, n, dtype=np.uint8).reshape(-1, 18)
        b[:, :2] = _scales(rng, len(b)).view(np.uint8).reshape(-1, 2)
        return b.reshape(-1)
    if ttype == 1:      # F16: a LaRoSA scale table (or an F16 weight): small positive values
        return _scales(rng, n // 2).view(np.uint8)
    if ttype == 0:      # F32
        return (rng.standard_normal(n // 4).astype(np.float32) * 0.02).view(np.uint8)
    if ttype == 24:     # I8: LaRoSA input-major codes (Q8_0 codes or Q4_0 nibbles)
        return rng.integers(-127, 128, n, dtype=np.int8).view(np.uint8)
    raise SystemExit(f"{name}: tensor type {ttype} not handled")


def inflate(skel: str, out: str) -> None:
    z = np.load(skel + ".npz")
    rng = np.random.default_rng(0)
    made: dict[int, np.ndarray] = {}   # one pattern per tensor type (each tensor its own took minutes at 7B)
    with open(out, "wb") as f:
        f.write(z["header"].tobytes())
        order = np.argsort(z["table"][:, 0])
        for i in order:
            off, nbytes, ttype = (int(v) for v in z["table"][i])
            name = str(z["names"][i])
            f.write(b"\0" * (off - f.tell()))
            if "t:" + name in z:
                f.write(z["t:" + name].tobytes())
                continue
            if ttype not in made or made[ttype].size < min(nbytes, 64 << 20):
                made[ttype] = _pattern(rng, ttype, name, 64 << 20)
            pat = made[ttype]
            left = nbytes
            while left > 0:
                piece = pat[:min(left, pat.size)]
                f.write(piece.tobytes())
                left -= piece.size
    print(f"{out}: written")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gguf_skeleton", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("skeleton")
    s.add_argument("src")
    s.add_argument("out", help="output stem (.npz is added)")
    i = sub.add_parser("inflate")
    i.add_argument("skeleton", help="stem given to skeleton")
    i.add_argument("out")
    a = p.parse_args(argv)
    skeleton(a.src, a.out) if a.cmd == "skeleton" else inflate(a.skeleton, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

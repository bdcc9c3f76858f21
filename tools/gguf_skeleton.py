"""A GGUF pair for timing on another machine without copying gigabytes: `skeleton` keeps a file's
header (every key, the tokenizer, the tensor table) and its small tensors (norms, scores, RoPE
factors: real values); `inflate` writes a file of the same layout whose large tensors are filled
with random codes under small valid fp16 scales (ggml Q8_0 / Q4_0 blocks, or a LaRoSA file's I8
codes and F16 scale tables). Speed-only: the values are noise, the shapes, types and keys the
original's, so llama.cpp and larosa read exactly the bytes they read from the original.

    python -m larosa.tools.gguf_skeleton skeleton /tmp/b7/llama2-7b.q4_0.gguf skel/llama2-7b.q4_0
    python -m larosa.tools.gguf_skeleton inflate skel/llama2-7b.q4_0 /data/llama2-7b.q4_0.gguf

Used for the H200 timings of BENCHMARKS.md (the 7B-shape pair of tools/bench_models takes half an
hour to convert on two cores; the device's time is short). `grow` makes the skeleton of a deeper
file from a shallow one: a 2-layer pair of the 7B widths (minutes to convert) grown to 32 layers,
layer l a copy of layer l % 2 (its norms, scores, per-layer keys and thresholds), so that the
inflated file has the 7B shape's every byte and the shallow file's calibration:

    python -m larosa.tools.make_synthetic --dim 4096 --ff 11008 --layers 2 --heads 32 --kv-heads 32 \
        --vocab 32000 --type q4_0 -o l2.q4_0.gguf   (then larosa-convert it as tools/bench_models does)
    python -m larosa.tools.gguf_skeleton grow l2.larosa-q4_0.gguf skel/llama2-7b.larosa-q4_0 --layers 32"""
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


PER_LAYER = (".coef.", ".k.", ".rotated", ".threshold.")   # per-layer keys: L rows (thresholds: L x levels)


def grow(src: str, out: str, layers: int) -> None:
    """skeleton() of src with its blocks repeated to `layers` layers: blk.l is blk.(l % L0)."""
    import os
    import tempfile

    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    L0 = int(r.fields[f"{arch}.block_count"].contents())
    tmp = tempfile.NamedTemporaryFile(suffix=".gguf", dir=os.path.dirname(os.path.abspath(out)) or ".", delete=False).name
    w = GGUFWriter(tmp, arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        val, vtype = f.contents(), f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        if key == f"{arch}.block_count":
            val = layers
        elif sub is not None and any(p in key for p in PER_LAYER) and key != f"{arch}.threshold.sparsity":
            a = np.asarray(val)
            assert a.size % L0 == 0, key
            val = np.tile(a.reshape(L0, -1), (-(-layers // L0), 1))[:layers].reshape(-1).tolist()
        w.add_key_value(key, val, vtype, sub)
    blk = [t for t in r.tensors if t.name.startswith("blk.")]
    first = r.tensors.index(blk[0])
    src_of = {}
    order = [t for t in r.tensors[:first] if not t.name.startswith("blk.")]
    for t in order:
        src_of[t.name] = t
    for l in range(layers):
        for t in blk:
            parts = t.name.split(".")
            if int(parts[1]) != l % L0:
                continue
            src_of[".".join(["blk", str(l)] + parts[2:])] = t
    for t in r.tensors[first:]:
        if not t.name.startswith("blk."):
            src_of[t.name] = t
    for name, t in src_of.items():
        w.add_tensor_info(name, [int(v) for v in reversed(t.shape)], np.float32, int(t.n_bytes), t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(tmp, "r+b") as f:   # the data region: sparse, zeros but for the small tensors
        f.seek(0, 2)
        start = GGUFWriter.ggml_pad(f.tell(), w.data_alignment)
        end = start + sum(GGUFWriter.ggml_pad(int(t.n_bytes), w.data_alignment) for t in src_of.values())
        f.truncate(end)
    g = GGUFReader(tmp)
    with open(tmp, "r+b") as f:
        for t in g.tensors:
            s = src_of[t.name]
            if int(s.n_bytes) < SMALL:
                f.seek(int(t.data_offset))
                f.write(np.asarray(s.data).tobytes())
    skeleton(tmp, out)
    os.unlink(tmp)


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
    g = sub.add_parser("grow")
    g.add_argument("src")
    g.add_argument("out", help="output stem (.npz is added)")
    g.add_argument("--layers", type=int, required=True)
    i = sub.add_parser("inflate")
    i.add_argument("skeleton", help="stem given to skeleton")
    i.add_argument("out")
    a = p.parse_args(argv)
    if a.cmd == "skeleton":
        skeleton(a.src, a.out)
    elif a.cmd == "grow":
        grow(a.src, a.out, a.layers)
    else:
        inflate(a.skeleton, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

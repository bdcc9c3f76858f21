"""atheris fuzz target over the LaRoSA loader and GGUF metadata parser (runtime/gguf_file.py,
runtime/loader.py, gguf's GGUFReader behind them).

Each input is a whole file: it is written to a RAM-backed temporary file and opened with
larosa.runtime.loader.load. The documented outcomes are success or a LarosaError (FormatError,
UnsupportedError, ResourceError); any other exception is a bug, and atheris stops with it and saves
the input. With --model (or LAROSA_FUZZ_MODEL=1) an input the loader accepts then goes through
Model(...) (llama.cpp's tokenizer, lr_model_new) and one eval, where NumericsError is also documented.

    tools/fuzz.sh 300                                    # the usual way: seeds, bounded run, counts
    python tests/fuzz/fuzz_loader.py --make-seeds DIR    # valid tiny LaRoSA files to start from
    python tests/fuzz/fuzz_loader.py [--model] [libFuzzer flags] CORPUS_DIR
"""
from __future__ import annotations

import os
import sys
import tempfile

import atheris

if "--make-seeds" in sys.argv:   # seeds only: no instrumentation (and no chatter about it)
    from larosa.runtime import loader
    from larosa.runtime.errors import LarosaError
else:
    with atheris.instrument_imports(include=["larosa.runtime.gguf_file", "larosa.runtime.loader",
                                             "larosa.runtime.format", "gguf.gguf_reader"]):
        from larosa.runtime import loader
        from larosa.runtime.errors import LarosaError

MODEL = os.environ.get("LAROSA_FUZZ_MODEL") == "1"
_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
_FD, _PATH = tempfile.mkstemp(prefix="larosa-fuzz-", suffix=".gguf", dir=_DIR)
os.close(_FD)


def one_input(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        lf = loader.load(_PATH)
    except LarosaError:
        return
    # accepted: what load() promises must hold
    assert lf.hp.n_layers == len(lf.rotated) and lf.layout is not None
    for name, t in lf.tensors.items():
        assert t.data.nbytes == next(i.nbytes for i in lf.layout.tensors if i.name == name)
    if MODEL:
        from larosa.runtime.model import Model, NumericsError
        try:
            m = Model(_PATH, n_threads=1, n_ctx=min(8, lf.hp.n_ctx))   # a file may have a shorter context
        except LarosaError:
            return
        try:
            m.eval([0, min(1, m.hp.n_vocab - 1)][:m.n_ctx])
        except NumericsError:
            pass


# ---- a structure-aware mutator: edits one field of a parsed file half of the time ----------------

_INTERESTING = [0, 1, 2, 3, 7, 31, 32, 33, 63, 64, 255, 256, 1 << 15, (1 << 16) - 1, 1 << 16, 1 << 20,
                1 << 31, (1 << 31) - 1, (1 << 32) - 1, 1 << 32, 1 << 40, 1 << 62, 1 << 63, (1 << 64) - 1]
_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-9, 1e30, -1e30, 3.4e38, float("nan"), float("inf"), float("-inf")]
_edit = None


def _editor():
    global _edit
    if _edit is None:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        import test_hostile
        _edit = test_hostile
        skip = test_hostile._skip

        def bounded_skip(buf, pos, vt):
            # the editor trusts array counts: 2^62 items of a scalar loop "forever" (a hang of the
            # mutator, not of the loader); an array cannot hold more items than the bytes left
            if vt == test_hostile.ARR:
                import struct
                sub, n = struct.unpack_from("<IQ", buf, pos)
                least = 8 if sub == test_hostile.STR else 12 if sub == test_hostile.ARR else 1
                if n * least > len(buf) - pos - 12:
                    raise ValueError("array longer than the input")
            return skip(buf, pos, vt)
        test_hostile._skip = bounded_skip
    return _edit


def _mutate_value(H, rng, kv) -> None:
    import struct
    if kv.vt in H._FMT and kv.vt != H.BOOL:
        kv.vt = rng.choice([kv.vt, rng.choice(list(H._FMT))])
        fmt = H._FMT[kv.vt]
        if fmt[-1] in "fd":
            kv.payload = struct.pack(fmt, rng.choice(_FLOATS))
        else:
            bits = struct.calcsize(fmt) * 8
            v = rng.choice(_INTERESTING) % (1 << bits)
            kv.payload = struct.pack(fmt.upper() if fmt[-1].islower() else fmt, v)
    elif kv.vt == H.ARR and len(kv.payload) >= 12:
        sub, n = struct.unpack_from("<IQ", kv.payload)
        body = bytearray(kv.payload[12:])
        r = rng.random()
        if r < 0.3:
            n = rng.choice(_INTERESTING + [n + 1, max(n - 1, 0)])
        elif r < 0.4:
            sub = rng.choice(list(H._FMT) + [H.STR])
        elif sub in H._FMT and n and H._FMT[sub][-1] in "fd":
            size = struct.calcsize(H._FMT[sub])
            i = rng.randrange(n) * size
            body[i:i + size] = struct.pack(H._FMT[sub], rng.choice(_FLOATS))
        elif sub in H._FMT and n:
            size = struct.calcsize(H._FMT[sub])
            i = rng.randrange(n) * size
            body[i:i + size] = (rng.choice(_INTERESTING) % (1 << 8 * size)).to_bytes(size, "little")
        elif sub == H.STR and n > 1:   # duplicate or empty an item (token lists)
            g = H.GGUF(3, [kv], [], bytearray())
            items = g.strings(kv.key.decode("utf-8", "replace"))
            j = rng.randrange(len(items))
            items[j] = rng.choice([b"", items[(j + 1) % len(items)], b"\xff\xfe", items[j] * 3])
            body = bytearray(H.array(H.STR, items)[12:])
        kv.payload = struct.pack("<IQ", sub, n) + bytes(body)
    elif kv.vt == H.STR:
        kv.payload = H.s_enc(rng.choice([b"", b"larosa", b"llama", b"gpt2", b"\xff", b"act", b"gate",
                                         b"{{ messages }}", b"x" * 100]))
    else:
        kv.vt = rng.choice(list(range(13)) + [13, 0xFFFFFFFF])


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    import random
    rng = random.Random(seed)
    if rng.random() < 0.5:
        return atheris.Mutate(data, max_size)
    try:
        return _edit_one_field(data, max_size, rng)
    except Exception:   # not parseable or not editable by the test editor: a plain libFuzzer mutation
        return atheris.Mutate(data, max_size)


def _edit_one_field(data: bytes, max_size: int, rng) -> bytes:
    import copy
    H = _editor()
    g = H.GGUF.parse(data)
    r = rng.random()
    if r < 0.45 and g.kvs:
        _mutate_value(H, rng, rng.choice(g.kvs))
    elif r < 0.75 and g.tensors:
        t = rng.choice(g.tensors)
        what = rng.randrange(4)
        if what == 0:
            t.dims[rng.randrange(len(t.dims))] = rng.choice(_INTERESTING)
        elif what == 1:
            t.ttype = rng.choice([0, 1, 2, 3, 6, 8, 10, 12, 24, 26, 30, 99])
        elif what == 2:
            t.offset = rng.choice([t.offset + 32, max(t.offset - 32, 0), t.offset + 1, 0,
                                   len(g.data), rng.choice(_INTERESTING)])
        else:
            t.name = rng.choice(g.tensors).name
    elif r < 0.85:
        if rng.random() < 0.5 and g.kvs:
            g.kvs.insert(rng.randrange(len(g.kvs) + 1), copy.deepcopy(rng.choice(g.kvs)))
        elif g.kvs:
            g.kvs.pop(rng.randrange(len(g.kvs)))
    elif r < 0.93 and g.data:
        i = rng.randrange(0, len(g.data) - 3, 2) if len(g.data) > 4 else 0
        g.data[i:i + 4] = rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x7c\x00\x7e", b"\xff\xff\xff\xff"])
    else:
        setattr(g, rng.choice(["n_kv", "n_tensors"]), rng.choice([len(g.kvs) + 1, len(g.tensors) - 1,
                                                                    rng.choice(_INTERESTING)]))
    out = g.build()
    return out if len(out) <= max_size else atheris.Mutate(data, max_size)


def make_seeds(out_dir: str) -> list[str]:
    """Small valid LaRoSA files (a few KiB of tensors): tied Q8_0 and untied F16, one layer each."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from conftest import convert_for_test
    from larosa.tools.make_synthetic import make_synthetic
    os.makedirs(out_dir, exist_ok=True)
    shapes = {"tied_q8": dict(dim=64, ff=64, layers=1, heads=2, kv_heads=1, vocab=300, qtype="q8_0", tied=True),
              "untied_f16": dict(dim=32, ff=64, layers=2, heads=2, kv_heads=2, vocab=300, qtype="f16", tied=False)}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, shape) in enumerate(shapes.items()):
            src = make_synthetic(os.path.join(tmp, f"{name}.src.gguf"), seed=i, **shape)
            dst = os.path.join(out_dir, f"seed_{name}.gguf")
            convert_for_test(src, dst, shape["qtype"])
            out.append(dst)
    return out


def main(argv: list[str]) -> None:
    global MODEL
    if len(argv) >= 3 and argv[1] == "--make-seeds":
        for p in make_seeds(argv[2]):
            print(p, os.path.getsize(p))
        return
    if "--model" in argv:
        argv = [a for a in argv if a != "--model"]
        MODEL = True
    try:
        atheris.Setup(argv, one_input, custom_mutator=custom_mutator)
        atheris.Fuzz()
    finally:
        if os.path.exists(_PATH):
            os.unlink(_PATH)


if __name__ == "__main__":
    main(sys.argv)

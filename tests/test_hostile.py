"""Hostile files: every way a LaRoSA GGUF can be malformed gives a FormatError/UnsupportedError naming the
problem, through the loader, through Model(...) and through the CLIs (one line on stderr, exit 1, no
traceback, never a signal). NaN/Inf weights give a NumericsError at the logits.

The files are made here from the tiny converted models of conftest.py by a byte-level GGUF editor
written for these tests (independent of runtime/gguf_file.py, so it can write what gguf's writer
refuses: duplicate keys, wrong counts, overlapping tensors...).
"""
from __future__ import annotations

import copy
import random
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from larosa.runtime import format as F
from larosa.runtime import loader as L
from larosa.runtime.errors import FormatError, LarosaError, ResourceError, UnsupportedError
from larosa.runtime.loader import load
from larosa.runtime.model import Model, NumericsError

BIN = Path(sys.executable).parent

# GGUF value types (gguf's GGUFValueType) and tensor types (ggml ids)
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
T_F32, T_F16, T_Q4_0, T_Q4_1, T_Q8_0, T_I8, T_I32 = 0, 1, 2, 3, 8, 24, 26
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
        U64: "<Q", I64: "<q", F64: "<d"}


# ---- a byte-level GGUF editor ---------------------------------------------------------------------

def s_enc(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def scalar(vt: int, v) -> bytes:
    return struct.pack(_FMT[vt], v)


def array(sub: int, items) -> bytes:
    body = b"".join(s_enc(x) for x in items) if sub == STR else b"".join(scalar(sub, x) for x in items)
    return struct.pack("<IQ", sub, len(items)) + body


def _skip(buf: bytes, pos: int, vt: int) -> int:
    if vt == STR:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    if vt == ARR:
        sub, n = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        for _ in range(n):
            pos = _skip(buf, pos, sub)
        return pos
    return pos + struct.calcsize(_FMT[vt])


@dataclass
class KV:
    key: bytes
    vt: int
    payload: bytes          # the value's bytes after the type field


@dataclass
class TI:
    name: bytes
    dims: list[int]         # ggml ne order: dims[0] = row length
    ttype: int
    offset: int             # relative to the data section


@dataclass
class GGUF:
    version: int
    kvs: list[KV]
    tensors: list[TI]
    data: bytearray
    magic: bytes = b"GGUF"
    n_kv: int | None = None          # header counts: None = the real ones
    n_tensors: int | None = None
    pad_to: int = 32
    bounds: list[int] = field(default_factory=list)   # section boundaries of the parsed file

    @classmethod
    def parse(cls, raw: bytes) -> "GGUF":
        magic, version, nt, nkv = struct.unpack_from("<4sIQQ", raw, 0)
        pos, bounds = 24, [4, 8, 16, 24]
        kvs = []
        for _ in range(nkv):
            n = struct.unpack_from("<Q", raw, pos)[0]
            key = raw[pos + 8:pos + 8 + n]
            pos += 8 + n
            bounds.append(pos)
            vt = struct.unpack_from("<I", raw, pos)[0]
            pos += 4
            end = _skip(raw, pos, vt)
            kvs.append(KV(key, vt, raw[pos:end]))
            pos = end
            bounds.append(pos)
        tensors = []
        for _ in range(nt):
            n = struct.unpack_from("<Q", raw, pos)[0]
            name = raw[pos + 8:pos + 8 + n]
            pos += 8 + n
            nd = struct.unpack_from("<I", raw, pos)[0]
            dims = list(struct.unpack_from(f"<{nd}Q", raw, pos + 4))
            pos += 4 + 8 * nd
            tt, off = struct.unpack_from("<IQ", raw, pos)
            pos += 12
            tensors.append(TI(name, dims, tt, off))
            bounds.append(pos)
        start = -(-pos // 32) * 32
        g = cls(version, kvs, tensors, bytearray(raw[start:]))
        g.bounds = bounds + [start] + [start + t.offset for t in tensors] + [len(raw)]
        return g

    def build(self) -> bytes:
        out = bytearray(struct.pack("<4sIQQ", self.magic, self.version,
                                    len(self.tensors) if self.n_tensors is None else self.n_tensors,
                                    len(self.kvs) if self.n_kv is None else self.n_kv))
        for kv in self.kvs:
            out += s_enc(kv.key) + struct.pack("<I", kv.vt) + kv.payload
        for t in self.tensors:
            out += s_enc(t.name) + struct.pack(f"<I{len(t.dims)}QIQ", len(t.dims), *t.dims, t.ttype, t.offset)
        out += bytes(-len(out) % self.pad_to)
        return bytes(out + self.data)

    # -- edits --
    def kv(self, key: str) -> KV:
        return next(kv for kv in self.kvs if kv.key == key.encode())

    def set(self, key: str | bytes, vt: int, payload: bytes) -> "GGUF":
        k = key.encode() if isinstance(key, str) else key
        for kv in self.kvs:
            if kv.key == k:
                kv.vt, kv.payload = vt, payload
                return self
        self.kvs.append(KV(k, vt, payload))
        return self

    def drop(self, key: str) -> "GGUF":
        self.kvs = [kv for kv in self.kvs if kv.key != key.encode()]
        return self

    def t(self, name: str) -> TI:
        return next(t for t in self.tensors if t.name == name.encode())

    def nbytes(self, t: TI) -> int:
        block, size = {T_F32: (1, 4), T_F16: (1, 2), T_Q4_0: (32, 18), T_Q4_1: (32, 20),
                       T_Q8_0: (32, 34), T_I8: (1, 1), T_I32: (1, 4)}[t.ttype]
        return int(np.prod(t.dims)) // block * size

    def view(self, name: str) -> memoryview:
        t = self.t(name)
        return memoryview(self.data)[t.offset:t.offset + self.nbytes(t)]

    def add_tensor(self, name: str, dims: list[int], ttype: int, payload: bytes) -> "GGUF":
        self.data += bytes(-len(self.data) % 32)
        self.tensors.append(TI(name.encode(), dims, ttype, len(self.data)))
        self.data += payload
        return self

    def strings(self, key: str) -> list[bytes]:
        p = self.kv(key).payload
        n, pos, out = struct.unpack_from("<Q", p, 4)[0], 12, []
        for _ in range(n):
            m = struct.unpack_from("<Q", p, pos)[0]
            out.append(p[pos + 8:pos + 8 + m])
            pos += 8 + m
        return out


@pytest.fixture(scope="module")
def seed(converted) -> GGUF:
    """tied_q8: F16 adapters, Q8_0 weights (input-major: I8 codes + F16 scales), tied Q8_0 embedding,
    output adapter and norm, 3 layers, GQA."""
    return GGUF.parse(Path(converted["tied_q8"]).read_bytes())


def write(tmp_path: Path, g: GGUF | bytes, name: str = "hostile.gguf") -> str:
    p = tmp_path / name
    p.write_bytes(g if isinstance(g, bytes) else g.build())
    return str(p)


def test_editor_round_trip(seed, converted, tmp_path):
    """Positive control: the editor rewrites the seed byte for byte, and an added valid tensor loads."""
    raw = Path(converted["tied_q8"]).read_bytes()
    assert seed.build() == raw
    g = copy.deepcopy(seed).add_tensor(F.T_SCORE(1, "mlp_out"), [128], T_F32, np.ones(128, np.float32).tobytes())
    f = load(write(tmp_path, g))
    assert F.T_SCORE(1, "mlp_out") in f.tensors and f.layout.version == 3


# ---- the corpus -----------------------------------------------------------------------------------

def _poison_f32(g: GGUF, name: str, value: float) -> GGUF:
    v = g.view(name)
    v[:] = np.full(len(v) // 4, value, np.float32).tobytes()
    return g


def _dup_token(g: GGUF) -> GGUF:
    toks = g.strings("tokenizer.ggml.tokens")
    toks[300] = toks[301]
    return g.set("tokenizer.ggml.tokens", ARR, array(STR, toks))


def _empty_token(g: GGUF) -> GGUF:
    toks = g.strings("tokenizer.ggml.tokens")
    toks[400] = b""
    return g.set("tokenizer.ggml.tokens", ARR, array(STR, toks))


def _swap(g: GGUF, a: str, b: str) -> GGUF:
    g.t(a).offset, g.t(b).offset = g.t(b).offset, g.t(a).offset
    return g


def _set(key, vt, payload):
    return lambda g: g.set(key, vt, payload)


def _f32s(n, v):
    return array(F32, [v] * n)


QKV0, EMBD, NORM = F.T_QKV(0), F.T_EMBD, F.T_OUTPUT_NORM

# name -> (edit of the seed, exception, message pattern)
CASES = {
    # header
    "bad magic": (lambda g: setattr(g, "magic", b"GGUX"), FormatError, "not a GGUF file"),
    "version 0": (lambda g: setattr(g, "version", 0), FormatError, "invalid GGUF version"),
    "version 1": (lambda g: setattr(g, "version", 1), UnsupportedError, "GGUF version 1"),
    "version 2": (lambda g: setattr(g, "version", 2), UnsupportedError, "GGUF v3"),
    "version garbage": (lambda g: setattr(g, "version", 0xDEADBEEF), FormatError, "invalid GGUF version"),
    "big-endian": (lambda g: setattr(g, "version", 3 << 24), UnsupportedError, "big-endian"),
    "huge tensor count": (lambda g: setattr(g, "n_tensors", 1 << 63), FormatError, "tensors, more than the limit"),
    "huge kv count": (lambda g: setattr(g, "n_kv", (1 << 64) - 1), FormatError, "keys, more than the limit"),
    "kv count + 1": (lambda g: setattr(g, "n_kv", len(g.kvs) + 1), FormatError, r"\(at byte \d+\)"),
    "tensor count - 1": (lambda g: setattr(g, "n_tensors", len(g.tensors) - 1), FormatError,
                         "missing tensor"),
    "tensor count + 1": (lambda g: setattr(g, "n_tensors", len(g.tensors) + 1), FormatError,
                         r"\(at byte \d+\)"),
    # keys and values
    "huge key length": (lambda g: g.kvs.insert(0, KV(b"x" * 70000, U32, scalar(U32, 1))), FormatError,
                        "more than the limit"),
    "key not utf-8": (_set(b"general.\xff\xfe", U32, scalar(U32, 1)), FormatError, "not valid UTF-8"),
    "duplicate key": (lambda g: g.kvs.append(copy.deepcopy(g.kv(F.K_DIM))), FormatError,
                      "duplicate metadata key 'larosa.embedding_length'"),
    "unknown value type": (_set("general.evil", 13, scalar(U32, 1)), FormatError, "unknown value type 13"),
    "value type -1": (_set("general.evil", 0xFFFFFFFF, b""), FormatError, "unknown value type"),
    "string past the end": (_set("general.name", STR, struct.pack("<Q", 1 << 40) + b"abc"), FormatError,
                            "more than the limit|truncated"),
    "huge array count": (_set("general.evil", ARR, struct.pack("<IQ", U8, 1 << 62)), FormatError,
                         "would hold more than"),
    "array past the end": (_set("general.evil", ARR, struct.pack("<IQ", U32, 1 << 20)), FormatError, "truncated"),
    "string array past the end": (_set("general.evil", ARR, struct.pack("<IQ", STR, 1 << 20) + s_enc("a")),
                                  FormatError, "truncated|more than the limit"),
    "array of arrays": (_set("general.evil", ARR, struct.pack("<IQ", ARR, 1) + array(U8, [1])),
                        UnsupportedError, "array of arrays"),
    "bool 7": (_set(F.K_TIED, BOOL, scalar(U8, 7)), FormatError, "not 0 or 1"),
    "alignment 48": (_set("general.alignment", U32, scalar(U32, 48)), FormatError, "not a power of two"),
    "alignment 64": (_set("general.alignment", U32, scalar(U32, 64)), FormatError,
                      "aligned to 32|not a multiple|past the end"),
    "alignment string": (_set("general.alignment", STR, s_enc("32")), FormatError, "must be a uint32"),
    "no architecture": (lambda g: g.drop("general.architecture"), FormatError, "missing metadata key"),
    "other architecture": (_set("general.architecture", STR, s_enc("gpt2")), UnsupportedError, "not a LaRoSA"),
    "format version 1": (_set(F.K_VERSION, U32, scalar(U32, 1)), UnsupportedError,
                         "format version 1; this runtime reads version 2 .* convert the source model again"),
    "format version 3": (_set(F.K_VERSION, U32, scalar(U32, 3)), UnsupportedError, "format version 3"),
    "method unknown": (_set(F.K_METHOD, STR, s_enc("magic")), UnsupportedError, "method"),
    "method not utf-8": (_set(F.K_METHOD, STR, s_enc(b"\xff\xfe")), FormatError, "not valid UTF-8"),
    "block count as float": (_set(F.K_LAYERS, F32, scalar(F32, 3.0)), FormatError, "must be an integer"),
    "eps as int": (_set(F.K_EPS, U32, scalar(U32, 1)), FormatError, "must be a float"),
    "tied as int": (_set(F.K_TIED, U8, scalar(U8, 1)), FormatError, "must be a bool"),
    "method as int": (_set(F.K_METHOD, U32, scalar(U32, 1)), FormatError, "must be a string"),
    # ranges, huge dims
    "dim 2^31": (_set(F.K_DIM, U32, scalar(U32, 1 << 31)), FormatError, "out of range"),
    "dim 2^64-1": (_set(F.K_DIM, U64, scalar(U64, (1 << 64) - 1)), FormatError, "out of range"),
    "dim negative": (_set(F.K_DIM, I32, scalar(I32, -64)), FormatError, "out of range"),
    "vocab 2^32-1": (_set(F.K_VOCAB, U32, scalar(U32, (1 << 32) - 1)), FormatError, "out of range"),
    "layers 0": (_set(F.K_LAYERS, U32, scalar(U32, 0)), FormatError, "out of range"),
    "context 2^40": (_set(F.K_CONTEXT, U64, scalar(U64, 1 << 40)), FormatError, "out of range"),
    "heads 0": (_set(F.K_HEADS, U32, scalar(U32, 0)), FormatError, "out of range"),
    "head dim odd": (_set(F.K_HEAD_DIM, U32, scalar(U32, 15)), FormatError, "inconsistent"),
    "attention width huge": (lambda g: g.set(F.K_HEADS, U32, scalar(U32, 64)).set(F.K_HEAD_DIM, U32, scalar(U32, 4096)),
                             FormatError, "attention width 262144 is too large"),
    "rope dims odd": (_set(F.K_ROPE_DIM, U32, scalar(U32, 7)), FormatError, "dimension_count = 7 must be even"),
    "rope dims over head": (_set(F.K_ROPE_DIM, U32, scalar(U32, 1 << 20)), FormatError, "must be even and in"),
    "attention temperature without length": (_set(F.K_ATTN_TEMP_SCALE, F32, scalar(F32, 0.5)), FormatError,
                                             "temperature_scale = 0.5"),
    "attention temperature NaN": (lambda g: g.set(F.K_ATTN_TEMP_SCALE, F32, scalar(F32, float("nan")))
                                  .set(F.K_ATTN_TEMP_LENGTH, U32, scalar(U32, 8)), FormatError, "temperature_scale"),
    "vocab mismatch": (_set(F.K_VOCAB, U32, scalar(U32, 513)), FormatError, "shape"),
    # NaN / Inf / out-of-range floats in metadata
    "eps NaN": (_set(F.K_EPS, F32, scalar(F32, float("nan"))), FormatError, "epsilon"),
    "eps Inf": (_set(F.K_EPS, F32, scalar(F32, float("inf"))), FormatError, "epsilon"),
    "eps 0": (_set(F.K_EPS, F32, scalar(F32, 0.0)), FormatError, "epsilon"),
    "rope base NaN": (_set(F.K_ROPE_BASE, F32, scalar(F32, float("nan"))), FormatError, "freq_base"),
    "rope base -Inf": (_set(F.K_ROPE_BASE, F64, scalar(F64, float("-inf"))), FormatError, "freq_base"),
    "rope base 0.5": (_set(F.K_ROPE_BASE, F32, scalar(F32, 0.5)), FormatError, "freq_base"),
    "sparsity NaN": (_set(F.K_SPARSITY, F32, scalar(F32, float("nan"))), FormatError, "outside"),
    "sparsity 1": (_set(F.K_SPARSITY, F32, scalar(F32, 1.0)), FormatError, "outside"),
    "sparsity -Inf": (_set(F.K_SPARSITY, F32, scalar(F32, float("-inf"))), FormatError, "outside"),
    "coef NaN": (_set(F.K_COEF("mlp_in"), ARR, _f32s(3, float("nan"))), FormatError, "finite values"),
    "coef Inf": (_set(F.K_COEF("attn_out"), ARR, _f32s(3, float("inf"))), FormatError, "finite values"),
    "coef negative": (_set(F.K_COEF("attn_in"), ARR, _f32s(3, -0.5)), FormatError, "finite values"),
    "coef huge": (_set(F.K_COEF("mlp_out"), ARR, _f32s(3, 1e30)), FormatError, "finite values"),
    "coef short": (_set(F.K_COEF("mlp_out"), ARR, _f32s(2, 1.0)), FormatError, "one per layer"),
    "coef as ints": (_set(F.K_COEF("mlp_out"), ARR, array(U32, [1, 1, 1])), FormatError, "array of floats"),
    "k negative": (_set(F.K_K("attn_in"), ARR, array(I32, [-1, 10, 10])), FormatError, "must be in"),
    "k zero": (_set(F.K_K("attn_in"), ARR, array(U32, [0, 10, 10])), FormatError, "must be in"),
    "k 2^32-1": (_set(F.K_K("mlp_out"), ARR, array(U32, [(1 << 32) - 1] * 3)), FormatError, "must be in"),
    "k 2^64-1": (_set(F.K_K("mlp_out"), ARR, array(U64, [(1 << 64) - 1] * 3)), FormatError, "must be in"),
    "k above width": (_set(F.K_K("attn_out"), ARR, array(U32, [65, 1, 1])), FormatError, "must be in"),
    "rotated 2": (_set(F.K_ROTATED, ARR, array(U8, [1, 2, 1])), FormatError, "0 or 1"),
    "mlp_out_key": (_set(F.K_MLP_OUT_KEY, STR, s_enc("softmax")), UnsupportedError, "not supported"),
    "threshold grid NaN": (lambda g: g.set(F.K_THR_GRID, ARR, _f32s(1, float("nan")))
                           .set(F.K_THR("mlp_out"), ARR, _f32s(3, 0.1)), FormatError, "must increase"),
    "threshold grid decreasing": (lambda g: g.set(F.K_THR_GRID, ARR, array(F32, [0.5, 0.25]))
                                  .set(F.K_THR("mlp_out"), ARR, _f32s(6, 0.1)), FormatError, "must increase"),
    "threshold Inf": (lambda g: g.set(F.K_THR_GRID, ARR, array(F32, [0.5]))
                      .set(F.K_THR("mlp_out"), ARR, _f32s(3, float("inf"))), FormatError, "finite thresholds"),
    "threshold negative": (lambda g: g.set(F.K_THR_GRID, ARR, array(F32, [0.5]))
                           .set(F.K_THR("mlp_out"), ARR, _f32s(3, -1.0)), FormatError, "finite thresholds"),
    "threshold decreasing": (lambda g: g.set(F.K_THR_GRID, ARR, array(F32, [0.25, 0.5]))
                             .set(F.K_THR("mlp_out"), ARR, array(F32, [2, 1] * 3)), FormatError, "not decrease"),
    "threshold without grid": (_set(F.K_THR("attn_in"), ARR, _f32s(3, 0.5)), FormatError, "without"),
    "budget without tables": (_set(F.K_BUDGET, BOOL, scalar(BOOL, 1)), FormatError, "not every block input"),
    "budget with one table": (lambda g: g.set(F.K_THR_GRID, ARR, array(F32, [0.5])).set(F.K_THR("mlp_out"), ARR,
                              _f32s(3, 0.1)).set(F.K_BUDGET, BOOL, scalar(BOOL, 1)), FormatError, "not every block input"),
    "budget not a bool": (_set(F.K_BUDGET, STR, s_enc("yes")), FormatError, "bool"),
    # tensor descriptions
    "tensor name too long": (lambda g: setattr(g.t(QKV0), "name", b"x" * 65), FormatError, "more than the limit"),
    "tensor name not utf-8": (lambda g: setattr(g.t(QKV0), "name", b"blk.0.\xff"), FormatError, "not valid UTF-8"),
    "tensor 0 dims": (lambda g: setattr(g.t(QKV0), "dims", []), FormatError, "0 dimensions"),
    "tensor 5 dims": (lambda g: setattr(g.t(QKV0), "dims", [96, 64, 1, 1, 1]), FormatError, "5 dimensions"),
    "tensor dim 0": (lambda g: setattr(g.t(QKV0), "dims", [96, 0]), FormatError, "outside"),
    "tensor dim huge": (lambda g: setattr(g.t(QKV0), "dims", [96, 1 << 62]), FormatError, "outside"),
    "tensor dims overflow": (lambda g: setattr(g.t(QKV0), "dims", [1 << 32, 1 << 32]), FormatError, "past the end"),
    "tensor shape swapped": (lambda g: setattr(g.t(NORM), "dims", [1, 64]), FormatError, "has shape"),
    "tensor wrong shape": (lambda g: setattr(g.t(QKV0), "dims", [96, 64]), FormatError, "holds codes of shape"),
    "embedding wrong shape": (lambda g: setattr(g.t(EMBD), "dims", [64, 256]), FormatError, "has shape"),
    # input-major quantized weights: I8 codes and an F16 scale table (FORMAT.md)
    "scales missing": (lambda g: g.tensors.remove(g.t(F.scale_name(QKV0))), FormatError,
                       "missing tensor 'blk.0.attn_qkv.scale'"),
    "scales F32": (lambda g: setattr(g.t(F.scale_name(QKV0)), "ttype", T_F32) or
                   setattr(g.t(F.scale_name(QKV0)), "dims", [64, 1]), FormatError, "must be F16"),
    "scales wrong shape": (lambda g: setattr(g.t(F.scale_name(QKV0)), "dims", [128, 1]), FormatError,
                           "must be F16 of shape"),
    "scales without codes": (lambda g: setattr(g.t(QKV0), "ttype", T_F16) or setattr(g.t(QKV0), "dims", [64, 64]),
                             FormatError, "has shape|unexpected tensors"),
    "input-major weight in ggml blocks": (lambda g: setattr(g.t(QKV0), "ttype", T_Q8_0) or
                                          setattr(g.t(QKV0), "dims", [64, 64]), FormatError, "stored as Q8_0 blocks"),
    "codes of a layer not a group multiple": (lambda g: setattr(g.t(F.T_O(0)), "dims", [64, 48]), FormatError,
                                              "has shape|holds codes"),
    "tensor unknown type": (lambda g: setattr(g.t(QKV0), "ttype", 99), FormatError, "unknown type 99"),
    "tensor Q4_1": (lambda g: setattr(g.t(QKV0), "ttype", T_Q4_1), UnsupportedError, "has type Q4_1"),
    "tensor I32": (lambda g: setattr(g.t(NORM), "ttype", T_I32), FormatError, "must be F32"),
    "norm F16": (lambda g: setattr(g.t(NORM), "ttype", T_F16), FormatError, "must be F32"),
    "row not a block multiple": (lambda g: setattr(g.t(QKV0), "dims", [80, 64]), FormatError, "holds codes of shape"),
    "offset unaligned": (lambda g: setattr(g.t(QKV0), "offset", g.t(QKV0).offset + 2), FormatError,
                         "multiple of the alignment"),
    "offset past the end": (lambda g: setattr(g.t(QKV0), "offset", 1 << 60), FormatError, "past the end"),
    "offset 2^64-32": (lambda g: setattr(g.t(EMBD), "offset", (1 << 64) - 32), FormatError, "past the end"),
    "last tensor runs past the end": (lambda g: setattr(g.t(NORM), "offset", len(g.data) - 128), FormatError,
                                      "past the end"),
    "overlapping tensors": (lambda g: setattr(g.t(F.T_O(0)), "offset", g.t(QKV0).offset), FormatError, "overlap"),
    "partly overlapping": (lambda g: setattr(g.t(F.T_O(0)), "offset", g.t(F.T_O(0)).offset - 32), FormatError,
                           "overlap"),
    "swapped offsets": (lambda g: _swap(g, QKV0, F.T_O(0)), FormatError, "overlap|has shape"),
    "duplicate tensor": (lambda g: setattr(g.t(F.T_O(0)), "name", QKV0.encode()), FormatError, "duplicate tensor"),
    "unexpected tensor": (lambda g: g.add_tensor("evil.weight", [32], T_F32, bytes(128)), FormatError,
                          "unexpected tensors: evil.weight"),
    "missing tensor": (lambda g: g.tensors.remove(g.t(F.T_DOWN(2))), FormatError, "missing tensor"),
    "extra layer": (lambda g: g.add_tensor(F.T_SCORE(7, "mlp_in"), [64], T_F32, bytes(256)), FormatError,
                    "unexpected tensors"),
    "score wrong width": (lambda g: g.add_tensor(F.T_SCORE(0, "mlp_out"), [64], T_F32, bytes(256)), FormatError,
                          "has shape"),
    # NaN / Inf in small tensors (checked at load)
    "norm NaN": (lambda g: _poison_f32(g, NORM, float("nan")), FormatError, "NaN or Inf"),
    "norm Inf": (lambda g: _poison_f32(g, NORM, float("-inf")), FormatError, "NaN or Inf"),
    "score NaN": (lambda g: g.add_tensor(F.T_SCORE(0, "attn_in"), [64], T_F32,
                                         np.full(64, np.nan, np.float32).tobytes()), FormatError, "NaN or Inf"),
    "rope freqs 0": (lambda g: g.add_tensor(F.T_ROPE_FREQS, [16], T_F32, bytes(64)), FormatError, "positive"),
    "rope freqs Inf": (lambda g: g.add_tensor(F.T_ROPE_FREQS, [16], T_F32,
                                              np.full(16, np.inf, np.float32).tobytes()), FormatError, "NaN or Inf"),
    # the tokenizer (llama.cpp aborts the process on some of these: they must not reach it)
    "duplicate tokens": (_dup_token, FormatError, "appears twice"),
    "empty token": (_empty_token, FormatError, "token 400 is empty"),
    "tokens short": (lambda g: g.set("tokenizer.ggml.tokens", ARR, array(STR, g.strings("tokenizer.ggml.tokens")[:500])),
                     FormatError, "500 tokens, the embedding 512"),
    "tokens as ints": (_set("tokenizer.ggml.tokens", ARR, array(U32, range(512))), FormatError, "array of strings"),
    "scores short": (_set("tokenizer.ggml.scores", ARR, _f32s(10, 0.0)), FormatError, "512 float32"),
    "token types as u8": (_set("tokenizer.ggml.token_type", ARR, array(U8, [1] * 512)), FormatError, "512 int32"),
    "bos id as string": (_set("tokenizer.ggml.bos_token_id", STR, s_enc("1")), FormatError, "must be a uint32"),
    "bos id negative": (_set("tokenizer.ggml.bos_token_id", I32, scalar(I32, -1)), FormatError, "must be a uint32"),
    "add_bos as int": (_set("tokenizer.ggml.add_bos_token", U32, scalar(U32, 5)), FormatError, "must be a bool"),
    "tokenizer bert": (_set("tokenizer.ggml.model", STR, s_enc("bert")), UnsupportedError, "tokenizer.ggml.model"),
    "no tokenizer": (lambda g: g.drop("tokenizer.ggml.model"), FormatError, "tokenizer.ggml.model"),
    "chat template as int": (_set("tokenizer.chat_template", U32, scalar(U32, 1)), FormatError, "must be a string"),
    "chat template not utf-8": (_set("tokenizer.chat_template", STR, s_enc(b"{{ x }}\xff")), FormatError,
                                "not valid UTF-8"),
}


def hostile(seed: GGUF, name: str) -> GGUF:
    g = copy.deepcopy(seed)
    CASES[name][0](g)
    return g


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file(seed, tmp_path, name):
    """The documented exception, naming the file and the problem, from load() and from Model()."""
    _, exc, pattern = CASES[name]
    p = write(tmp_path, hostile(seed, name))
    t0 = time.perf_counter()
    with pytest.raises(exc, match=pattern) as e:
        load(p)
    assert time.perf_counter() - t0 < 5, "a hostile header must not make the loader work for long"
    assert p in str(e.value) and type(e.value) is exc
    with pytest.raises(exc, match=pattern):
        Model(p, n_threads=1)


def test_truncated_everywhere(seed, tmp_path):
    """Cut at every section boundary (and one byte either side), and at random points."""
    raw = seed.build()
    cuts = {c + d for c in seed.bounds for d in (-1, 0, 1) if 0 <= c + d < len(raw)}
    cuts |= set(random.Random(0).sample(range(len(raw)), 60))
    for cut in sorted(cuts):
        p = write(tmp_path, raw[:cut], f"cut{cut}.gguf")
        with pytest.raises(FormatError, match="truncated|past the end|not a GGUF|magic"):
            load(p)
    assert len(cuts) > 150


def test_random_bit_flips_in_header(seed, tmp_path):
    """Any corruption of the metadata region: a documented error or a valid file, nothing else."""
    raw = bytearray(seed.build())
    header_end = seed.bounds[-len(seed.tensors) - 2]
    rng = random.Random(1)
    outcomes = set()
    for i in range(150):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(header_end)] ^= 1 << rng.randrange(8)
        p = write(tmp_path, bytes(b), "flip.gguf")
        try:
            load(p)
        except (FormatError, UnsupportedError, ResourceError) as e:
            assert p in str(e)
            outcomes.add(type(e).__name__)
            continue
        try:                                   # the loader passed it: llama.cpp's tokenizer and the C
            m = Model(p, n_threads=1)          # library must take it without crashing
            m.eval(m.tokenize("hello world"))
            outcomes.add("ok")
        except LarosaError as e:               # e.g. a flipped tokenizer llama.cpp refuses
            outcomes.add("model: " + type(e).__name__)
    assert "FormatError" in outcomes and "ok" in outcomes


def test_kv_cache_bound(converted, monkeypatch, tmp_path):
    """A KV cache (layers x n_ctx x kv width) above the machine's memory is refused before any
    allocation, with the sizes in the message."""
    f = load(converted["tied_q8"])
    need = f.memory_bytes(4096)
    assert need > 2 * 3 * 4096 * 32 * 2   # at least the KV cache (f16 by default)
    monkeypatch.setattr(L, "physical_memory", lambda: need - 1)
    with pytest.raises(ResourceError, match=r"KV cache: 3 layers x 4096 positions x 32 values") as e:
        load(converted["tied_q8"])
    assert "smaller context" in str(e.value)
    from larosa.runtime.cli import run_main
    assert run_main(["-m", converted["tied_q8"], "-p", "hi", "-t", "1"]) == 1
    monkeypatch.setattr(L, "physical_memory", lambda: need)
    load(converted["tied_q8"])


def test_default_context_mirrors_model():
    from larosa.runtime import model
    assert L.DEFAULT_N_CTX == model.DEFAULT_N_CTX


def test_kv_cache_bound_for_user_context(seed, monkeypatch, tmp_path):
    g = copy.deepcopy(seed).set(F.K_CONTEXT, U32, scalar(U32, 1 << 20))
    p = write(tmp_path, g)
    f = load(p)
    monkeypatch.setattr(L, "physical_memory", lambda: f.memory_bytes(4096, 1))
    Model(p, n_threads=1)                         # the default context fits
    with pytest.raises(ResourceError, match="KV cache"):
        Model(p, n_threads=1, n_ctx=1 << 20)     # 3 x 2^20 x 32 x 2 x 2 bytes: refused, not allocated


# ---- NaN / Inf weights: found at the logits, not by scanning the weights at load ----------------

def _poison_blocks(g: GGUF, name: str, block: int, half: bytes) -> GGUF:
    v = g.view(name)
    for i in range(0, len(v), block):
        v[i:i + 2] = half                       # the fp16 scale of each block
    return g


NAN16, INF16 = b"\x00\x7e", b"\x00\x7c"
POISON = {   # converted model -> edit
    "F32 embedding NaN": ("untied_f32", lambda g: _poison_f32(g, EMBD, float("nan"))),
    "F32 head Inf": ("untied_f32", lambda g: _poison_f32(g, F.T_OUTPUT, float("inf"))),
    "F16 adapter Inf": ("tied_q8", lambda g: _poison_blocks(g, F.T_ADAPTER(1), 2, INF16)),
    "F16 down NaN": ("odd_f16", lambda g: _poison_blocks(g, F.T_DOWN(0), 2, NAN16)),
    "Q8_0 embedding scales NaN": ("tied_q8", lambda g: _poison_blocks(g, EMBD, 34, NAN16)),
    "Q4_0 down scales Inf": ("tied_q4", lambda g: _poison_blocks(g, F.scale_name(F.T_DOWN(0)), 2, INF16)),
    "Q4_0 qkv scales NaN (GQA)": ("gqa_q4", lambda g: _poison_blocks(g, F.scale_name(F.T_QKV(1)), 2, NAN16)),
    "Q8_0 gate/up one scale NaN": ("tied_q8", lambda g: _poison_blocks(g, F.scale_name(F.T_GATE_UP(0)), 1 << 30, NAN16)),
    "F16 output adapter NaN (GQA)": ("gqa_q4", lambda g: _poison_blocks(g, F.T_OUTPUT_ADAPTER, 2, NAN16)),
}


@pytest.mark.parametrize("name", list(POISON))
def test_nonfinite_weights_raise_numerics_error(converted, tmp_path, name):
    src, edit = POISON[name]
    g = GGUF.parse(Path(converted[src]).read_bytes())
    p = write(tmp_path, edit(g))
    m = Model(p, n_threads=1, sparsity=0.0)        # loads: 2-D weights are not scanned
    with pytest.raises(NumericsError, match="NaN or Inf in the logits"):
        m.eval([1, 5, 9])                           # batched prompt path
    m.reset()
    with pytest.raises(NumericsError):
        m.eval([7])                                 # single-token decode path
    with pytest.raises(NumericsError):
        list(m.generate("hello", max_tokens=4, temperature=0))


# ---- the command lines ---------------------------------------------------------------------------

CLI_CASES = ["bad magic", "huge kv count", "huge array count", "overlapping tensors", "offset past the end",
             "duplicate tokens", "tokenizer bert", "eps NaN", "tensor Q4_1"]


def _cli(tool: str, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, input=stdin, timeout=timeout)


def _assert_one_line_error(r: subprocess.CompletedProcess, tool: str, pattern: str = "") -> None:
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])    # never a signal (negative code)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), r.stderr[-2000:]
    if pattern:
        assert pattern in lines[0]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("text") / "t.txt"
    p.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    return str(p)


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_hostile_file(seed, tmp_path, text_file, name):
    p = write(tmp_path, hostile(seed, name))
    for tool, args in (("larosa-run", ["-p", "hi", "-n", "4"]),
                       ("larosa-perplexity", ["-f", text_file, "-c", "32", "-q"])):
        r = _cli(tool, "-m", p, "-t", "1", *args)
        _assert_one_line_error(r, tool, p)


def test_cli_truncated_and_unconverted(converted, tiny, tmp_path, text_file):
    raw = Path(converted["tied_q4"]).read_bytes()
    p = write(tmp_path, raw[:len(raw) // 2])
    for tool, args in (("larosa-run", ["-p", "hi"]), ("larosa-perplexity", ["-f", text_file, "-c", "32", "-q"])):
        _assert_one_line_error(_cli(tool, "-m", p, "-t", "1", *args), tool, "past the end")
        _assert_one_line_error(_cli(tool, "-m", tiny["untied_f32"], "-t", "1", *args), tool, "larosa-convert")
        _assert_one_line_error(_cli(tool, "-m", str(tmp_path), "-t", "1", *args), tool, "not a regular file")


def test_cli_nonfinite_weights(converted, tmp_path, text_file):
    g = _poison_blocks(GGUF.parse(Path(converted["tied_q8"]).read_bytes()), EMBD, 34, NAN16)
    p = write(tmp_path, g)
    _assert_one_line_error(_cli("larosa-run", "-m", p, "-t", "1", "-p", "hi", "-n", "4"), "larosa-run",
                           "NaN or Inf in the logits")
    _assert_one_line_error(_cli("larosa-perplexity", "-m", p, "-t", "1", "-f", text_file, "-c", "32", "-q"),
                           "larosa-perplexity", "NaN or Inf in the logits")


# ---- hostile chat templates ----------------------------------------------------------------------

def _with_template(seed: GGUF, tmp_path: Path, template: str) -> str:
    return write(tmp_path, copy.deepcopy(seed).set("tokenizer.chat_template", STR, s_enc(template)), "chat.gguf")


def test_chat_malformed_template_is_one_line(seed, tmp_path):
    p = _with_template(seed, tmp_path, "{% for m in messages %}{{ m.content }")
    _assert_one_line_error(_cli("larosa-chat", "-m", p, "-t", "1", stdin="hi\n"), "larosa-chat",
                           "malformed chat template")


@pytest.mark.parametrize("template,said", [
    ("{{ messages.__class__.__mro__[1].__subclasses__() }}", "blocked by the sandbox"),
    ("{{ cycler.__init__.__globals__.os.system('echo pwned') }}", "blocked by the sandbox"),
    ("{% for m in messages %}{{ raise_exception('no users here') }}{% endfor %}", "refused the conversation: no users"),
    ("{{ range(10 ** 9) | list }}", "chat template failed"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "chat template failed"),
    ("{{ 'ab' * 100000000 }}", "longer than"),
])
def test_chat_hostile_template_session(seed, tmp_path, template, said):
    """A template that fails on every conversation is refused at start-up in one error line (issue 12:
    never a session where every turn fails); nothing runs outside the sandbox."""
    p = _with_template(seed, tmp_path, template)
    r = _cli("larosa-chat", "-m", p, "-t", "1", "-n", "4", "--seed", "1", stdin="hello\n/stats\n/exit\n")
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout and r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith("larosa-chat: error:") and said in line and "every turn would fail" in line
    assert "pwned" not in r.stderr


BOMBS = {   # templates whose output or intermediate values are huge, built without + * **
    "str.ljust": "{{ 'a'.ljust(100000000) }}",
    "format width": "{{ '{:>100000000}'.format(1) }}",
    "percent width (compile time)": "{{ '%0100000000d' % 1 }}",
    "~ doubling": "{% set a = 'a' * 3000000 %}{% set b = a ~ a %}{% set c = b ~ b %}{% set d = c ~ c %}{{ d }}",
    "nested loops": "{% for i in range(1000) %}{% for j in range(100) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}",
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_chat_template_size_bombs_are_refused(name):
    from larosa.runtime.chat import ChatTemplate, TemplateSecurityError
    with pytest.raises(TemplateSecurityError):
        ChatTemplate(BOMBS[name]).render([{"role": "user", "content": "hi"}])


def test_chat_template_sandbox_blocks_file_and_process_access(tmp_path):
    from larosa.runtime.chat import ChatTemplate, ChatTemplateError
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    for src in (f"{{{{ self._TemplateReference__context.environment.loader.get_source(None, '{secret}') }}}}",
                "{{ lipsum.__globals__['os'].popen('id').read() }}",
                "{{ ''.__class__.__base__.__subclasses__() }}",
                "{{ namespace.__init__.__globals__ }}",
                "{% set x = messages.append(1) %}{{ x }}"):
        with pytest.raises(ChatTemplateError) as e:
            ChatTemplate(src).render([{"role": "user", "content": "hi"}])
        assert "s3cret" not in str(e.value) and "uid=" not in str(e.value)


def test_large_counts_fail_fast(tmp_path):
    """Counts just above the caps are refused from the header alone, whatever the file size."""
    from larosa.runtime import gguf_file as G
    for n_t, n_kv, pat in ((G.MAX_TENSORS + 1, 0, "tensors"), (0, G.MAX_KV + 1, "keys")):
        p = write(tmp_path, struct.pack("<4sIQQ", b"GGUF", 3, n_t, n_kv) + bytes(64))
        with pytest.raises(FormatError, match=f"{pat}, more than the limit"):
            load(p)
    p = write(tmp_path, struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + s_enc("k") + struct.pack("<IIQ", ARR, U8, G.MAX_ARRAY_ITEMS + 1))
    with pytest.raises(FormatError, match="would hold more than"):
        load(p)



def test_bool_array_with_bad_values(seed, tmp_path):
    p = write(tmp_path, copy.deepcopy(seed).set("general.flags", ARR, array(BOOL, [1, 0, 3])))
    with pytest.raises(FormatError, match="bool array value of 'general.flags' holds values other than 0 and 1"):
        load(p)

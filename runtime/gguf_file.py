"""Opening GGUF files and reading typed metadata, with clear errors instead of tracebacks.

Hostile files: before gguf's GGUFReader (which trusts every count and offset it reads, and loops in
Python over every array item) sees a file, `scan_gguf` walks the header itself with bounded work:
magic, version, byte order, counts, every key and value (types, lengths, caps), every tensor
description (name, dims, type, offset inside the file, alignment, no overlap). Anything wrong is a
FormatError (UnsupportedError for a well-formed file this runtime does not read) naming the file,
the offset and the problem.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, ReaderTensor

from .errors import FormatError, UnsupportedError

_INT_TYPES = {GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
              GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64}
_FLOAT_TYPES = {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64}

# Caps on what a header may ask for. Far above any real model (Llama 3: 291 tensors, ~40 keys,
# 128256 tokens + 280147 merges = ~0.7 M array items), low enough that a hostile count cannot make
# the scan or GGUFReader allocate much or loop for long.
READ_VERSIONS = (2, 3)          # v2 and v3 share the layout (v1's 32-bit counts are long gone)
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_KEY_BYTES = (1 << 16) - 1   # the GGUF spec's limit on key length
MAX_NAME_BYTES = 64             # ggml's GGML_MAX_NAME
MAX_DIMS = 4                    # ggml's GGML_MAX_DIMS
MAX_STRING_BYTES = 1 << 26      # one string value (chat templates are a few KiB)
MAX_ARRAY_ITEMS = 1 << 21       # all array items of a file together (GGUFReader: one Python step each)
_HEADER = struct.Struct("<4sIQQ")
_SCALAR_SIZE = {GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.UINT16: 2,
                GGUFValueType.INT16: 2, GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4,
                GGUFValueType.FLOAT32: 4, GGUFValueType.BOOL: 1, GGUFValueType.UINT64: 8,
                GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8}
_SCALAR_FMT = {GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
               GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
               GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<B", GGUFValueType.UINT64: "<Q",
               GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d"}
_VALUE_TYPES = {int(t): t for t in GGUFValueType}
_TENSOR_TYPES = {int(t): t for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor description of a GGUF header."""
    name: str
    dims: tuple[int, ...]          # ggml's ne: dims[0] is the row length
    type: GGMLQuantizationType
    offset: int                    # relative to the data section, as stored
    nbytes: int

    @property
    def rows_cols(self) -> tuple[int, ...]:
        return tuple(reversed(self.dims))


@dataclass(frozen=True)
class KeyInfo:
    """Where one metadata value sits and what it is (arrays: item type and count)."""
    type: GGUFValueType
    item_type: GGUFValueType | None
    count: int
    offset: int                    # of the key's length prefix


@dataclass
class GGUFLayout:
    """The structure of a GGUF file as scan_gguf found it (every offset checked)."""
    path: str
    file_size: int
    version: int
    alignment: int
    data_offset: int               # absolute start of the tensor data section
    keys: dict[str, KeyInfo] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)


class _Cursor:
    """Bounded little-endian reads from a mapped file; running past the end is a FormatError."""

    def __init__(self, buf, size: int, path: str):
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def fail(self, msg: str, at: int | None = None) -> FormatError:
        return FormatError(f"{self.path}: {msg} (at byte {self.pos if at is None else at})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated: {what} needs {n} bytes, {self.size - self.pos} are left")

    def unpack(self, fmt: str, size: int, what: str):
        self.need(size, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return v

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def string(self, what: str, limit: int) -> bytes:
        at = self.pos
        n = self.u64(f"length of {what}")
        if n > limit:
            raise self.fail(f"{what} is {n} bytes long, more than the limit of {limit}", at)
        self.need(n, what)
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s

    def text(self, what: str, limit: int) -> tuple[str, int]:
        """A string that must be valid UTF-8, and the offset of its length prefix."""
        at = self.pos
        raw = self.string(what, limit)
        try:
            return raw.decode("utf-8"), at
        except UnicodeDecodeError:
            raise self.fail(f"{what} ({raw[:40]!r}) is not valid UTF-8", at) from None

    def skip_string(self, what: str) -> None:
        at = self.pos
        n = self.u64(f"length of {what}")
        if n > MAX_STRING_BYTES:
            raise self.fail(f"{what} is {n} bytes long, more than the limit of {MAX_STRING_BYTES}", at)
        self.need(n, what)
        self.pos += n


def _value_type(cur: _Cursor, raw: int, what: str) -> GGUFValueType:
    t = _VALUE_TYPES.get(raw)
    if t is None:
        raise cur.fail(f"{what} has unknown value type {raw}", cur.pos - 4)
    return t


def _scan_value(cur: _Cursor, key: str, t: GGUFValueType, budget: list[int]) -> tuple[GGUFValueType | None, int]:
    """Skips one value of type t (checking it lies inside the file); returns (item type, count)."""
    what = f"value of {key!r}"
    if t == GGUFValueType.STRING:
        cur.skip_string(what)
        return None, 1
    if t != GGUFValueType.ARRAY:
        if t == GGUFValueType.BOOL:
            b = cur.unpack("<B", 1, what)
            if b > 1:
                raise cur.fail(f"bool {what} is {b}, not 0 or 1", cur.pos - 1)
        else:
            cur.unpack(_SCALAR_FMT[t], _SCALAR_SIZE[t], what)
        return None, 1
    sub = _value_type(cur, cur.u32(f"item type of {what}"), f"array {what}")
    at = cur.pos
    n = cur.u64(f"item count of {what}")
    if sub == GGUFValueType.ARRAY:
        raise UnsupportedError(f"{cur.path}: {what} is an array of arrays, which is not supported")
    budget[0] += n
    if budget[0] > MAX_ARRAY_ITEMS:
        raise cur.fail(f"array {what} has {n} items: the arrays of the file would hold more than "
                       f"{MAX_ARRAY_ITEMS} items together", at)
    if sub == GGUFValueType.STRING:
        for i in range(n):
            cur.skip_string(f"item {i} of {what}")
    else:
        size = _SCALAR_SIZE[sub] * n
        cur.need(size, f"{n} items of {what}")
        if sub == GGUFValueType.BOOL and n:   # (a copy: no view may outlive the mapping)
            if max(cur.buf[cur.pos:cur.pos + n]) > 1:
                raise cur.fail(f"bool array {what} holds values other than 0 and 1")
        cur.pos += size
    return sub, n


def scan_gguf(path: str | os.PathLike) -> GGUFLayout:
    """Checks the structure of a GGUF file with bounded work and returns it (see the module doc)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise FormatError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER.size:
                magic = f.read(4)
                if magic != b"GGUF":
                    raise FormatError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
                raise FormatError(f"{path}: truncated GGUF header ({size} bytes, at least {_HEADER.size} needed)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _scan(mm, len(mm), path)
    except OSError as e:
        raise FormatError(f"{path}: cannot read the file: {e.strerror or e}") from None


def _scan(buf, size: int, path: str) -> GGUFLayout:
    magic, version, n_tensors, n_kv = _HEADER.unpack_from(buf, 0)
    if magic != b"GGUF":
        raise FormatError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    if version & 0xFFFFFF == 0 and version:   # a small version number, byte-swapped
        raise UnsupportedError(f"{path}: a big-endian GGUF file; only little-endian files are supported")
    if version not in READ_VERSIONS:
        if not 1 <= version < 256:
            raise FormatError(f"{path}: invalid GGUF version {version}")
        raise UnsupportedError(f"{path}: GGUF version {version}; this runtime reads versions "
                               f"{', '.join(map(str, READ_VERSIONS))}")
    if n_tensors > MAX_TENSORS:
        raise FormatError(f"{path}: the header announces {n_tensors} tensors, more than the limit of {MAX_TENSORS}")
    if n_kv > MAX_KV:
        raise FormatError(f"{path}: the header announces {n_kv} metadata keys, more than the limit of {MAX_KV}")
    cur = _Cursor(buf, size, path)
    cur.pos = _HEADER.size
    layout = GGUFLayout(path=path, file_size=size, version=version, alignment=32, data_offset=0)
    budget = [0]
    for i in range(n_kv):
        key, at = cur.text(f"key {i}", MAX_KEY_BYTES)
        if key in layout.keys:
            raise cur.fail(f"duplicate metadata key {key!r}", at)
        t = _value_type(cur, cur.u32(f"value type of {key!r}"), f"key {key!r}")
        sub, count = _scan_value(cur, key, t, budget)
        layout.keys[key] = KeyInfo(t, sub, count, at)
    align_key = layout.keys.get("general.alignment")
    if align_key is not None:
        if align_key.type != GGUFValueType.UINT32:
            raise FormatError(f"{path}: general.alignment must be a uint32, not {align_key.type.name}")
        a = _read_scalar_at(buf, align_key, "<I")
        if a == 0 or a & (a - 1) or a > 1 << 20:
            raise FormatError(f"{path}: general.alignment = {a} is not a power of two up to 2^20")
        layout.alignment = a
    names: set[str] = set()
    for i in range(n_tensors):
        name, at = cur.text(f"the name of tensor {i}", MAX_NAME_BYTES)
        if name in names:
            raise cur.fail(f"duplicate tensor {name!r}", at)
        names.add(name)
        n_dims = cur.u32(f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)", cur.pos - 4)
        dims = tuple(cur.u64(f"dimensions of tensor {name!r}") for _ in range(n_dims))
        if min(dims) < 1 or max(dims) >= 1 << 40:
            raise cur.fail(f"tensor {name!r} has dimensions {list(dims)} outside [1, 2^40)")
        raw_type = cur.u32(f"type of tensor {name!r}")
        qtype = _TENSOR_TYPES.get(raw_type)
        if qtype is None:
            raise cur.fail(f"tensor {name!r} has unknown type {raw_type}", cur.pos - 4)
        offset = cur.u64(f"data offset of tensor {name!r}")
        block, type_size = GGML_QUANT_SIZES[qtype]
        if dims[0] % block:
            raise cur.fail(f"tensor {name!r}: rows of {dims[0]} values cannot be stored as {qtype.name} "
                           f"(blocks of {block})")
        n_elements = 1
        for d in dims:
            n_elements *= d
        layout.tensors.append(TensorInfo(name, dims, qtype, offset, n_elements // block * type_size))
    layout.data_offset = -(-cur.pos // layout.alignment) * layout.alignment
    data_size = size - layout.data_offset
    spans = []
    for t in layout.tensors:
        if t.offset % layout.alignment:
            raise FormatError(f"{path}: tensor {t.name!r} starts at data offset {t.offset}, which is not "
                              f"a multiple of the alignment {layout.alignment}")
        if t.offset + t.nbytes > data_size:
            raise FormatError(f"{path}: tensor {t.name!r} ({t.nbytes} bytes at data offset {t.offset}) "
                              f"runs past the end of the file (data section of {max(data_size, 0)} bytes): "
                              "the file is truncated or the offset is wrong")
        spans.append((t.offset, t.offset + t.nbytes, t.name))
    spans.sort()
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            raise FormatError(f"{path}: tensors {an!r} (data bytes {a0}..{a1}) and {bn!r} "
                              f"(from {b0}) overlap")
    return layout


def _read_scalar_at(buf, k: KeyInfo, fmt: str):
    """The scalar value of a key scanned at k.offset (its length prefix)."""
    klen = struct.unpack_from("<Q", buf, k.offset)[0]
    return struct.unpack_from(fmt, buf, k.offset + 8 + klen + 4)[0]


def open_checked(path: str | os.PathLike) -> tuple[GGUFReader, GGUFLayout]:
    """scan_gguf, then gguf's reader over the checked file (memory-mapped read-only), and a cross-check
    that both agree; any failure is a FormatError naming the file."""
    path = os.fspath(path)
    layout = scan_gguf(path)
    try:
        reader = GGUFReader(path, "r")
    except Exception as e:  # the scan should leave nothing for gguf to trip on; never a traceback
        raise FormatError(f"{path}: malformed GGUF ({type(e).__name__}: {e})") from None
    got = [(t.name, int(t.data_offset), int(t.data.nbytes)) for t in reader.tensors]
    want = [(t.name, layout.data_offset + t.offset, t.nbytes) for t in layout.tensors]
    if len(reader.data) != layout.file_size or got != want or list(reader.fields)[3:] != list(layout.keys):
        raise FormatError(f"{path}: the file changed while it was opened, or gguf reads it differently")
    return reader, layout


def open_gguf(path: str | os.PathLike) -> GGUFReader:
    """Checks `path` (scan_gguf) and memory-maps it read-only with gguf's reader; any problem becomes a
    FormatError or UnsupportedError naming the file."""
    return open_checked(path)[0]


class Metadata:
    """Typed access to a GGUF file's key/value pairs."""

    def __init__(self, reader: GGUFReader, path: str):
        self.reader, self.path = reader, path

    def has(self, key: str) -> bool:
        return key in self.reader.fields

    def _field(self, key: str):
        f = self.reader.fields.get(key)
        if f is None:
            raise FormatError(f"{self.path}: missing metadata key {key!r}")
        return f

    def _scalar(self, key: str, allowed: set, what: str) -> Any:
        f = self._field(key)
        if len(f.types) != 1 or f.types[0] not in allowed:
            raise FormatError(f"{self.path}: metadata {key!r} must be {what}")
        return f.parts[f.data[0]][0]

    def int(self, key: str, default: int | None = None) -> int:
        if default is not None and not self.has(key):
            return default
        return int(self._scalar(key, _INT_TYPES, "an integer"))

    def float(self, key: str, default: float | None = None) -> float:
        if default is not None and not self.has(key):
            return default
        return float(self._scalar(key, _FLOAT_TYPES, "a float"))

    def bool(self, key: str, default: bool | None = None) -> bool:
        if default is not None and not self.has(key):
            return default
        return bool(self._scalar(key, {GGUFValueType.BOOL}, "a bool"))

    def str(self, key: str, default: str | None = None) -> str:
        if default is not None and not self.has(key):
            return default
        f = self._field(key)
        if f.types != [GGUFValueType.STRING]:
            raise FormatError(f"{self.path}: metadata {key!r} must be a string")
        try:
            return bytes(f.parts[f.data[0]]).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.path}: metadata {key!r} is not valid UTF-8") from None

    def array(self, key: str, kind: str) -> np.ndarray:
        """A numeric array; kind 'int' or 'float'."""
        f = self._field(key)
        allowed = _INT_TYPES if kind == "int" else _FLOAT_TYPES
        if len(f.types) != 2 or f.types[0] != GGUFValueType.ARRAY or f.types[1] not in allowed:
            raise FormatError(f"{self.path}: metadata {key!r} must be an array of {kind}s")
        if not f.data:
            return np.zeros(0, dtype=np.float64 if kind == "float" else np.int64)
        return np.concatenate([f.parts[i] for i in f.data]).astype(np.float64 if kind == "float" else np.int64)


def tensor_map(reader: GGUFReader) -> dict[str, ReaderTensor]:
    return {t.name: t for t in reader.tensors}


def tensor_rows_cols(t: ReaderTensor) -> tuple[int, ...]:
    """Shape in row-major order (ggml's ne reversed): a 2-D weight is (rows, cols)."""
    return tuple(int(x) for x in reversed(t.shape.tolist()))


def field_value(f) -> tuple[Any, GGUFValueType, GGUFValueType | None]:
    """(value, type, array item type) of a reader field, strings kept as raw bytes."""
    t = f.types[0]
    if t == GGUFValueType.ARRAY:
        if len(f.types) != 2:
            raise FormatError(f"metadata {f.name!r}: nested arrays are not supported")
        sub = f.types[1]
        if sub == GGUFValueType.STRING:
            return [bytes(f.parts[i]) for i in f.data], t, sub
        return [f.parts[i].tolist()[0] for i in f.data], t, sub
    if t == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]), t, None
    return f.parts[f.data[0]].tolist()[0], t, None


def copy_fields(reader: GGUFReader, writer, keys: list[str]) -> None:
    """Copies metadata verbatim (types included) from a reader to a gguf.GGUFWriter."""
    for k in keys:
        value, t, sub = field_value(reader.fields[k])
        if t == GGUFValueType.ARRAY and not value:
            continue  # gguf's writer cannot write empty arrays
        writer.add_key_value(k, value, t, sub)

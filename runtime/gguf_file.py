"""Opening GGUF files and reading typed metadata, with clear errors instead of tracebacks.

Hostile files: before gguf's GGUFReader (which trusts every count and offset it reads, and loops in
Python over every array item) sees a file, `scan_gguf` walks the header itself with bounded work:
magic, version, byte order, counts, every key and value (types, lengths, caps), every tensor
description (name, dims, type, offset inside the file, alignment, no overlap). Anything wrong is a
FormatError (UnsupportedError for a well-formed file this runtime does not read) naming the file,
the offset and the problem.

Reading: `GGUFFile` keeps the checked mapping and reads a value only when asked, at the offset the
scan recorded. gguf's GGUFReader is not used to open files: it builds Python objects for every item
of every array when it opens one (~2.5 s for SmolLM2's 49,152-token vocabulary, 11 s for Gemma 3's
262,144), while a model needs scalars, a few array lengths and the tensor descriptions, and the
vocabulary is read by llama.cpp's tokenizer itself (`write_vocab_gguf` copies its keys byte for byte).
gguf still supplies the types, the block sizes and ReaderTensor.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, ReaderTensor
from gguf.quants import quant_shape_to_byte_shape

from .errors import FormatError, UnsupportedError

_INT_TYPES = {GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
              GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64}
_FLOAT_TYPES = {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64}

# Caps on what a header may ask for. Far above any real model (Llama 3: 291 tensors, ~40 keys,
# 128256 tokens + 280147 merges = ~0.7 M array items; Gemma 3: 3 x 262144), low enough that a hostile
# count cannot make the scan allocate much or loop for long.
READ_VERSIONS = (2, 3)          # v2 and v3 share the layout (v1's 32-bit counts are long gone)
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_KEY_BYTES = (1 << 16) - 1   # the GGUF spec's limit on key length
MAX_NAME_BYTES = 64             # ggml's GGML_MAX_NAME
MAX_DIMS = 4                    # ggml's GGML_MAX_DIMS
MAX_STRING_BYTES = 1 << 26      # one string value (chat templates are a few KiB)
MAX_ARRAY_ITEMS = 1 << 21       # all array items of a file together (strings: one Python step each)
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
    value_at: int = 0              # the value: a scalar, a string's length prefix, an array's first item
    end: int = 0                   # just past the value (offset..end is the whole key/value entry)


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
        _skip_strings(cur, n, what)
    else:
        size = _SCALAR_SIZE[sub] * n
        cur.need(size, f"{n} items of {what}")
        if sub == GGUFValueType.BOOL and n:   # (a copy: no view may outlive the mapping)
            if max(cur.buf[cur.pos:cur.pos + n]) > 1:
                raise cur.fail(f"bool array {what} holds values other than 0 and 1")
        cur.pos += size
    return sub, n


def _skip_strings(cur: _Cursor, n: int, what: str) -> None:
    """Skips n strings (a vocabulary: up to ~10^6): a tight loop, the message is made only on failure."""
    buf, size, pos, unpack = cur.buf, cur.size, cur.pos, struct.unpack_from
    for i in range(n):
        if pos + 8 > size:
            break
        ln = unpack("<Q", buf, pos)[0]
        if ln > MAX_STRING_BYTES or pos + 8 + ln > size:
            break
        pos += 8 + ln
    else:
        cur.pos = pos
        return
    cur.pos = pos
    cur.skip_string(f"item {i} of {what}")   # raises, naming the item


def scan_gguf(path: str | os.PathLike) -> GGUFLayout:
    """Checks the structure of a GGUF file with bounded work and returns it (see the module doc)."""
    return GGUFFile(path).layout


def _map(path: str) -> mmap.mmap:
    """The file mapped read-only; FormatError for what is not a regular GGUF file of header size."""
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
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
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
        value_at = cur.pos + (12 if t == GGUFValueType.ARRAY else 0)
        sub, count = _scan_value(cur, key, t, budget)
        layout.keys[key] = KeyInfo(t, sub, count, at, value_at, cur.pos)
    align_key = layout.keys.get("general.alignment")
    if align_key is not None:
        if align_key.type != GGUFValueType.UINT32:
            raise FormatError(f"{path}: general.alignment must be a uint32, not {align_key.type.name}")
        a = struct.unpack_from("<I", buf, align_key.value_at)[0]
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


# numpy item type of a tensor's data view, as gguf's GGUFReader builds it (others: raw bytes per row)
_TENSOR_DTYPES = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
                  GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
                  GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
                  GGMLQuantizationType.I64: np.int64}
_ARRAY_DTYPES = {GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
                 GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
                 GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "<u1", GGUFValueType.UINT64: "<u8",
                 GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8"}


class GGUFFile:
    """A GGUF file checked by the scan (module doc), memory-mapped read-only, its values read on demand.

    fields: key -> KeyInfo, in file order. tensors: gguf ReaderTensor per tensor description, in file
    order, `data` a read-only view of the mapping shaped as gguf's reader shapes it (F32/F16/I8...:
    items in row-major order; quantized types: bytes per row). Reading a value never re-trusts the
    file: every offset was checked by the scan of this same mapping."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._mm = _map(self.path)
        self.layout = _scan(self._mm, len(self._mm), self.path)
        self.fields: dict[str, KeyInfo] = self.layout.keys
        self.data = np.frombuffer(self._mm, dtype=np.uint8)   # read-only: the mapping is ACCESS_READ
        self.tensors = [self._tensor(t) for t in self.layout.tensors]

    def _tensor(self, t: TensorInfo) -> ReaderTensor:
        start = self.layout.data_offset + t.offset
        rows_cols = tuple(reversed(t.dims))
        dtype = _TENSOR_DTYPES.get(t.type)
        if dtype is None:
            data = self.data[start:start + t.nbytes].reshape(quant_shape_to_byte_shape(rows_cols, t.type))
        else:
            data = self.data[start:start + t.nbytes].view(dtype).reshape(rows_cols)
        n = 1
        for d in t.dims:
            n *= d
        return ReaderTensor(name=t.name, tensor_type=t.type, shape=np.array(t.dims, dtype=np.uint64),
                            n_elements=n, n_bytes=t.nbytes, data_offset=start, data=data, field=None)

    def release(self, t: ReaderTensor) -> None:
        """Drops the pages wholly inside tensor t's data from this process (MADV_DONTNEED): for data
        that was read once and is then used from a copy. The mapping is read-only and file-backed, so
        a later read maps the pages back in from the page cache; nothing is lost."""
        page = mmap.PAGESIZE
        a, b = -(-int(t.data_offset) // page) * page, (int(t.data_offset) + int(t.n_bytes)) // page * page
        if b > a and hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED, a, b - a)

    def bytes_at(self, start: int, end: int) -> bytes:
        return self._mm[start:end]

    def string_at(self, pos: int) -> bytes:
        n = struct.unpack_from("<Q", self._mm, pos)[0]
        return self._mm[pos + 8:pos + 8 + n]

    def strings(self, key: str) -> list[bytes]:
        """The items of a string array (the scan checked each lies inside the file)."""
        k = self.fields[key]
        mm, pos, out, unpack = self._mm, k.value_at, [], struct.unpack_from
        for _ in range(k.count):
            n = unpack("<Q", mm, pos)[0]
            out.append(mm[pos + 8:pos + 8 + n])
            pos += 8 + n
        return out

    def numbers(self, key: str) -> np.ndarray:
        """The items of a numeric or bool array, as stored (a copy)."""
        k = self.fields[key]
        return np.frombuffer(self._mm, dtype=_ARRAY_DTYPES[k.item_type], count=k.count, offset=k.value_at).copy()

    def value(self, key: str) -> tuple[Any, GGUFValueType, GGUFValueType | None]:
        """(value, type, array item type) as gguf.GGUFWriter.add_key_value takes them; strings as bytes."""
        k = self.fields[key]
        if k.type == GGUFValueType.ARRAY:
            items = self.strings(key) if k.item_type == GGUFValueType.STRING else self.numbers(key).tolist()
            if k.item_type == GGUFValueType.BOOL:
                items = [bool(x) for x in items]
            return items, k.type, k.item_type
        if k.type == GGUFValueType.STRING:
            return self.string_at(k.value_at), k.type, None
        v = struct.unpack_from(_SCALAR_FMT[k.type], self._mm, k.value_at)[0]
        return (bool(v) if k.type == GGUFValueType.BOOL else v), k.type, None


def open_checked(path: str | os.PathLike) -> tuple[GGUFFile, GGUFLayout]:
    """The checked, mapped file and its layout; any problem is a FormatError/UnsupportedError naming it."""
    f = GGUFFile(path)
    return f, f.layout


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """Checks `path` (see the module doc) and maps it read-only; any problem becomes a FormatError or
    UnsupportedError naming the file."""
    return GGUFFile(path)


class Metadata:
    """Typed access to a GGUF file's key/value pairs: a wrong type is a FormatError naming the key."""

    def __init__(self, file: GGUFFile, path: str):
        self.file, self.path = file, path

    @property
    def reader(self) -> GGUFFile:   # the name of former versions
        return self.file

    def has(self, key: str) -> bool:
        return key in self.file.fields

    def _field(self, key: str) -> KeyInfo:
        f = self.file.fields.get(key)
        if f is None:
            raise FormatError(f"{self.path}: missing metadata key {key!r}")
        return f

    def types(self, key: str) -> list[GGUFValueType]:
        """[type], or [ARRAY, item type] for an array."""
        f = self._field(key)
        return [f.type] if f.item_type is None else [f.type, f.item_type]

    def count(self, key: str) -> int:
        """Items of an array (1 for a scalar or string)."""
        return self._field(key).count

    def _scalar(self, key: str, allowed: set, what: str) -> Any:
        f = self._field(key)
        if f.type not in allowed:
            raise FormatError(f"{self.path}: metadata {key!r} must be {what}"
                              + (f", not an array of {f.count}" if f.type == GGUFValueType.ARRAY else ""))
        return self.file.value(key)[0]

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
        if f.type != GGUFValueType.STRING:
            raise FormatError(f"{self.path}: metadata {key!r} must be a string")
        try:
            return self.file.string_at(f.value_at).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.path}: metadata {key!r} is not valid UTF-8") from None

    def array(self, key: str, kind: str) -> np.ndarray:
        """A numeric array; kind 'int' or 'float'."""
        f = self._field(key)
        allowed = _INT_TYPES if kind == "int" else _FLOAT_TYPES
        if f.type != GGUFValueType.ARRAY or f.item_type not in allowed:
            raise FormatError(f"{self.path}: metadata {key!r} must be an array of {kind}s")
        return self.file.numbers(key).astype(np.float64 if kind == "float" else np.int64)

    def strings(self, key: str) -> list[bytes]:
        """A string array's items as bytes."""
        if self.types(key) != [GGUFValueType.ARRAY, GGUFValueType.STRING]:
            raise FormatError(f"{self.path}: metadata {key!r} must be an array of strings")
        return self.file.strings(key)


def tensor_map(reader: GGUFFile | GGUFReader) -> dict[str, ReaderTensor]:
    return {t.name: t for t in reader.tensors}


def tensor_rows_cols(t: ReaderTensor) -> tuple[int, ...]:
    """Shape in row-major order (ggml's ne reversed): a 2-D weight is (rows, cols)."""
    return tuple(int(x) for x in reversed(t.shape.tolist()))


def field_value(f) -> tuple[Any, GGUFValueType, GGUFValueType | None]:
    """(value, type, array item type) of a gguf GGUFReader field, strings kept as raw bytes."""
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


def copy_fields(reader: GGUFFile | GGUFReader, writer, keys: list[str]) -> None:
    """Copies metadata verbatim (types included) from a GGUFFile (or gguf's reader) to a gguf.GGUFWriter."""
    for k in keys:
        value, t, sub = reader.value(k) if isinstance(reader, GGUFFile) else field_value(reader.fields[k])
        if t == GGUFValueType.ARRAY and not value:
            continue  # gguf's writer cannot write empty arrays
        writer.add_key_value(k, value, t, sub)


def _kv_bytes(key: str, t: GGUFValueType, value) -> bytes:
    k = key.encode()
    head = struct.pack("<Q", len(k)) + k + struct.pack("<I", t)
    if t == GGUFValueType.STRING:
        v = value.encode()
        return head + struct.pack("<Q", len(v)) + v
    return head + struct.pack(_SCALAR_FMT[t], value)


def write_vocab_gguf(file: GGUFFile, out_path: str, kvs: list[tuple[str, GGUFValueType, Any]],
                     keys: list[str]) -> None:
    """A tensor-less GGUF v3 for llama.cpp's vocab-only load: general.architecture and the scalar or
    string `kvs` (key, type, value), then `keys` of `file` copied byte for byte (their entries are
    contiguous and were checked by the scan). gguf's writer would need every token as a Python
    object first (~0.3 s for SmolLM2's vocabulary, several seconds for 256k-token ones)."""
    entries = [_kv_bytes("general.architecture", GGUFValueType.STRING, "llama")]
    entries += [_kv_bytes(k, t, v) for k, t, v in kvs]
    entries += [file.bytes_at(file.fields[k].offset, file.fields[k].end) for k in keys]
    body = _HEADER.pack(b"GGUF", 3, 0, len(entries)) + b"".join(entries)
    with open(out_path, "wb") as f:
        f.write(body + bytes(-len(body) % 32))

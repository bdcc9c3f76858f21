"""Opening GGUF files and reading typed metadata, with clear errors instead of tracebacks."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, ReaderTensor

from .errors import FormatError

_INT_TYPES = {GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
              GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64}
_FLOAT_TYPES = {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64}


def open_gguf(path: str | os.PathLike) -> GGUFReader:
    """Memory-maps `path` read-only; any parse failure becomes a FormatError naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise FormatError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise FormatError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    try:
        return GGUFReader(path, "r")
    except Exception as e:  # gguf raises ValueError, IndexError, KeyError... on malformed files
        raise FormatError(f"{path}: malformed GGUF ({type(e).__name__}: {e})") from None


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

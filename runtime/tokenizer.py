"""llama.cpp's own tokenizer, through llama-cpp-python's C API with a vocab-only model load.

A LaRoSA file has general.architecture = "larosa", which llama.cpp refuses; its tokenizer.*
keys are the source model's, copied verbatim. To tokenize it we write those keys into a small
temporary llama GGUF (no tensors), load its vocabulary, and delete it.
"""
from __future__ import annotations

import ctypes
import os
import tempfile

import llama_cpp
from gguf import GGUFReader, GGUFWriter

from .errors import FormatError
from .format import HParams
from .gguf_file import copy_fields


@llama_cpp.llama_log_callback
def _quiet_log(level, text, user_data):  # llama.cpp's loader chatter; our errors carry the message
    pass


_initialised = False


def _init() -> None:
    global _initialised
    if not _initialised:
        llama_cpp.llama_backend_init()
        llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p())
        _initialised = True


class Tokenizer:
    """Text <-> token ids exactly as llama.cpp does them for this vocabulary."""

    def __init__(self, llama_gguf_path: str):
        _init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(os.fsencode(llama_gguf_path), params)
        if not self._model:
            raise FormatError(f"{llama_gguf_path}: llama.cpp could not load the vocabulary")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.bos_id = int(llama_cpp.llama_vocab_bos(self._vocab))
        self.eos_id = int(llama_cpp.llama_vocab_eos(self._vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    @classmethod
    def from_metadata(cls, reader: GGUFReader, hp: HParams, path: str) -> "Tokenizer":
        keys = [k for k in reader.fields if k.startswith("tokenizer.")]
        if "tokenizer.ggml.model" not in keys:
            raise FormatError(f"{path}: no tokenizer in the file (tokenizer.ggml.model missing)")
        fd, tmp = tempfile.mkstemp(suffix=".vocab.gguf")
        os.close(fd)
        try:
            w = GGUFWriter(tmp, "llama")
            w.add_uint32("llama.block_count", hp.n_layers)
            w.add_uint32("llama.context_length", hp.n_ctx)
            w.add_uint32("llama.embedding_length", hp.dim)
            w.add_uint32("llama.feed_forward_length", hp.ffn_dim)
            w.add_uint32("llama.attention.head_count", hp.n_heads)
            w.add_uint32("llama.attention.head_count_kv", hp.n_kv_heads)
            w.add_float32("llama.attention.layer_norm_rms_epsilon", hp.norm_eps)
            copy_fields(reader, w, keys)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            w.close()
            return cls(tmp)
        finally:
            os.unlink(tmp)

    # bound at class creation: at interpreter exit the module global llama_cpp may already be None
    _free = staticmethod(llama_cpp.llama_model_free)

    def __del__(self):
        if getattr(self, "_model", None):
            self._free(self._model)
            self._model = None

    def encode(self, text: str | bytes, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of text; add_bos None follows the model's setting; special parses <|...|> tokens."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        n_max = len(data) + 8
        buf = (llama_cpp.llama_token * n_max)()
        # add_bos None: llama.cpp's add_special (BOS/EOS as the vocabulary says); else BOS by hand
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_bos is None, special)
        if n < 0:  # cannot happen with len + 8, but never trust it
            buf = (llama_cpp.llama_token * -n)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, -n, add_bos is None, special)
        ids = list(buf[:n])
        return [self.bos_id] + ids if add_bos and self.bos_id >= 0 else ids

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (a piece may be a partial UTF-8 sequence)."""
        if not 0 <= token < self.n_vocab:
            raise ValueError(f"token id {token} outside the vocabulary (0..{self.n_vocab - 1})")
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def decode(self, ids: list[int], special: bool = False) -> str:
        return b"".join(self.piece(t, special) for t in ids).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

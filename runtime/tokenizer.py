"""llama.cpp's own tokenizer, through llama-cpp-python's C API with a vocab-only model load.

A LaRoSA file has general.architecture = "larosa", which llama.cpp refuses; its tokenizer.*
keys are the source model's, copied verbatim. To tokenize it we write those keys into a small
temporary llama GGUF (no tensors), load its vocabulary, and delete it.
"""
from __future__ import annotations

import codecs
import ctypes
import os
import tempfile
from typing import Sequence

import llama_cpp
from gguf import GGUFReader, GGUFWriter

from .errors import FormatError
from .format import HParams
from .gguf_file import copy_fields


@llama_cpp.llama_log_callback
def _quiet_log(level, text, user_data):  # llama.cpp's loader chatter; our errors carry the message
    pass


_initialised = False
_CONTROL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
_C_SPACE = " \t\n\v\f\r"   # C isspace(), which llama.cpp's lstrip/rstrip attributes use


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
        self.clean_spaces = self._probe_clean_spaces()
        self._specials: list[tuple[str, int, int]] | None = None

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

    def _probe_clean_spaces(self) -> bool:
        """Whether llama.cpp cleans up spaces when it detokenizes with this vocabulary (a BPE
        default; llama.cpp does not say so through its API): " ," must come back as it went in."""
        ids = self.encode("a ,", add_bos=False)
        raw = b"".join(self.piece(t) for t in ids)
        return self.detokenize_bytes(ids) not in (raw, raw[1:] if raw.startswith(b" ") else raw)

    def special_tokens(self) -> list[tuple[str, int, int]]:
        """(text, id, attr) of the tokens llama.cpp matches in text before it tokenizes the rest
        (control, unknown and user-defined ones), longest text first as llama.cpp tries them."""
        if self._specials is None:
            kinds = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN \
                | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
            found = []
            for t in range(self.n_vocab):
                attr = int(llama_cpp.llama_vocab_get_attr(self._vocab, t))
                if attr & kinds:
                    text = llama_cpp.llama_vocab_get_text(self._vocab, t)
                    if text:
                        found.append((text.decode("utf-8", errors="replace"), t, attr))
            self._specials = sorted(found, key=lambda s: (-len(s[0].encode()), s[1]))
        return self._specials

    def control_texts(self) -> list[str]:
        """Texts that become a control (or unknown) token when parsed as special: <|im_end|>, <s>..."""
        return [text for text, _, attr in self.special_tokens() if attr & _CONTROL]

    def encode_protected(self, text: str, protected: Sequence[tuple[int, int]]) -> list[int]:
        """Token ids of text with special tokens parsed, except that no control or unknown token is
        taken from inside (or across the edge of) a protected [start, end) span of characters:
        there the text is plain, as encode(..., special=False) reads it. With no spans this equals
        encode(text, add_bos=False, special=True).

        llama.cpp splits a text at its special tokens (longest first) and tokenizes each piece of
        plain text between them on its own; this does the same split, skipping the matches in
        protected spans, and hands each plain piece to llama.cpp."""
        pieces: list[tuple[int, int] | int] = [(0, len(text))]   # plain (start, end) or a token id
        for tok_text, tok, attr in self.special_tokens():
            if tok_text not in text:
                continue
            guarded = bool(attr & _CONTROL)
            out: list[tuple[int, int] | int] = []
            for piece in pieces:
                if isinstance(piece, int):
                    out.append(piece)
                    continue
                start, end = piece
                at = text.find(tok_text, start, end)
                while at >= 0:
                    stop = at + len(tok_text)
                    if guarded and any(a < stop and at < b for a, b in protected):
                        at = text.find(tok_text, at + 1, end)
                        continue
                    left = at
                    if attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP:
                        while left > start and text[left - 1] in _C_SPACE:
                            left -= 1
                    if left > start:
                        out.append((start, left))
                    out.append(tok)
                    start = stop
                    if attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP:
                        while start < end and text[start] in _C_SPACE:
                            start += 1
                    at = text.find(tok_text, start, end)
                if start < end:
                    out.append((start, end))
            pieces = out
        ids: list[int] = []
        for piece in pieces:
            if isinstance(piece, int):
                ids.append(piece)
            else:
                ids += self.encode(text[piece[0]:piece[1]], add_bos=False, special=False)
        return ids

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

    def detokenize_bytes(self, ids: Sequence[int], special: bool = False) -> bytes:
        """llama.cpp's llama_detokenize of ids (remove_special off, unparse_special = special): the
        pieces joined, the first one without the space a SentencePiece vocabulary puts in front of a
        word (add_space_prefix), and for vocabularies that clean up spaces (clean_spaces: most BPE
        ones) " ," " ." " 's" ... contracted. Bytes: a sequence may end inside a UTF-8 character."""
        ids = [int(t) for t in ids]
        for t in ids:
            if not 0 <= t < self.n_vocab:
                raise ValueError(f"token id {t} outside the vocabulary (0..{self.n_vocab - 1})")
        if not ids:
            return b""
        arr = (llama_cpp.llama_token * len(ids))(*ids)
        size = 8 * len(ids) + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self._vocab, arr, len(ids), buf, size, False, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n
        raise RuntimeError("llama_detokenize asked for a larger buffer twice")

    def decode(self, ids: Sequence[int], special: bool = False) -> str:
        """The text of ids as llama.cpp's llama_detokenize writes it (see detokenize_bytes); a
        leading BOS is skipped unless special (as llama-cpp-python's Llama.detokenize does), so that
        decode(encode(text)) == text for the texts llama.cpp round-trips. Bytes that are not valid
        UTF-8 become U+FFFD."""
        ids = list(ids)
        if not special and ids and ids[0] == self.bos_id:
            ids = ids[1:]
        return self.detokenize_bytes(ids, special).decode("utf-8", errors="replace")

    def stream(self, context: Sequence[int] = (), special: bool = False) -> "TextStream":
        """A TextStream: the text of tokens fed one at a time (see TextStream)."""
        return TextStream(self, context, special)

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))


class TextStream:
    """The text of a growing token sequence, given out as soon as it is final: feed() returns the
    new text after each token, finish() the rest. The pieces joined equal
    Tokenizer.decode(tokens) (llama.cpp's llama_detokenize), including the first token's leading
    space that a SentencePiece vocabulary drops and the spaces a clean_spaces vocabulary removes
    (" ," -> ","); a UTF-8 character split across tokens comes out whole, once.

    context: tokens before the stream (a prompt the text continues): they are detokenized with the
    stream, so its first token keeps its space, and only the new text is given out.
    Each token re-detokenizes a window of the last tokens (llama.cpp); once all text so far is out
    and final, the window restarts from its last few tokens, so the cost per token stays flat."""

    WINDOW, KEEP = 64, 8   # tokens re-detokenized at most (about); tokens kept as context

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = (), special: bool = False):
        self.tk, self.special = tokenizer, special
        context = list(context)
        if not special and context and context[0] == tokenizer.bos_id:
            context = context[1:]
        self._restart(context[-self.KEEP:])

    def _restart(self, context: list[int]) -> None:
        self.tokens = context
        # the context's text less an unfinished character at its end, which the stream completes
        self._context = self._text(final=False)[0] if context else ""
        self._start: int | None = None if context else 0
        self._sent = 0          # characters of the text after the context already given out

    def _text(self, final: bool) -> tuple[str, bool]:
        """The text of self.tokens, and whether it ends on a whole character."""
        data = self.tk.detokenize_bytes(self.tokens, self.special)
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = dec.decode(data, final=final)
        return text, dec.getstate()[0] == b""

    def _new(self, final: bool) -> tuple[str, bool]:
        """The text after the context that is final now, and whether that is all of it."""
        full, whole = self._text(final)
        if self._start is None:
            # where the continuation starts: after the context's text, less what the new text
            # cleaned away from its end (clean_spaces: a prompt "x " continued by "," reads "x,").
            # Fixed once the end of the context can no longer change.
            if not final and self.tk.clean_spaces and _settled(full) < len(self._context):
                return "", False
            self._start = len(os.path.commonprefix([full, self._context]))
        text = full[self._start:]
        if not final and self.tk.clean_spaces:
            cut = _settled(text)
            whole, text = whole and cut == len(text), text[:cut]
        return text, whole

    def feed(self, token: int) -> str:
        """The text that token completes (often "", e.g. inside a UTF-8 character)."""
        self.tokens.append(int(token))
        text, whole = self._new(final=False)
        out = self._give(text)
        if whole and len(self.tokens) >= self.WINDOW:
            self._restart(self.tokens[-self.KEEP:])   # everything is out and final
        return out

    def finish(self) -> str:
        """The text still held back (an unfinished character becomes U+FFFD)."""
        return self._give(self._new(final=True)[0])

    def _give(self, text: str) -> str:
        out = text[self._sent:]
        self._sent = max(self._sent, len(text))
        return out


def _settled(text: str) -> int:
    """How much of text a later token can no longer change under llama.cpp's clean_spaces, which
    only removes spaces: a space followed by nothing yet, a space or one of ?!.,' may still go
    (" ?" -> "?", " ' " -> "'", " 's" -> "'s"), so the text is held from the first such space among
    its last 6 characters."""
    for i in range(max(0, len(text) - 6), len(text)):
        if text[i] == " " and (i + 1 == len(text) or text[i + 1] in " ?!.,'"):
            return i
    return len(text)

"""Tiny vocabulary-only llama GGUFs for tokenizer and chat-template tests: a Llama-2 style
SentencePiece vocabulary, a Gemma style one (turn markers as control tokens, no space prefix) and a
Llama-3 style byte-level BPE one (header and end-of-turn control tokens, clean_spaces on)."""
from __future__ import annotations

from gguf import GGUFWriter, TokenType

from larosa.tools.make_synthetic import spm_vocab

WORDS = ["hello", "world", "system", "user", "assistant", "ignore", "all", "rules", "hi", "inst", "model",
         "be", "brief", "what", "is", "the", "s", "re", "ok"]


def _write(path: str, model: str, tokens: list[str], types: list[int], bos: int, eos: int, add_bos: bool,
           scores: list[float] | None = None, merges: list[str] | None = None, pre: str = "default",
           **flags: bool) -> str:
    w = GGUFWriter(path, "llama")
    for key, value in (("block_count", 1), ("context_length", 256), ("embedding_length", 64),
                       ("feed_forward_length", 128), ("attention.head_count", 4), ("attention.head_count_kv", 4)):
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None:
        w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(add_bos)
    for key, value in flags.items():
        w.add_bool(f"tokenizer.ggml.{key}", value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def llama2_spm(path: str) -> str:
    """<unk> <s> </s> (control), byte tokens, '▁'-words; [INST] is plain text as in Llama-2."""
    tokens, scores, types = spm_vocab(600)
    return _write(path, "llama", tokens, types, 1, 2, True, scores=scores)


def gemma_spm(path: str) -> str:
    """As llama2_spm plus <start_of_turn> <end_of_turn> control tokens; no space prefix (Gemma)."""
    tokens, scores, types = spm_vocab(600)
    tokens[-2:], types[-2:], scores[-2:] = ["<start_of_turn>", "<end_of_turn>"], [int(TokenType.CONTROL)] * 2, [0.0, 0.0]
    return _write(path, "llama", tokens, types, 1, 2, True, scores=scores, add_space_prefix=False)


def _byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the others for
    the code points from 256 on, in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


LLAMA3_CONTROL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def llama3_bpe(path: str) -> str:
    """Byte-level BPE (pre-tokenizer llama-bpe) with merges for WORDS with and without a leading
    space, and Llama-3's control tokens."""
    chars = _byte_chars()
    space = chars[ord(" ")]
    tokens, merges = list(chars), []
    for word in WORDS + [w.capitalize() for w in WORDS]:
        for form in (word, space + word):
            for i in range(1, len(form)):
                if form[:i + 1] not in tokens:
                    merges.append(f"{form[:i]} {form[i]}")
                    tokens.append(form[:i + 1])
    n_normal = len(tokens)
    tokens += LLAMA3_CONTROL
    types = [int(TokenType.NORMAL)] * n_normal + [int(TokenType.CONTROL)] * len(LLAMA3_CONTROL)
    return _write(path, "gpt2", tokens, types, n_normal, n_normal + 4, True, merges=merges, pre="llama-bpe")

"""Opening a model reads only what it needs (runtime/gguf_file.GGUFFile): the same values and tensors
as gguf's own reader, the tokenizer's keys copied byte for byte, no GGUFReader and no torch on the
run path, and a 262,144-token header opened in a fraction of the time GGUFReader took (11 s)."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from gguf import GGUFReader

from larosa.runtime import gguf_file as G
from larosa.runtime.errors import UnsupportedError
from larosa.runtime.loader import load
from larosa.runtime.model import Model
from larosa.runtime.tokenizer import Tokenizer


def _same_as_gguf_reader(path: str) -> int:
    f, r = G.GGUFFile(path), GGUFReader(path)
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    assert list(f.fields) == keys
    for k in keys:
        want = G.field_value(r.fields[k])
        got = f.value(k)
        assert got[1:] == want[1:], k
        if isinstance(want[0], float):
            assert got[0] == want[0] or (np.isnan(got[0]) and np.isnan(want[0])), k
        else:
            assert got[0] == want[0], k
    assert [t.name for t in f.tensors] == [t.name for t in r.tensors]
    for a, b in zip(f.tensors, r.tensors):
        assert (a.tensor_type, a.shape.tolist(), a.n_elements, a.n_bytes, a.data_offset) == \
               (b.tensor_type, b.shape.tolist(), b.n_elements, b.n_bytes, b.data_offset), a.name
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape, a.name
        assert np.array_equal(np.asarray(a.data).view(np.uint8), np.asarray(b.data).view(np.uint8)), a.name
    return len(keys)


def test_gguf_file_reads_what_gguf_reads(tiny, converted, smollm2):
    """Every key (value and types) and every tensor (type, shape, offset, bytes) of llama and LaRoSA
    files, SmolLM2's 49,152-token vocabulary and 48,900 merges included."""
    for path in [*tiny.values(), *converted.values(), smollm2]:
        assert _same_as_gguf_reader(path) > 10


def test_metadata_typed_reads(converted):
    m = G.Metadata(G.GGUFFile(converted["tied_q8"]), converted["tied_q8"])
    assert m.str("general.architecture") == "larosa"
    assert m.count("tokenizer.ggml.tokens") == 512 == len(m.strings("tokenizer.ggml.tokens"))
    assert m.types("tokenizer.ggml.scores") == [G.GGUFValueType.ARRAY, G.GGUFValueType.FLOAT32]
    assert m.array("larosa.k.attn_in", "int").shape == (3,)
    from larosa.runtime.errors import FormatError
    with pytest.raises(FormatError, match="'larosa.k.attn_in' must be an integer, not an array of 3"):
        m.int("larosa.k.attn_in")
    with pytest.raises(FormatError, match="missing metadata key 'nope'"):
        m.float("nope")


def test_vocab_file_is_a_byte_copy(converted, tmp_path):
    """write_vocab_gguf: the tokenizer.* entries are the source's bytes, and llama.cpp reads the
    same vocabulary as through gguf's writer (Tokenizer.from_metadata)."""
    path = converted["odd_f16"]
    f, lf = G.GGUFFile(path), load(path)
    keys = [k for k in f.fields if k.startswith("tokenizer.")]
    out = tmp_path / "vocab.gguf"
    G.write_vocab_gguf(f, str(out), [("llama.block_count", G.GGUFValueType.UINT32, 2)], keys)
    v = G.GGUFFile(str(out))
    assert list(v.fields) == ["general.architecture", "llama.block_count", *keys]
    for k in keys:
        assert v.bytes_at(v.fields[k].offset, v.fields[k].end) == f.bytes_at(f.fields[k].offset, f.fields[k].end)
    fast = Model(path, n_threads=1).tokenizer
    slow = Tokenizer.from_metadata(GGUFReader(path), lf.hp, path)
    text = "the quick brown fox, and 123 ünïcode"
    assert fast.n_vocab == slow.n_vocab == lf.hp.n_vocab
    assert fast.encode(text) == slow.encode(text) and len(fast.encode(text)) > 5
    assert [fast.piece(i) for i in range(fast.n_vocab)] == [slow.piece(i) for i in range(slow.n_vocab)]


def test_open_does_not_use_gguf_reader(converted, monkeypatch):
    import gguf

    def refuse(*a, **k):
        raise AssertionError("GGUFReader used on the open path")
    monkeypatch.setattr(gguf, "GGUFReader", refuse)
    monkeypatch.setattr(G, "GGUFReader", refuse)
    m = Model(converted["tied_q8"], n_threads=1)
    assert m.eval(m.tokenize("hello")).shape == (512,)


def test_run_path_imports_no_torch(converted):
    """larosa-run's path (the CLI, Model, one token) imports neither torch nor transformers."""
    code = ("import sys\nfrom larosa.runtime.cli import run_main\n"
            f"rc = run_main(['-m', {converted['tied_q8']!r}, '-p', 'hello', '-n', '1', '-t', '1'])\n"
            "print('\\nIMPORTED', sorted(m for m in ('torch', 'transformers') if m in sys.modules), rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "IMPORTED [] 0" in r.stdout, r.stdout + r.stderr


@pytest.fixture(scope="module")
def gemma3_header(tmp_path_factory) -> str:
    from larosa.tools.startup import write_gemma3_header
    return write_gemma3_header(str(tmp_path_factory.mktemp("g3") / "gemma3-270m-shaped.gguf"))


def test_big_vocabulary_header_opens_fast(gemma3_header):
    """Gemma 3 270M's header (262,144 tokens, scores, types; 236 tensors): Model(...) checks it and
    refuses the source file by name (convert it first) in well under a second (0.17 s measured on a busy 2-vCPU
    machine; gguf's GGUFReader took 11 s), and the token checks a LaRoSA file of that vocabulary
    would need stay bounded too."""
    from larosa.runtime.format import HParams
    from larosa.runtime.loader import check_tokenizer_keys
    t = time.perf_counter()
    with pytest.raises(UnsupportedError, match="a gemma3 GGUF, not a LaRoSA one: convert it first"):
        Model(gemma3_header)
    assert time.perf_counter() - t < 1.0
    f = G.GGUFFile(gemma3_header)
    m = G.Metadata(f, gemma3_header)
    assert m.count("tokenizer.ggml.tokens") == 262144 and len(f.tensors) == 236
    hp = HParams(n_vocab=262144, dim=640, n_layers=18, n_heads=4, n_kv_heads=1, head_dim=256, ffn_dim=2048,
                 norm_eps=1e-6, rope_base=1e6, n_ctx=32768, tied=True)
    t = time.perf_counter()
    check_tokenizer_keys(m, hp, gemma3_header)
    assert time.perf_counter() - t < 2.0

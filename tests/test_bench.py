"""larosa-bench and its helpers on tiny synthetic models (seconds): llama.cpp's re-quantizer, the
end-to-end benchmark with --json, and one-line errors for bad arguments."""
import json
import os

import pytest

from larosa.converter import convert as C
from larosa.tools import bench
from larosa.tools.make_synthetic import make_synthetic
from larosa.tools.requantize import RequantizeError, requantize, type_counts
from larosa.tools.requantize import main as requantize_main

from conftest import random_calibration

SHAPE = dict(dim=64, ff=128, layers=2, heads=4, kv_heads=2, vocab=320)
JSON_KEYS = {"engine", "type", "sparsity", "threads", "prompt_tps", "decode_tps", "bandwidth_gbs"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny dense Q8_0 llama GGUF and its Q8_0 LaRoSA conversion."""
    d = tmp_path_factory.mktemp("bench")
    dense = make_synthetic(str(d / "dense.q8_0.gguf"), qtype="q8_0", seed=5, **SHAPE)
    sparse = str(d / "dense.larosa-q8_0.gguf")
    C.convert(dense, sparse, random_calibration(SHAPE["vocab"]),
              C.Options(sparsity=0.4, wtype="q8_0", progress=False))
    return dense, sparse


@pytest.mark.parametrize("qtype,name", [("q8_0", "Q8_0"), ("q4_0", "Q4_0"), ("f16", "F16")])
def test_requantize_makes_the_type_llama_cpp_loads(tmp_path, qtype, name):
    from llama_cpp import Llama
    src = make_synthetic(str(tmp_path / "src.gguf"), qtype="f32", seed=1, **SHAPE)
    out = tmp_path / f"out.{qtype}.gguf"
    counts = requantize(src, out, qtype)
    assert counts == type_counts(out)
    assert counts.get(name, 0) >= 7 * SHAPE["layers"]                  # every layer matrix
    assert counts.get("F32", 0) >= 2 * SHAPE["layers"] + 1            # norms stay F32
    assert sorted(os.listdir(tmp_path)) == sorted(["src.gguf", out.name])   # no temporary left
    llm = Llama(str(out), n_ctx=32, n_threads=1, verbose=False)
    llm.eval([1, 5, 9, 300])
    assert llm.n_tokens == 4
    llm.close()


def test_requantize_refuses_to_overwrite(tmp_path, capsys):
    src = make_synthetic(str(tmp_path / "src.gguf"), qtype="f32", seed=1, **SHAPE)
    out = tmp_path / "out.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(RequantizeError, match="already exists"):
        requantize(src, out, "q8_0")
    assert out.read_bytes() == b"keep me"
    assert requantize_main([src, str(out), "--type", "q8_0"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert requantize_main([str(tmp_path / "missing.gguf"), str(tmp_path / "x.gguf"), "--type", "q4_0"]) == 1


def test_bench_end_to_end_json(pair, capsys):
    dense, sparse = pair
    rc = bench.main(["-m", dense, "-M", sparse, "--sparsity", "0,0.5", "-t", "1", "-n", "4", "-p", "8",
                     "--rounds", "1", "--bw-mib", "16", "--profile", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = json.loads(out.strip().splitlines()[-1])
    assert [(r["engine"], r["sparsity"]) for r in rows] == [("llama.cpp", 0), ("larosa", 0), ("larosa", 0.5)]
    for r in rows:
        assert JSON_KEYS <= set(r)
        assert r["type"] == "Q8_0" and r["threads"] == 1
        for k in ("prompt_tps", "decode_tps", "bandwidth_gbs"):
            assert r[k] > 0, (r["engine"], k)
    base = rows[0]
    assert "ratio" not in base and base["timing"] == "llama_perf_context"
    for r in rows[1:]:
        assert r["ratio"] == pytest.approx(r["decode_tps"] / base["decode_tps"])
    assert rows[2]["bytes_per_token"] < rows[1]["bytes_per_token"]   # sparsity reads fewer rows
    assert "decode tok/s" in out and "read bandwidth" in out
    for r in rows[1:]:                                              # --profile: ms/token by op
        assert set(r["profile_ms"]) == set(bench.PROFILE_OPS) and r["profile_ms"]["qkv"] > 0
    assert "profile_ms" not in base and "per-op decode time" in out


def test_prompt_tokens_are_deterministic(pair):
    from larosa.runtime.tokenizer import Tokenizer
    tok = Tokenizer(pair[0])
    a, src = bench.prompt_tokens(tok, 50, synthetic=True)
    assert a == bench.prompt_tokens(tok, 50, synthetic=True)[0] and src.startswith("synthetic")
    assert len(a) == 50 and a[0] == tok.bos_id and not any(tok.is_eog(t) for t in a)
    if bench.WIKI_TEST.is_file():
        b, src = bench.prompt_tokens(tok, 50, synthetic=False)
        assert len(b) == 50 and src.startswith("wiki.test.raw")


def test_dense_bytes_per_token_counts_the_tied_head(tmp_path):
    untied = bench.dense_info(make_synthetic(str(tmp_path / "u.gguf"), qtype="q8_0", **SHAPE))
    tied = bench.dense_info(make_synthetic(str(tmp_path / "t.gguf"), qtype="q8_0", tied=True, **SHAPE))
    assert untied.weight_type == tied.weight_type == "Q8_0"
    assert untied.bytes_per_token == tied.bytes_per_token    # output.weight vs embedding read as head
    assert untied.synthetic and untied.n_vocab == SHAPE["vocab"]


def _one_line_error(capsys, argv) -> str:
    try:
        rc = bench.main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.count("\n") == 1 and err.startswith("larosa-bench: error: "), err
    return err


@pytest.mark.parametrize("extra,needle", [
    (["--sparsity", "0,1.5"], "--sparsity"),
    (["--sparsity", "a,b"], "--sparsity"),
    (["-t", "0"], "-t"),
    (["-n", "0"], "-n"),
    (["--rounds", "0"], "--rounds"),
    (["--bogus"], "unrecognized"),
])
def test_bad_arguments_one_line(pair, capsys, extra, needle):
    err = _one_line_error(capsys, ["-m", pair[0], "-M", pair[1], *extra])
    assert needle in err


def test_bad_files_one_line(pair, tmp_path, capsys):
    dense, sparse = pair
    assert "required" in _one_line_error(capsys, ["-m", dense])
    assert "no such file" in _one_line_error(capsys, ["-m", dense, "-M", str(tmp_path / "nope.gguf")])
    assert "llama GGUF" in _one_line_error(capsys, ["-m", sparse, "-M", sparse])   # swapped
    assert "larosa" in _one_line_error(capsys, ["-m", dense, "-M", dense]).lower()
    f16 = make_synthetic(str(tmp_path / "f16.gguf"), qtype="f16", seed=5, **SHAPE)
    assert "unequal bits per weight" in _one_line_error(capsys, ["-m", f16, "-M", sparse, "-n", "2"])
    other = make_synthetic(str(tmp_path / "other.gguf"), qtype="q8_0", **{**SHAPE, "dim": 128})
    assert "not a conversion" in _one_line_error(capsys, ["-m", other, "-M", sparse])

"""larosa-convert as a user meets it: the help page, --dry-run, the summary, one-line errors."""
from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import convert_for_test
from gguf import GGUFWriter

from larosa.converter.cli import main as convert_main


def test_help_reads_like_a_man_page(capsys):
    with pytest.raises(SystemExit) as e:
        convert_main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    sections = ["usage:", "output:", "sparsity and types:", "calibration:", "running:", "exit status:",
                "examples:", "see also:"]
    assert all(s in text for s in sections) and text.index("usage:") < text.index("exit status:")
    for flag in ("-o", "--force", "--dry-run", "--sparsity", "--type", "--head-type", "--adapter-type",
                 "--method", "--rotation", "--score", "--coefs", "--calib", "--calib-tokens",
                 "--calib-window", "--seed", "--threads", "--quiet"):
        assert re.search(rf"^\s+(\S+( [A-Z]+)?, )?{flag}\b", text, re.M), flag


def test_dry_run_prints_the_plan_and_writes_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "plan.gguf"
    assert convert_main([tiny["tied_gqa_q8"], "-o", str(out), "--dry-run", "--type", "q4_0"]) == 0
    text = capsys.readouterr().out
    assert f"-> {out}" in text and "3 layers, d=64" in text and "block weights q4_0" in text
    assert re.search(r"memory: about [\d.]+ MiB peak", text) and "nothing written" in text
    assert list(tmp_path.iterdir()) == []


def test_summary(tiny, calib_text, tmp_path, capsys):
    out = tmp_path / "s.gguf"
    assert convert_main([tiny["tied_gqa_q8"], "-o", str(out), "--calib", calib_text, "--calib-tokens", "64",
                         "--calib-window", "32", "-q"]) == 0
    text = capsys.readouterr().out
    assert re.search(rf"wrote {out}: [\d.]+ MiB in [\d.]+ s, conversion [\d.]+ s", text)
    for block in ("attn_in", "attn_out", "mlp_in", "mlp_out"):
        assert re.search(rf"{block}\s+k =\s+\d+ of\s+\d+\s+\(\d+% skipped\)", text)
    assert re.search(r"bytes read per token: [\d.]+ MiB sparse, [\d.]+ MiB at sparsity 0", text)


def _gpt2(path) -> str:
    w = GGUFWriter(str(path), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return str(path)


def test_errors_are_one_line(tiny, tmp_path, capsys):
    (tmp_path / "text.gguf").write_text("not a model")
    converted = convert_for_test(tiny["untied_f32"], str(tmp_path / "done.gguf"), "f32")
    cases = {str(tmp_path / "missing.gguf"): "no such file",
             str(tmp_path / "text.gguf"): "not a GGUF file",
             converted: "already a LaRoSA file",
             _gpt2(tmp_path / "gpt2.gguf"): "'gpt2' is not supported"}
    for path, said in cases.items():   # (test_convert.py runs one in a subprocess: no traceback)
        assert convert_main([path, "-o", str(tmp_path / "o.gguf")]) == 1, path
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("larosa-convert: error:") and err.count("\n") == 1 and said in err
    assert not (tmp_path / "o.gguf").exists()

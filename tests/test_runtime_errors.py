"""Bad input to the runtime: a clear Python exception, never a crash."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from larosa.runtime import format as F
from larosa.runtime.errors import FormatError, UnsupportedError
from larosa.runtime.gguf_file import copy_fields, field_value
from larosa.runtime.loader import load
from larosa.runtime.model import ContextError, Model, NumericsError


def rewrite(src: str, dst: str, change_key=None, drop_tensor=None) -> str:
    """A copy of a GGUF with one metadata value replaced (key -> (value, type, subtype)) or a
    tensor left out."""
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch)
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        if change_key and k in change_key:
            w.add_key_value(k, *change_key[k])
        else:
            w.add_key_value(k, *field_value(f))
    for t in r.tensors:
        if t.name != drop_tensor:
            w.add_tensor(t.name, np.asarray(t.data), raw_shape=np.asarray(t.data).shape,
                         raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_truncated_and_garbage_files(converted, tmp_path):
    data = open(converted["tied_q8"], "rb").read()
    for cut in (3, 16, 200, len(data) // 3, len(data) - 10):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            Model(str(p))
    p = tmp_path / "zeros.gguf"
    p.write_bytes(b"GGUF" + bytes(1000))
    with pytest.raises(FormatError):
        Model(str(p))
    with pytest.raises(FormatError, match="no such file"):
        Model(str(tmp_path / "nope.gguf"))


def test_unconverted_llama_file_says_convert_first(tiny):
    with pytest.raises(UnsupportedError, match="convert it first"):
        Model(tiny["untied_f32"])


@pytest.mark.parametrize("key,value,error,match", [
    (F.K_DIM, (96, GGUFValueType.UINT32), FormatError, "shape"),
    (F.K_LAYERS, (100000, GGUFValueType.UINT32), FormatError, "out of range"),
    (F.K_KV_HEADS, (3, GGUFValueType.UINT32), FormatError, "inconsistent"),
    (F.K_VERSION, (1, GGUFValueType.UINT32), UnsupportedError, "convert the source model again"),
    (F.K_VERSION, (3, GGUFValueType.UINT32), UnsupportedError, "format version 3"),
    (F.K_METHOD, ("magic", GGUFValueType.STRING), UnsupportedError, "method"),
    (F.K_SPARSITY, (1.5, GGUFValueType.FLOAT32), FormatError, "outside"),
    (F.K_EPS, (float("nan"), GGUFValueType.FLOAT32), FormatError, "epsilon"),
    (F.K_COEF("attn_in"), ([0.8], GGUFValueType.ARRAY, GGUFValueType.FLOAT32), FormatError, "one per layer"),
    (F.K_K("mlp_out"), ([0, 0, 0], GGUFValueType.ARRAY, GGUFValueType.UINT32), FormatError, "must be in"),
    (F.K_DIM, ("sixty-four", GGUFValueType.STRING), FormatError, "integer"),
])
def test_hostile_metadata(converted, tmp_path, key, value, error, match):
    p = rewrite(converted["tied_q8"], str(tmp_path / "bad.gguf"), change_key={key: value})
    with pytest.raises(error, match=match):
        load(p)


def test_missing_tensor(converted, tmp_path):
    p = rewrite(converted["tied_q8"], str(tmp_path / "m.gguf"), drop_tensor=F.T_DOWN(1))
    with pytest.raises(FormatError, match="missing tensor"):
        load(p)


def test_nan_weights_are_reported(converted, tmp_path):
    p = tmp_path / "nan.gguf"
    shutil.copy(converted["untied_f32"], p)
    t = {t.name: t for t in GGUFReader(str(p)).tensors}[F.T_GATE_UP(0)]
    with open(p, "r+b") as f:                    # poison the whole tensor
        f.seek(t.data_offset)
        f.write(np.full(t.n_elements, np.nan, np.float32).tobytes())
    m = Model(str(p), sparsity=0.0, n_threads=1)
    with pytest.raises(NumericsError):
        m.eval([1, 2, 3])


def test_bad_arguments(converted):
    m = Model(converted["tied_q4"], n_threads=1, n_ctx=16)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.eval([1, m.hp.n_vocab])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.eval([-1])
    assert m.tokens == []                       # nothing was evaluated
    for s in (1.0, -0.01, float("nan"), 7):
        with pytest.raises(ValueError, match="sparsity"):
            m.set_sparsity(s)
    with pytest.raises(ContextError):
        m.eval(list(range(17)))
    m.eval(list(range(10)))
    with pytest.raises(ContextError):
        m.eval(list(range(7)))
    m.eval(list(range(6)))                      # exactly full
    assert len(m.tokens) == 16
    with pytest.raises(ContextError):
        list(m.generate_tokens(list(range(20)), 4))
    with pytest.raises(ValueError):
        Model(converted["tied_q4"], n_ctx=10 ** 9)
    with pytest.raises(ValueError):
        Model(converted["tied_q4"], n_threads=0)
    with pytest.raises(ValueError):
        m.rewind(99)


def test_generation_stops_at_full_context(converted):
    m = Model(converted["tied_q8"], n_threads=1, n_ctx=12)
    out = list(m.generate_tokens(list(range(3, 10)), max_tokens=50))
    assert len(m.tokens) == 12 and len(out) == 12 - 7 + 1


def test_cli_bad_input_is_one_line(tmp_path, tiny):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    for args in (["-m", str(bad), "-p", "hi"], ["-m", tiny["untied_f32"], "-p", "hi"]):
        r = subprocess.run([sys.executable, "-c", "import sys; from larosa.runtime.cli import run_main; "
                            "sys.exit(run_main())", *args], capture_output=True, text=True)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1

"""Re-quantizes a llama GGUF with llama.cpp's own quantizer (llama-cpp-python's low-level API), so
that the dense baseline of a benchmark runs at the same bits per weight as the LaRoSA file.

    python -m larosa.tools.requantize SmolLM2-135M-Instruct.Q4_1.gguf smollm2.q8_0.gguf --type q8_0

llama.cpp keeps some tensors at other types (1-D norms stay F32; the output head or a tied
embedding may get a wider type, rows whose length does not fit a block fall back): the per-type
tensor counts of the result are printed. The output appears only when complete (temporary file in
the same folder, then a link that never replaces an existing file).
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import os
import sys
import tempfile

import llama_cpp
from gguf import GGUFReader

FTYPES = {"f32": llama_cpp.LLAMA_FTYPE_ALL_F32, "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
          "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}

_log_lines: list[str] = []


@llama_cpp.llama_log_callback
def _collect_log(level, text, user_data):  # the quantizer's per-tensor chatter: kept for errors only
    if level in (3, 4):   # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR (ggml's current numbering)
        _log_lines.append(text.decode("utf-8", errors="replace").rstrip())


class RequantizeError(Exception):
    """The quantizer failed or the arguments are unusable."""


def type_counts(path: str | os.PathLike) -> dict[str, int]:
    """Tensor count per GGML type name in a GGUF, most frequent first."""
    c = collections.Counter(t.tensor_type.name for t in GGUFReader(os.fspath(path)).tensors)
    return dict(c.most_common())


def _publish(tmp: str, out: str) -> None:
    """Moves tmp to out unless out exists, without a window in which out could be clobbered."""
    try:
        os.link(tmp, out)          # fails with FileExistsError if out appeared meanwhile
        os.unlink(tmp)
    except FileExistsError:
        raise RequantizeError(f"{out}: already exists")
    except OSError:                # file systems without hard links
        if os.path.exists(out):
            raise RequantizeError(f"{out}: already exists")
        os.replace(tmp, out)


def requantize(inp: str | os.PathLike, out: str | os.PathLike, qtype: str,
               n_threads: int = 0, pure: bool = False) -> dict[str, int]:
    """Writes `inp` re-quantized to `qtype` (q8_0, q4_0, f16, f32) into `out` with llama.cpp's
    quantizer and default parameters (allow_requantize on; `pure` forces every 2-D tensor to the
    type). Refuses to overwrite `out`. Returns the per-type tensor counts of the result."""
    inp, out = os.fspath(inp), os.fspath(out)
    if qtype not in FTYPES:
        raise RequantizeError(f"unknown type {qtype!r} (choose from {', '.join(FTYPES)})")
    if not os.path.isfile(inp):
        raise RequantizeError(f"{inp}: no such file")
    if os.path.exists(out):
        raise RequantizeError(f"{out}: already exists")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise RequantizeError(f"{folder}: no such folder")
    llama_cpp.llama_backend_init()
    llama_cpp.llama_log_set(_collect_log, ctypes.c_void_p())
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[qtype]
    params.allow_requantize = True
    params.nthread = n_threads
    params.pure = pure
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(out) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(tmp)   # a unique free name: llama.cpp creates the file with the usual permissions
    try:
        _log_lines.clear()
        rc = llama_cpp.llama_model_quantize(os.fsencode(inp), os.fsencode(tmp), ctypes.byref(params))
        if rc != 0:
            detail = _log_lines[-1] if _log_lines else "no message"
            raise RequantizeError(f"llama.cpp's quantizer failed on {inp} (code {rc}): {detail}")
        counts = type_counts(tmp)
        _publish(tmp, out)
        return counts
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} x {t}" for t, n in counts.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="larosa-requantize",
                                description="Re-quantize a llama GGUF with llama.cpp's own quantizer.")
    p.add_argument("input", help="llama GGUF")
    p.add_argument("output", help="new GGUF (must not exist)")
    p.add_argument("--type", dest="qtype", required=True, choices=list(FTYPES), help="target type")
    p.add_argument("--pure", action="store_true",
                   help="every 2-D tensor at --type (llama.cpp's default keeps some wider)")
    p.add_argument("-t", "--threads", type=int, default=0, help="quantizer threads (default: all)")
    a = p.parse_args(argv)
    try:
        counts = requantize(a.input, a.output, a.qtype, a.threads, a.pure)
    except (RequantizeError, OSError) as e:
        print(f"larosa-requantize: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.output}: tensors {format_counts(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

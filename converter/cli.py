"""larosa-convert: the command line of the converter."""
from __future__ import annotations

import argparse
import os
import sys

from larosa.runtime import format as F
from larosa.runtime.errors import LarosaError

DESCRIPTION = """\
Convert a llama.cpp GGUF (architecture llama) into a LaRoSA GGUF: per layer, a rotation Q_l
(PCA of the calibration activations) is fused into the weights, which are stored input-major so
that decoding with Top-K activation sparsity reads only the selected rows. The input is never
modified; the output appears only when complete."""

EPILOG = """\
calibration:
  With --calib FILE the first --calib-tokens tokens of that UTF-8 text are used (default 8192).
  Without it, the converter samples calibration text from the model itself with llama.cpp
  (default 2048 tokens): nothing is downloaded, at some cost in quality (see README).

examples:
  larosa-convert model.gguf
  larosa-convert model.gguf -o model.larosa.gguf --sparsity 0.5 --type q4_0 --calib wiki.txt
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="larosa-convert", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="llama GGUF to convert (any type gguf can dequantize)")
    p.add_argument("-o", "--output", help="output path (default: INPUT stem + .larosa-TYPE.gguf)")
    p.add_argument("--sparsity", type=float, default=0.4,
                   help="default model sparsity s in [0, 1); block inputs use 0.8 s (q/k/v, gate/up) "
                        "and 1.2 s (o, down). The runtime can override it. (default 0.4)")
    p.add_argument("--type", dest="wtype", default="q8_0", choices=list(F.WEIGHT_TYPES),
                   help="type of the block weights (default q8_0)")
    p.add_argument("--head-type", default="auto", choices=["auto", *F.WEIGHT_TYPES],
                   help="type of the embedding/head (auto: a tied embedding keeps its type when the "
                        "runtime reads it, else q8_0 for quantized --type)")
    p.add_argument("--adapter-type", default="auto", choices=["auto", *F.WEIGHT_TYPES],
                   help="type of the d x d residual adapters (auto: f16, f32 with --type f32). "
                        "Their error compounds over layers: q8_0 costs ~5%% perplexity on SmolLM2")
    p.add_argument("--calib", metavar="FILE", help="calibration text (UTF-8)")
    p.add_argument("--calib-tokens", type=int, metavar="N",
                   help="calibration tokens (default 8192 from a file, 2048 self-generated)")
    p.add_argument("--calib-window", type=int, default=2048, metavar="T",
                   help="tokens per calibration sequence (default 2048, at most the model's context)")
    p.add_argument("--seed", type=int, default=0, help="seed of the self-generated calibration text")
    p.add_argument("-t", "--threads", type=int, help="CPU threads (default: all)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite the output if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def default_output(inp: str, wtype: str) -> str:
    stem = inp[:-5] if inp.endswith(".gguf") else inp
    return f"{stem}.larosa-{wtype}.gguf"


def print_summary(s, src_hp) -> None:
    mib = 1024 * 1024
    print(f"wrote {s.out_path}: {s.out_bytes / mib:.1f} MiB in {s.seconds:.1f} s "
          f"(calibration: {s.calib_tokens} tokens)")
    print("Top-K per block input (k of n, layers' range):")
    for b in F.BLOCK_INPUTS:
        n = src_hp.block_input_width(b)
        lo, hi = min(s.ks[b]), max(s.ks[b])
        rng = f"{lo}" if lo == hi else f"{lo}..{hi}"
        print(f"  {b:9s} k = {rng:>9s} of {n:5d}  ({1 - lo / n:.0%} skipped)")
    print(f"weight bytes read per token: {s.bytes_per_token / mib:.1f} MiB sparse, "
          f"{s.dense_bytes_per_token / mib:.1f} MiB at sparsity 0 "
          f"({s.bytes_per_token / s.dense_bytes_per_token:.2f}x); "
          f"source file dense: {s.source_bytes_per_token / mib:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        import torch

        from . import calibrate
        from .convert import Options, check_options, convert
        from .source import SourceModel

        opts = Options(sparsity=a.sparsity, wtype=a.wtype, head_type=a.head_type,
                       adapter_type=a.adapter_type, force=a.force, progress=not a.quiet)
        check_options(opts)
        if a.threads is not None:
            if a.threads < 1:
                raise LarosaError("--threads must be at least 1")
            torch.set_num_threads(a.threads)
        out = a.output or default_output(a.input, a.wtype)
        if os.path.exists(out) and not a.force:
            raise LarosaError(f"{out}: already exists (use --force to overwrite)")
        hp = SourceModel(a.input).hp   # validates the input before any slow step
        window = min(a.calib_window, hp.n_ctx)
        if a.calib_tokens is not None and a.calib_tokens < calibrate.MIN_TOKENS:
            raise LarosaError(f"--calib-tokens must be at least {calibrate.MIN_TOKENS}")
        if window < 2:
            raise LarosaError("--calib-window must be at least 2")
        if a.calib:
            calib = calibrate.from_file(a.input, a.calib, a.calib_tokens or 8192, window)
        else:
            calib = calibrate.self_generated(a.input, a.calib_tokens or 2048, window, a.seed,
                                             a.threads, progress=not a.quiet)
        summary = convert(a.input, out, calib, opts)
        print_summary(summary, hp)
        return 0
    except LarosaError as e:
        print(f"larosa-convert: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("larosa-convert: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

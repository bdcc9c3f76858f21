"""larosa-convert: the command line of the converter."""
from __future__ import annotations

import argparse
import os
import sys
import time

from larosa.runtime import format as F
from larosa.runtime.errors import LarosaError

DESCRIPTION = """\
Convert a llama.cpp GGUF (architecture llama, qwen2, qwen3, gemma2, gemma3, granite or smollm3) into
a LaRoSA GGUF that larosa-run, larosa-chat and the larosa.runtime Python API read. Per layer, a
rotation Q_l (PCA of the calibration activations) is fused into the weights, which are stored
input-major so that decoding with Top-K activation sparsity reads only the selected rows. The input
is never modified; the output appears only when complete (a temporary file is renamed), and an
existing output is kept unless --force."""

EPILOG = """\
calibration:
  With --calib FILE the first --calib-tokens tokens of that UTF-8 text are used (default 8192).
  Without it, the converter samples calibration text from the model itself with llama.cpp
  (default 2048 tokens): nothing is downloaded, at some cost in quality (see README).

output:
  Progress bars on stderr (-q hides them): the sampled calibration text, then per layer
  "calibrate" (dequantize, activations, eigendecomposition) and "fuse+write". Then a summary on
  stdout: output size and total time, Top-K per block input (k of n, share skipped), and the
  weight bytes read per token, sparse against dense. --dry-run prints the plan and a memory
  estimate instead and writes nothing.

exit status:
  0 done, 1 an error (one line on stderr: a missing or non-GGUF input, an already converted
  file, an unsupported architecture or tensor type, an existing output...), 130 interrupted (no
  output is left behind).

examples:
  larosa-convert model.gguf                             # -> model.larosa-q8_0.gguf
  larosa-convert model.gguf --dry-run                   # the plan and its memory, nothing written
  larosa-convert model.gguf -o model.larosa.gguf --sparsity 0.5 --type q4_0 --calib wiki.txt

see also: larosa-run, larosa-chat, larosa-perplexity; FORMAT.md describes the output file.
"""


DEFAULT_METHOD = "auto"   # --method (tools/demo.py re-converts a cached file made with another)

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="larosa-convert", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="llama.cpp GGUF to convert (any type gguf can dequantize)")
    p = parser.add_argument_group("output")
    p.add_argument("-o", "--output", help="output path (default: INPUT stem + .larosa-TYPE.gguf)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite the output if it exists")
    p.add_argument("--dry-run", action="store_true", help="print the plan and a memory estimate, write nothing")
    p = parser.add_argument_group("sparsity and types")
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
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(F.METHODS),
                   help="sparsity method. auto (default): budget's keys, then one of three selections "
                        "of them: budget, Top-K of the same keys (topk) or Top-K of |x| alone (topk_abs); "
                        "another than budget only when its per-token advantage on held-out calibration text "
                        "exceeds two standard errors (the file records the three perplexities; "
                        "budget on SmolLM2, topk_abs on Gemma 3, RESULTS.md); budget: thresholds on "
                        "|x| * weight row norm, no rotation, "
                        "0.8/1.2 coefficients, each token held to the planned bytes (fixed work per token); wina: "
                        "Top-K of the same keys; larosa: the "
                        "paper's recipe (PCA rotation per layer, residual adapters); topk = plain Top-K "
                        "without rotation, teal = static thresholds (TEAL), cats = MLP-only gate thresholds (CATS)")
    p.add_argument("--rotation", choices=["pca", "identity", "auto"],
                   help="basis of each layer (default: the method's): auto keeps PCA only in the layers "
                        "where it loses less than no rotation on the calibration data")
    p.add_argument("--score", choices=["none", "norm", "wina"],
                   help="rank inputs by |x| (none), |x| * RMSNorm scale (norm, identity basis only) or "
                        "|x| * weight row norm (wina) (default: the method's)")
    p.add_argument("--coefs", metavar="A,B,C,D",
                   help="sparsity coefficients of attn_in, attn_out, mlp_in, mlp_out (wina, larosa: 0.8,1.2,0.8,1.2)")
    p = parser.add_argument_group("calibration")
    p.add_argument("--calib", metavar="FILE", help="calibration text (UTF-8)")
    p.add_argument("--calib-tokens", type=int, metavar="N",
                   help="calibration tokens (default 8192 from a file, 2048 self-generated)")
    p.add_argument("--calib-window", type=int, default=2048, metavar="T",
                   help="tokens per calibration sequence (default 2048, at most the model's context)")
    p.add_argument("--seed", type=int, default=0, help="seed of the self-generated calibration text")
    p = parser.add_argument_group("running")
    p.add_argument("-t", "--threads", type=int, help="CPU threads (default: all)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def default_output(inp: str, wtype: str) -> str:
    stem = inp[:-5] if inp.endswith(".gguf") else inp
    return f"{stem}.larosa-{wtype}.gguf"


def print_summary(s, src_hp, total_seconds: float) -> None:
    mib = 1024 * 1024
    print(f"wrote {s.out_path}: {s.out_bytes / mib:.1f} MiB in {total_seconds:.1f} s, conversion {s.seconds:.1f} s "
          f"(calibration: {s.calib_tokens} tokens; {sum(s.rotated)} of {len(s.rotated)} layers rotated)")
    print("inputs read per block input (k of n, layers' range; thresholds: the planned average):")
    for b in F.BLOCK_INPUTS:
        n = src_hp.block_input_width(b)
        lo, hi = min(s.ks[b]), max(s.ks[b])
        rng = f"{lo}" if lo == hi else f"{lo}..{hi}"
        print(f"  {b:9s} k = {rng:>9s} of {n:5d}  ({1 - lo / n:.0%} skipped)")
    if s.auto:
        choice, ppl = s.auto
        print(f"selection (--method auto): {choice}; held-out perplexity "
              + ", ".join(f"{n} {v:.3f}" for n, v in zip(F.AUTO_SELECTIONS, ppl))
              + " (topk: Top-K of budget's keys; topk_abs: Top-K of |x|, the scores unused)")
    print(f"weight bytes read per token: {s.bytes_per_token / mib:.1f} MiB sparse, "
          f"{s.dense_bytes_per_token / mib:.1f} MiB at sparsity 0 "
          f"({s.bytes_per_token / s.dense_bytes_per_token:.2f}x); "
          f"source file dense: {s.source_bytes_per_token / mib:.1f} MiB")


def print_plan(src, opts, out: str, calib_tokens: int, window: int) -> None:
    """--dry-run: what would be written, and the memory it takes."""
    from . import selection as S
    from .convert import output_shapes, tensor_types
    hp, mib = src.hp, 1024 * 1024
    m = S.method(opts.method, opts.rotation, opts.score, opts.coefs)
    shapes = output_shapes(src, m, [m.rotation != "identity"] * hp.n_layers)
    types = tensor_types(src, opts, shapes)
    size = sum(F.row_bytes(types[n], s[-1]) * (s[0] if len(s) == 2 else 1) for n, s in shapes.items())
    layer_f32 = 4 * (hp.dim * (hp.qkv_dim + 2 * hp.ffn_dim) + hp.n_heads * hp.head_dim * hp.dim
                     + hp.ffn_dim * hp.dim)
    residuals = 4 * calib_tokens * hp.dim
    rotations = 8 * hp.dim * hp.dim * hp.n_layers if m.rotation != "identity" else 0
    print(f"{src.path} -> {out}")
    print(f"  model: {hp.n_layers} layers, d={hp.dim}, ff={hp.ffn_dim}, heads {hp.n_heads}/{hp.n_kv_heads}, "
          f"vocab {hp.n_vocab}, {'tied' if hp.tied else 'untied'} embeddings")
    print(f"  method {opts.method}: rotation {m.rotation}, score {m.score}, coefficients "
          + ", ".join(f"{b} {m.coefs[b]:g}" for b in F.BLOCK_INPUTS)
          + (f"; thresholds on {', '.join(m.thresholds)}" if m.thresholds else ""))
    print(f"  sparsity {opts.sparsity:g}; block weights {opts.wtype}; {len(shapes)} tensors, about "
          f"{size / mib:.1f} MiB (adapters as planned; 'auto' may drop some)")
    print(f"  calibration: {calib_tokens} tokens in windows of {window}")
    print(f"  memory: about {(3 * layer_f32 + 4 * residuals + rotations) / mib:.1f} MiB peak "
          f"(one layer in float32 x3, residuals and activations x4, rotations in float64)")
    print("dry run: nothing written")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t0 = time.perf_counter()
    try:
        import torch

        from . import calibrate
        from .convert import Options, check_options, convert
        from .source import SourceModel

        coefs = None
        if a.coefs:
            try:
                coefs = dict(zip(F.BLOCK_INPUTS, (float(v) for v in a.coefs.split(",")), strict=True))
            except ValueError:
                raise LarosaError("--coefs takes four numbers: A,B,C,D") from None
        opts = Options(sparsity=a.sparsity, wtype=a.wtype, head_type=a.head_type,
                       adapter_type=a.adapter_type, method=a.method, rotation=a.rotation, score=a.score,
                       coefs=coefs, force=a.force, progress=not a.quiet, threads=a.threads)
        check_options(opts)
        if a.threads is not None:
            if a.threads < 1:
                raise LarosaError("--threads must be at least 1")
            torch.set_num_threads(a.threads)
        out = a.output or default_output(a.input, a.wtype)
        if os.path.exists(out) and not a.force:
            raise LarosaError(f"{out}: already exists (use --force to overwrite)")
        src = SourceModel(a.input)     # validates the input before any slow step
        hp = src.hp
        window = min(a.calib_window, hp.n_ctx)
        if a.dry_run:
            print_plan(src, opts, out, a.calib_tokens or (8192 if a.calib else 2048), window)
            return 0
        if a.calib_tokens is not None and a.calib_tokens < calibrate.MIN_TOKENS:
            raise LarosaError(f"--calib-tokens must be at least {calibrate.MIN_TOKENS}")
        if window < 2:
            raise LarosaError("--calib-window must be at least 2")
        held = calibrate.HELDOUT_TOKENS if a.method == "auto" else 0
        if a.calib:
            calib = calibrate.from_file(a.input, a.calib, a.calib_tokens or 8192, window, held)
        else:
            calib = calibrate.self_generated(a.input, a.calib_tokens or 2048, window, a.seed,
                                             a.threads, progress=not a.quiet, heldout=held)
        summary = convert(a.input, out, calib, opts)
        print_summary(summary, hp, time.perf_counter() - t0)
        return 0
    except LarosaError as e:
        print(f"larosa-convert: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("larosa-convert: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""larosa-run and larosa-perplexity: the command lines of the runtime."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import LarosaError


KV_TYPE_CHOICES = ["f32", "f16", "q8_0"]   # model.KV_TYPES


def add_kv_args(p: argparse.ArgumentParser) -> None:
    """llama.cpp's KV cache options: -ctk / --cache-type-k, -ctv / --cache-type-v (default f16)."""
    p.add_argument("-ctk", "--cache-type-k", choices=KV_TYPE_CHOICES, default="f16",
                   help="KV cache type for K (default f16; q8_0 needs a head size that is a multiple of 32)")
    p.add_argument("-ctv", "--cache-type-v", choices=KV_TYPE_CHOICES, default="f16",
                   help="KV cache type for V (default f16)")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """--device cpu|gpu|auto (Model's device)."""
    p.add_argument("--device", choices=["cpu", "gpu", "auto"], default="cpu",
                   help="where to run: cpu (default), gpu (WebGPU: Metal, Vulkan, DX12; pip install "
                        "\"larosa[gpu]\"), auto (the GPU when one opens)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, help="LaRoSA GGUF (from larosa-convert)")
    p.add_argument("--sparsity", type=float, help="model sparsity in [0, 1) (default: the file's)")
    p.add_argument("-t", "--threads", type=int, default=min(os.cpu_count() or 1, 8), help="CPU threads")
    p.add_argument("--budget", action=argparse.BooleanOptionalAction,
                   help="hold each token to the planned bytes (threshold files; default: as the file says)")
    add_device_arg(p)
    add_kv_args(p)


def _fail(prog: str, e: BaseException) -> int:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 1


def run_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="larosa-run", description="Generate text with a LaRoSA model.")
    _common(p)
    p.add_argument("-p", "--prompt", required=True, help="prompt text")
    p.add_argument("-n", "--n-predict", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("-c", "--ctx-size", type=int, help="context size (default: min(model, 4096))")
    p.add_argument("--temp", type=float, default=0.8, help="temperature; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, help="sampling seed (default: random)")
    a = p.parse_args(argv)
    try:
        from .model import Model
        if a.n_predict < 0:
            raise LarosaError("-n must be >= 0")
        m = Model(a.model, sparsity=a.sparsity, n_threads=a.threads, n_ctx=a.ctx_size, budget=a.budget,
                  type_k=a.cache_type_k, type_v=a.cache_type_v, device=a.device)
        stream = m.generate(a.prompt, max_tokens=a.n_predict, temperature=a.temp, top_k=a.top_k,
                            top_p=a.top_p, min_p=a.min_p, repeat_penalty=a.repeat_penalty, seed=a.seed)
        sys.stdout.write(a.prompt)
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        t = m.timings
        sys.stdout.write("\n")
        print(f"prompt: {t.prompt_tokens} tokens, {t.prompt_tps:.1f} tok/s | "
              f"decode: {t.decode_tokens} tokens, {t.decode_tps:.1f} tok/s | "
              f"sparsity {m.sparsity:g}, {m.n_threads} threads, "
              f"{m.bytes_per_token() / 2**20:.1f} MiB weights/token", file=sys.stderr)
        return 0
    except (LarosaError, ValueError) as e:
        return _fail("larosa-run", e)
    except KeyboardInterrupt:
        print("\nlarosa-run: interrupted", file=sys.stderr)
        return 130


def perplexity_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="larosa-perplexity",
        description="Perplexity of a text on non-overlapping windows (every token after the first of "
                    "each window is scored), through the C runtime, or through llama.cpp for a dense "
                    "baseline on the same windows (--engine llama.cpp with the original GGUF).")
    _common(p)
    p.add_argument("-f", "--file", required=True, help="text file (UTF-8)")
    p.add_argument("-c", "--ctx-size", type=int, default=512, help="window length in tokens (default 512)")
    p.add_argument("--chunks", type=int, help="score only the first N windows")
    p.add_argument("--engine", choices=["larosa", "llama.cpp"], default="larosa")
    p.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    try:
        from . import perplexity as P
        from .tokenizer import Tokenizer
        if a.chunks is not None and a.chunks < 1:
            raise LarosaError("--chunks must be >= 1")
        if not os.path.isfile(a.file):
            raise LarosaError(f"{a.file}: no such file")
        with open(a.file, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if a.engine == "larosa":
            from .model import Model
            m = Model(a.model, sparsity=a.sparsity, n_threads=a.threads, n_ctx=a.ctx_size, budget=a.budget,
                      type_k=a.cache_type_k, type_v=a.cache_type_v, device=a.device)
            tok, fn, sparsity = m.tokenizer, P.larosa_logits(m), round(m.sparsity, 6)
            bytes_per_token = m.bytes_per_token()
        else:
            if a.sparsity not in (None, 0) or a.budget is not None:
                raise LarosaError("--engine llama.cpp is dense: --sparsity and --budget do not apply")
            tok = Tokenizer(a.model)
            fn = P.llama_cpp_logits(a.model, a.ctx_size, a.threads, a.cache_type_k, a.cache_type_v)
            sparsity, bytes_per_token = 0.0, None
        ids = tok.encode(text)
        windows = P.make_windows(ids, a.ctx_size, a.chunks, tok.bos_id if tok.add_bos else None)
        r = P.score(windows, fn, progress=not a.quiet, desc=f"{a.engine} s={sparsity:g}")
        skipped = m.skipped_fraction(reset=True) if a.engine == "larosa" else 0.0
        print(f"{a.engine}: {os.path.basename(a.model)} sparsity {sparsity:g}: ppl = {r.ppl:.4f} over "
              f"{r.tokens} tokens ({r.windows} windows of {a.ctx_size}), {r.tokens / r.seconds:.1f} tok/s, "
              f"{skipped:.1%} of block weight bytes skipped")
        if a.json:
            print(json.dumps({"engine": a.engine, "model": a.model, "ppl": r.ppl, "nll": r.nll,
                              "tokens": r.tokens, "windows": r.windows, "ctx": a.ctx_size,
                              "sparsity": sparsity, "budget": m.budget if a.engine == "larosa" else None,
                              "type_k": a.cache_type_k, "type_v": a.cache_type_v,
                              "skipped_fraction": skipped,
                              "bytes_per_token": bytes_per_token, "seconds": r.seconds}))
        return 0
    except (LarosaError, ValueError) as e:
        return _fail("larosa-perplexity", e)
    except KeyboardInterrupt:
        print("\nlarosa-perplexity: interrupted", file=sys.stderr)
        return 130

"""larosa-bench: decode speed of LaRoSA (sparse) against llama.cpp (dense) on the same machine,
threads, prompt, generated-token count and bits per weight.

    larosa-bench -m smollm2.q8_0.gguf -M smollm2.larosa-q8_0.gguf --sparsity 0,0.4 -t 1,2

Protocol, per thread count t: both engines are loaded once (llama.cpp: llama-cpp-python's Llama,
n_threads = n_threads_batch = t; larosa: runtime.model.Model) and warmed up; then for R rounds
llama.cpp runs, then larosa at each sparsity (A B A B ...). A run evaluates the same prompt of -p
tokens in one batch, then -n greedy tokens one at a time (no stop at end-of-text), so both engines
evaluate exactly the same number of tokens. Figures are medians over the rounds.

What is timed:
  llama.cpp  prompt and decode from llama.cpp's own counters (llama_perf_context: t_p_eval_ms over
             n_p_eval, t_eval_ms over n_eval), reset before each run. The logits are fetched after
             every decode call, which synchronizes, so each single-token eval is counted as decode.
  larosa     perf_counter around Model.eval (the C call plus its thin Python wrapper) for the prompt
             and for each generated token.
  Sampling (the arg-max) is outside the timed sections for both. `decode_tps_wall` (JSON) is the
  perf_counter figure around each engine's Python eval call, for both engines, as a cross-check.
Weight bandwidth = weight bytes read per generated token * decode tok/s; larosa's bytes are measured
over the decode tokens of each run (Model.bytes_read_per_token: the selected rows of each block
weight, the whole scale table of every group of 32 inputs they touch, adapters and head in full;
median over the rounds), llama.cpp's from
the dense file (every tensor but the embedding, one embedding row, and the whole embedding again
when it is also the head). The machine's read bandwidth (lr_read_bandwidth, best of 5 passes over a
1 GiB buffer by t threads) is measured once per thread count.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from larosa.runtime.cli import add_kv_args
from larosa.runtime.errors import LarosaError

if TYPE_CHECKING:
    from larosa.runtime.tokenizer import Tokenizer

WIKI_TEST = Path(os.environ.get("LAROSA_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "wikitext-2-raw" / "wiki.test.raw"
BW_REPS = 5


class BenchError(LarosaError):
    """Unusable arguments or files: reported as one line on stderr."""


# -- files ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenseInfo:
    """What the benchmark needs from the llama.cpp GGUF."""
    path: str
    weight_type: str          # type holding most bytes of the blk.* matrices
    bytes_per_token: int      # weight bytes one dense decode step reads
    n_vocab: int
    shape: tuple[int, int, int]   # dim, layers, ff
    synthetic: bool           # written by tools/make_synthetic (random weights, generated vocab)


def weight_type(tensors) -> str:
    """The GGML type holding most bytes among the 2-D blk.* tensors: (name, shape, type, bytes)."""
    by_type: dict[str, int] = {}
    for name, shape, qtype, nbytes in tensors:
        if name.startswith("blk.") and len(shape) == 2:
            by_type[qtype.name] = by_type.get(qtype.name, 0) + nbytes
    if not by_type:
        raise BenchError("no blk.* weight matrices in the file")
    return max(by_type, key=by_type.get)


def dense_info(path: str) -> DenseInfo:
    from larosa.runtime.gguf_file import Metadata, open_gguf
    reader = open_gguf(path)
    m = Metadata(reader, path)
    arch = m.str("general.architecture")
    from larosa.runtime.format import SOURCE_ARCHS
    if arch not in SOURCE_ARCHS:
        raise BenchError(f"{path}: -m needs a llama GGUF for llama.cpp (general.architecture "
                         f"{' / '.join(SOURCE_ARCHS)}), this one is {arch!r}")
    tensors = {t.name: t for t in reader.tensors}
    embd = tensors.get("token_embd.weight")
    if embd is None:
        raise BenchError(f"{path}: no token_embd.weight")
    # every tensor is read once per token except the embedding, of which one row is looked up
    total = sum(int(t.n_bytes) for n, t in tensors.items() if n != "token_embd.weight")
    total += int(embd.n_bytes) // int(embd.shape[1])
    if "output.weight" not in tensors:   # tied: the embedding is the head too
        total += int(embd.n_bytes)
    shape = (m.int(f"{arch}.embedding_length"), m.int(f"{arch}.block_count"), m.int(f"{arch}.feed_forward_length"))
    blk = [(t.name, t.shape, t.tensor_type, int(t.n_bytes)) for t in reader.tensors]
    return DenseInfo(path=path, weight_type=weight_type(blk), bytes_per_token=total,
                     n_vocab=int(embd.shape[1]), shape=shape,
                     synthetic=m.str("general.name", "").startswith("synthetic-"))


def prompt_tokens(tokenizer, n: int, synthetic: bool) -> tuple[list[int], str]:
    """n prompt tokens and where they come from: the start of WikiText-2 test tokenized by the
    model's tokenizer, or (synthetic model, or no data) a fixed pseudo-random sequence."""
    bos = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id >= 0 else []
    if not synthetic and WIKI_TEST.is_file():
        text = WIKI_TEST.read_text(encoding="utf-8", errors="replace")
        chars = 16 * n
        while True:
            ids = tokenizer.encode(text[:chars])
            if len(ids) >= n or chars >= len(text):
                break
            chars *= 2
        if len(ids) >= n:
            return ids[:n], f"{WIKI_TEST.name} (first {n} tokens)"
    rng = np.random.default_rng(0)
    ids = bos[:n]
    while len(ids) < n:
        t = int(rng.integers(0, tokenizer.n_vocab))
        if not tokenizer.is_eog(t) and t != tokenizer.bos_id:
            ids.append(t)
    return ids, f"synthetic (seed 0, {n} tokens)"


# -- engines ----------------------------------------------------------------------------------
@dataclass
class RunTimes:
    prompt_tps: float
    decode_tps: float
    decode_tps_wall: float
    timing: str               # where prompt_tps/decode_tps come from
    bytes_read: float | None = None   # larosa: weight bytes a decode token read (measured)
    reads: tuple | None = None        # larosa: (rows, groups) per block input and token (Model._reads)


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python, dense, greedy."""
    name = "llama.cpp"

    def __init__(self, path: str, n_threads: int, n_ctx: int, type_k: str = "f16", type_v: str = "f16",
                 gpu: bool = False):
        import llama_cpp
        from llama_cpp import Llama
        from larosa.runtime.model import KV_TYPES
        # --device gpu: every layer offloaded, where this llama-cpp-python has a GPU backend
        self.gpu = gpu and bool(llama_cpp.llama_supports_gpu_offload())
        self.name = "llama.cpp-gpu" if self.gpu else "llama.cpp"
        self.llm = Llama(path, n_threads=n_threads, n_threads_batch=n_threads, n_ctx=n_ctx,
                         n_batch=min(512, n_ctx), type_k=KV_TYPES[type_k], type_v=KV_TYPES[type_v],
                         n_gpu_layers=-1 if self.gpu else 0,
                         flash_attn=type_v == "q8_0", verbose=False)   # llama.cpp: quantized V needs it
        self.n_vocab = self.llm.n_vocab()

    def _eval(self, tokens: list[int]) -> np.ndarray:
        import llama_cpp
        self.llm.eval(tokens)
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)   # also synchronizes: stats are counted
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def run(self, prompt: list[int], n_gen: int) -> RunTimes:
        import llama_cpp
        self.llm.reset()
        llama_cpp.llama_perf_context_reset(self.llm.ctx)
        t0 = time.perf_counter()
        logits = self._eval(prompt)
        prompt_wall = time.perf_counter() - t0
        decode_wall = 0.0
        for _ in range(n_gen):
            tok = int(np.argmax(logits))
            t0 = time.perf_counter()
            logits = self._eval([tok])
            decode_wall += time.perf_counter() - t0
        p = llama_cpp.llama_perf_context(self.llm.ctx)
        wall_decode_tps = n_gen / decode_wall
        if p.n_p_eval == len(prompt) and p.n_eval == n_gen and p.t_p_eval_ms > 0 and p.t_eval_ms > 0:
            return RunTimes(1e3 * p.n_p_eval / p.t_p_eval_ms, 1e3 * p.n_eval / p.t_eval_ms,
                            wall_decode_tps, "llama_perf_context")
        # counters off or counted differently (another llama.cpp build): fall back to the clock
        return RunTimes(len(prompt) / prompt_wall, wall_decode_tps, wall_decode_tps, "wall")

    def close(self) -> None:
        self.llm.close()


def _serve_dense(conn, args: tuple) -> None:
    """The child of DenseProcess: one LlamaCppEngine, serving run() calls over conn."""
    eng = LlamaCppEngine(*args)
    conn.send((eng.name, eng.gpu))
    while True:
        msg = conn.recv()
        if msg is None:
            eng.close()
            return
        conn.send(eng.run(*msg))


class DenseProcess:
    """LlamaCppEngine in a child process: with --device gpu, llama.cpp's CUDA backend and larosa's
    Vulkan device in one process crashed llama.cpp (a segfault in libggml-cuda on the H200)."""

    def __init__(self, *args):
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_dense, args=(child, args), daemon=True)
        self.proc.start()
        self.name, self.gpu = self._answer(600, "start")

    def _answer(self, timeout: float, what: str):
        """The child's reply; BenchError when it died or did not answer in time."""
        t0 = time.perf_counter()
        while not self.conn.poll(1.0):
            if not self.proc.is_alive():
                raise BenchError(f"llama.cpp's process ended (exit code {self.proc.exitcode}) during {what}")
            if time.perf_counter() - t0 > timeout:
                self.proc.kill()
                raise BenchError(f"llama.cpp's process did not answer within {timeout:.0f} s ({what})")
        return self.conn.recv()

    def run(self, prompt: list[int], n_gen: int) -> RunTimes:
        self.conn.send((prompt, n_gen))
        return self._answer(3600, "a run")

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(60)


class LarosaEngine:
    """The LaRoSA runtime, sparse, greedy."""
    name = "larosa"

    def __init__(self, path: str, n_threads: int, n_ctx: int, type_k: str = "f16", type_v: str = "f16",
                 device: str = "cpu"):
        from larosa.runtime.model import Model
        self.model = Model(path, sparsity=0.0, n_threads=n_threads, n_ctx=n_ctx, type_k=type_k, type_v=type_v,
                           device=device)
        self.model.wait_huge_pages()   # time the steady state: weights on 2 MiB pages where offered

    def set_sparsity(self, s: float) -> None:
        self.model.set_sparsity(s)

    def run(self, prompt: list[int], n_gen: int) -> RunTimes:
        m = self.model
        m.reset()
        t0 = time.perf_counter()
        logits = m.eval(prompt)
        prompt_s = time.perf_counter() - t0
        m.rows_read(reset=True)   # count the decode tokens' reads only
        decode_s = 0.0
        for _ in range(n_gen):
            tok = int(np.argmax(logits))
            t0 = time.perf_counter()
            logits = m.eval([tok])
            decode_s += time.perf_counter() - t0
        return RunTimes(len(prompt) / prompt_s, n_gen / decode_s, n_gen / decode_s, "perf_counter",
                        m.bytes_read_per_token(), m._reads(False)[:2])

    def profile(self, prompt: list[int], n_gen: int) -> dict[str, float]:
        """One extra run with the C library's per-op timers on: milliseconds per decode token."""
        from larosa._kernels import ffi, lib
        out = ffi.new("double[]", PROFILE_OPS.__len__())
        lib.lr_model_profile(self.model._m, ffi.NULL, 0, 1, 1)
        self.run(prompt, n_gen)
        tokens = lib.lr_model_profile(self.model._m, out, len(PROFILE_OPS), 0, 1)
        return {op: out[i] / 1e6 / max(tokens, 1) for i, op in enumerate(PROFILE_OPS)}

    def close(self) -> None:
        del self.model


# per-op timers of c_kernels/forward.c, in the order of LR_PROF_* (larosa.h)
PROFILE_OPS = ("adapter", "norm", "select", "qkv", "attention", "o", "gate_up", "swiglu", "down", "head")


# -- the benchmark ----------------------------------------------------------------------------
@dataclass
class Row:
    engine: str
    model: str
    type: str
    sparsity: float
    threads: int
    bytes_per_token: int
    read_bandwidth_gbs: float
    runs: list[RunTimes] = field(default_factory=list)
    ratio: float | None = None
    profile: dict[str, float] | None = None    # ms per decode token by op (--profile)
    reader_tps: float | None = None            # larosa: a plain reader's tok/s for the same bytes (reader_tps)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    @property
    def bandwidth_gbs(self) -> float:
        return self.bytes_per_token * self.median("decode_tps") / 1e9

    def as_json(self) -> dict:
        d = {"engine": self.engine, "model": self.model, "type": self.type, "sparsity": self.sparsity,
             "threads": self.threads, "prompt_tps": self.median("prompt_tps"),
             "decode_tps": self.median("decode_tps"), "bandwidth_gbs": self.bandwidth_gbs,
             "decode_tps_wall": self.median("decode_tps_wall"),
             "decode_tps_rounds": [r.decode_tps for r in self.runs],
             "bytes_per_token": self.bytes_per_token, "read_bandwidth_gbs": self.read_bandwidth_gbs,
             "timing": self.runs[0].timing}
        if self.ratio is not None:
            d["ratio"] = self.ratio
        if self.profile is not None:
            d["profile_ms"] = self.profile
        if self.reader_tps is not None:
            d["reader_tps"] = self.reader_tps
        return d


@dataclass
class Config:
    dense: str
    larosa: str
    sparsities: list[float]
    threads: list[int]
    n_gen: int
    n_prompt: int
    rounds: int
    bw_bytes: int
    profile: bool = False
    type_k: str = "f16"       # KV cache types, both engines
    type_v: str = "f16"
    device: str = "cpu"       # larosa's device; gpu: llama.cpp offloads every layer too, where it can


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _alternate(cfg: Config, info: DenseInfo, larosa_type: str, prompt: list[int], t: int, bw_gbs: float,
               dense: LlamaCppEngine, sparse: LarosaEngine) -> tuple[Row, list[Row]]:
    """Warm-up, then R rounds of llama.cpp followed by larosa at each sparsity."""
    # warm-up: page the weights in (sparsity 0 touches every row), start the thread pools
    warm_p, warm_n = prompt[: min(len(prompt), 16)], min(cfg.n_gen, 8)
    dense.run(warm_p, warm_n)
    sparse.set_sparsity(0.0)
    sparse.run(warm_p, warm_n)
    base = Row(dense.name, os.path.basename(cfg.dense), info.weight_type, 0.0, t, info.bytes_per_token, bw_gbs)
    rows = []
    for s in cfg.sparsities:
        sparse.set_sparsity(s)
        rows.append(Row("larosa", os.path.basename(cfg.larosa), larosa_type, s, t,
                        sparse.model.bytes_per_token(), bw_gbs))
    for r in range(cfg.rounds):
        base.runs.append(dense.run(prompt, cfg.n_gen))
        log(f"[t={t}] round {r + 1}/{cfg.rounds}: {dense.name} decode {base.runs[-1].decode_tps:.2f} tok/s")
        for row in rows:
            sparse.set_sparsity(row.sparsity)
            row.runs.append(sparse.run(prompt, cfg.n_gen))
            log(f"[t={t}] round {r + 1}/{cfg.rounds}: larosa s={row.sparsity:g} "
                f"decode {row.runs[-1].decode_tps:.2f} tok/s")
    for row in rows:   # what the decode tokens read, measured (the selections vary by token)
        row.bytes_per_token = statistics.median(r.bytes_read for r in row.runs)
        row.reader_tps = reader_tps(sparse.model, row.runs[-1].reads, row.bytes_per_token, t, bw_gbs * 1e9)
    for row in rows if cfg.profile else []:   # after the timed rounds: the timers cost a little
        sparse.set_sparsity(row.sparsity)
        row.profile = sparse.profile(prompt, cfg.n_gen)
    return base, rows


_ROWS_BW: dict = {}   # (row bytes, kept fraction, threads) -> lr_read_rows_bandwidth, once per process


def reader_tps(model, reads: tuple, bytes_read: float, t: int, seq_bw: float) -> float:
    """Tokens/s of a plain reader of one token's weight bytes: each block weight's selected rows of
    codes at lr_read_rows_bandwidth for their length and kept fraction (t threads), everything else
    (scale tables, head, adapters) at the sequential read bandwidth seq_bw. Not a strict bound (a
    kernel may order its reads better), but what the memory system gives this access pattern."""
    from larosa._kernels import lib
    from larosa.runtime import format as F
    rows, groups = reads
    hp, L, seconds, codes_total = model.hp, model.hp.n_layers, 0.0, 0.0
    types = model.file.shapes_types()
    for name, (shape, qtype) in types.items():
        parts = name.split(".")
        if not (name.startswith("blk.") and parts[2] in F.WEIGHT_INPUT and parts[3] == "weight"):
            continue
        b, cols = F.WEIGHT_INPUT[parts[2]], shape[-1]
        row_bytes = {F.QT.Q8_0: cols, F.QT.Q4_0: cols // 2}.get(qtype, F.row_bytes(qtype, cols))
        k, keep = rows[b] / L, rows[b] / L / hp.block_input_width(b)
        if k <= 0:
            continue
        key = (-(-row_bytes // 64) * 64, round(keep, 2), t)
        if key not in _ROWS_BW:
            _ROWS_BW[key] = lib.lr_read_rows_bandwidth(256 << 20, key[0], max(key[1], 0.01), t, 3)
        seconds += k * row_bytes / _ROWS_BW[key]
        codes_total += k * row_bytes
    return 1.0 / (seconds + (bytes_read - codes_total) / seq_bw)


def bench_threads(cfg: Config, info: DenseInfo, larosa_type: str, prompt: list[int], t: int) -> list[Row]:
    """All rows of one thread count: both engines loaded once, warmed up, then alternated."""
    from larosa._kernels import lib
    if cfg.device == "gpu":   # the device's copy bandwidth (bytes read + written), not the CPU's
        from larosa.runtime import gpu
        bw = lib.lr_gpu_copy_bandwidth(gpu.device()._g, cfg.bw_bytes, BW_REPS)
        what = "device-to-device copy bandwidth (read + written)"
    else:
        bw = lib.lr_read_bandwidth(cfg.bw_bytes, t, BW_REPS)
        what = "read bandwidth"
    if bw <= 0:
        raise BenchError(f"could not measure the {what} with {t} threads")
    bw_gbs = bw / 1e9
    log(f"[t={t}] {what}: {bw_gbs:.2f} GB/s ({cfg.bw_bytes / 2**30:.2f} GiB buffer, best of {BW_REPS})")
    n_ctx = cfg.n_prompt + cfg.n_gen
    if cfg.device == "gpu":
        dense = DenseProcess(cfg.dense, t, n_ctx, cfg.type_k, cfg.type_v, True)
    else:
        dense = LlamaCppEngine(cfg.dense, t, n_ctx, cfg.type_k, cfg.type_v)
    if cfg.device == "gpu" and not dense.gpu:
        log("llama-cpp-python here has no GPU backend: the dense baseline runs on the CPU")
    try:
        sparse = LarosaEngine(cfg.larosa, t, n_ctx, cfg.type_k, cfg.type_v, cfg.device)
        try:
            base, rows = _alternate(cfg, info, larosa_type, prompt, t, bw_gbs, dense, sparse)
        finally:
            sparse.close()
    finally:
        dense.close()
        gc.collect()
    for row in rows:
        row.ratio = row.median("decode_tps") / base.median("decode_tps")
    return [base, *rows]


def check_pair(cfg: Config, info: DenseInfo, allow_mismatch: bool) -> tuple[str, "Tokenizer"]:
    """Validates the LaRoSA file against the dense one; returns (its weight type, tokenizer)."""
    from larosa.runtime.loader import load
    from larosa.runtime.tokenizer import Tokenizer
    lf = load(cfg.larosa)
    hp = lf.hp
    if (hp.dim, hp.n_layers, hp.ffn_dim) != info.shape or hp.n_vocab != info.n_vocab:
        raise BenchError(f"{cfg.larosa} (dim {hp.dim}, {hp.n_layers} layers, ff {hp.ffn_dim}, vocab {hp.n_vocab})"
                         f" is not a conversion of {cfg.dense} (dim {info.shape[0]}, {info.shape[1]} layers, "
                         f"ff {info.shape[2]}, vocab {info.n_vocab})")
    from larosa.runtime import format as F
    ltype = weight_type([(n, s, q, F.row_bytes(q, s[-1]) * s[0]) for n, (s, q) in lf.shapes_types().items()
                         if len(s) == 2])   # logical types: input-major Q8_0 / Q4_0 are stored as I8 + scales
    if ltype != info.weight_type and not allow_mismatch:
        raise BenchError(f"unequal bits per weight: {cfg.dense} is {info.weight_type}, {cfg.larosa} is {ltype} "
                         f"(re-quantize with python -m larosa.tools.requantize ... --type {ltype.lower()}, "
                         f"or pass --allow-type-mismatch)")
    if cfg.n_prompt + cfg.n_gen > hp.n_ctx:
        raise BenchError(f"-p + -n = {cfg.n_prompt + cfg.n_gen} exceeds the model's context ({hp.n_ctx})")
    return ltype, Tokenizer(cfg.dense)


def format_table(rows: list[Row]) -> str:
    head = ["engine", "model", "type", "sparsity", "threads", "prompt tok/s", "decode tok/s", "ratio",
            "MiB/token", "GB/s", "% of read BW", "% of reader"]
    lines = []
    for r in rows:
        gbs = r.bandwidth_gbs
        lines.append([r.engine, r.model, r.type, f"{r.sparsity:g}", str(r.threads),
                      f"{r.median('prompt_tps'):.1f}", f"{r.median('decode_tps'):.2f}",
                      "" if r.ratio is None else f"{r.ratio:.3f}", f"{r.bytes_per_token / 2**20:.1f}",
                      f"{gbs:.2f}", f"{100 * gbs / r.read_bandwidth_gbs:.0f}%",
                      "" if r.reader_tps is None else f"{100 * r.median('decode_tps') / r.reader_tps:.0f}%"])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]

    def fmt(cells: list[str]) -> str:   # text columns left, numbers right
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def format_profile(rows: list[Row]) -> str:
    """ms per decode token by op for each profiled larosa row, and the share of the total."""
    lines = ["per-op decode time, ms/token (share): " + ", ".join(PROFILE_OPS)]
    for r in rows:
        if r.profile:
            total = sum(r.profile.values())
            ops = "  ".join(f"{op} {ms:.2f} ({100 * ms / total:.0f}%)" for op, ms in r.profile.items() if ms > 0)
            lines.append(f"  t={r.threads} s={r.sparsity:g}: total {total:.2f}  {ops}")
    return "\n".join(lines)


def run_bench(cfg: Config, allow_mismatch: bool = False) -> tuple[list[Row], str]:
    """Runs the whole benchmark; returns its rows and the prompt's source."""
    info = dense_info(cfg.dense)
    ltype, tok = check_pair(cfg, info, allow_mismatch)
    prompt, source = prompt_tokens(tok, cfg.n_prompt, info.synthetic)
    rows: list[Row] = []
    for t in cfg.threads:
        rows += bench_threads(cfg, info, ltype, prompt, t)
    return rows, source


# -- command line -----------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):   # one line, exit 1 (argparse's default: usage + exit 2)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(1)


def _list(conv, what: str):
    def parse(text: str):
        try:
            vals = [conv(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a comma-separated list, got {text!r}")
        if not vals:
            raise argparse.ArgumentTypeError(f"{what} is empty")
        return list(dict.fromkeys(vals))   # drop repeats, keep order
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="larosa-bench", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Timing protocol: see the module docstring of larosa/tools/bench.py.")
    p.add_argument("-m", "--dense", required=True, help="llama GGUF run by llama.cpp (dense baseline)")
    p.add_argument("-M", "--larosa", required=True, help="LaRoSA GGUF of the same model, same weight type")
    p.add_argument("--sparsity", type=_list(float, "--sparsity"), default=[0.0, 0.25, 0.4, 0.5],
                   help="larosa sparsities (default 0,0.25,0.4,0.5)")
    p.add_argument("-t", "--threads", type=_list(int, "-t"), default=[1, 2], help="thread counts (default 1,2)")
    p.add_argument("-n", "--n-gen", type=int, default=64, help="generated tokens per run (default 64)")
    p.add_argument("-p", "--n-prompt", type=int, default=128, help="prompt tokens (default 128)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per configuration (default 3)")
    p.add_argument("--bw-mib", type=int, default=1024, help="read-bandwidth buffer in MiB (default 1024)")
    p.add_argument("--allow-type-mismatch", action="store_true",
                   help="run even if the two files' weight types differ")
    p.add_argument("--profile", action="store_true",
                   help="after the timed rounds, one run per sparsity with the C library's per-op timers on; "
                        "prints ms per token by op")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list on the last line")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                   help="larosa's device (gpu: WebGPU, pip install \"larosa[gpu]\"); with gpu, llama.cpp offloads "
                        "every layer where its build has a GPU backend, and the bandwidth column is the GPU's "
                        "device-to-device copy (bytes read + written)")
    add_kv_args(p)
    a = p.parse_args(argv)
    for s in a.sparsity:
        if not 0.0 <= s < 1.0:
            p.error(f"--sparsity values must be in [0, 1), got {s:g}")
    for t in a.threads:
        if not 1 <= t <= 512:
            p.error(f"-t values must be in [1, 512], got {t}")
    for name, v in (("-n", a.n_gen), ("-p", a.n_prompt), ("--rounds", a.rounds), ("--bw-mib", a.bw_mib)):
        if v < 1:
            p.error(f"{name} must be at least 1, got {v}")
    for path in (a.dense, a.larosa):
        if not os.path.isfile(path):
            p.error(f"{path}: no such file")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cfg = Config(dense=a.dense, larosa=a.larosa, sparsities=a.sparsity, threads=a.threads, n_gen=a.n_gen,
                 n_prompt=a.n_prompt, rounds=a.rounds, bw_bytes=a.bw_mib * 2**20,
                 profile=a.profile, type_k=a.cache_type_k, type_v=a.cache_type_v, device=a.device)
    try:
        rows, source = run_bench(cfg, a.allow_type_mismatch)
    except (LarosaError, ValueError, OSError) as e:
        print(f"larosa-bench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nlarosa-bench: interrupted", file=sys.stderr)
        return 130
    from larosa._kernels import lib
    simd = {lib.LR_SIMD_SCALAR: "scalar", lib.LR_SIMD_AVX2: "AVX2", lib.LR_SIMD_AVX512: "AVX-512",
            lib.LR_SIMD_NEON: "NEON"}.get(lib.lr_get_simd(), "?")
    print(f"prompt: {source}; {cfg.n_gen} greedy tokens per run; median of {cfg.rounds} rounds; "
          f"{os.cpu_count()} CPUs; larosa kernels {simd}; KV cache K {cfg.type_k}, V {cfg.type_v}")
    if cfg.device == "gpu":
        from larosa.runtime import gpu
        print(f"larosa device: {gpu.device().info}; bandwidth column: % of the device-to-device copy "
              f"(bytes read + written) below")
    for t in cfg.threads:
        bw = next(r.read_bandwidth_gbs for r in rows if r.threads == t)
        print(f"measured {'copy' if cfg.device == 'gpu' else 'read'} bandwidth, {t} thread{'s' if t > 1 else ''}: "
              f"{bw:.2f} GB/s")
    print(format_table(rows))
    print(f"timing: llama.cpp {rows[0].runs[0].timing}, larosa perf_counter around Model.eval; "
          f"ratio = larosa decode / llama.cpp decode at the same threads; MiB/token: larosa's measured "
          f"(selected rows, whole scale tables of the groups they touch); % of reader: larosa's decode over "
          f"a plain reader of the same rows (lr_read_rows_bandwidth) and the rest at the read bandwidth")
    if cfg.profile:
        print(format_profile(rows))
    if a.json:
        print(json.dumps([r.as_json() for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

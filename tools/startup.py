"""Start-up time: larosa against llama.cpp (through llama-cpp-python) on the same model.

    python -m larosa.tools.startup ttft LAROSA.gguf LLAMA.gguf [-n 5] [-t 2]
        time to first token, each a cold process (warm page cache): `larosa-run -p Hello -n 1` on the
        LaRoSA file against Llama(LLAMA.gguf, n_ctx=4096) generating one token after "Hello";
        runs alternate, medians printed.
    python -m larosa.tools.startup header [FILE] [-n 5]
        opening a Gemma-3-270M-shaped header (262,144-token SentencePiece vocabulary, its 236 tensor
        descriptions, data left sparse; written to FILE when absent): Model(...) on it (the header
        checked, the source file refused: convert it first), and what a LaRoSA file with this vocabulary adds (the
        token checks, llama.cpp's vocab-only load as Model builds it), against llama.cpp's
        vocab-only load of the same file, each in a fresh process.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

PROMPT = "Hello"
# Gemma 3 270M (google/gemma-3-270m): the shapes of its GGUF
GEMMA3_270M = dict(vocab=262144, dim=640, layers=18, heads=4, kv_heads=1, head_dim=256, ff=2048, ctx=32768)


def _wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"startup: {' '.join(cmd[:3])}... failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def ttft(larosa_path: str, llama_path: str, runs: int, threads: int) -> dict[str, list[float]]:
    bin_dir = os.path.dirname(sys.executable)
    cmds = {
        "larosa-run": [os.path.join(bin_dir, "larosa-run"), "-m", larosa_path, "-p", PROMPT, "-n", "1",
                       "-t", str(threads), "--temp", "0"],
        "llama.cpp": [sys.executable, "-c",
                      "import sys\nfrom llama_cpp import Llama\n"
                      f"m = Llama({llama_path!r}, n_ctx=4096, n_threads={threads}, verbose=False)\n"
                      f"m({PROMPT!r}, max_tokens=1, temperature=0)"],
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for name, cmd in cmds.items():   # one untimed run each: the page cache holds both files
        _wall(cmd)
    for _ in range(runs):
        for name, cmd in cmds.items():
            times[name].append(_wall(cmd))
    return times


def write_gemma3_header(path: str) -> str:
    """A gemma3 GGUF with Gemma 3 270M's metadata sizes and tensor descriptions; the tensor data is a
    hole (a sparse file): opening it reads what opening the real file reads."""
    import numpy as np
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFWriter

    from larosa.runtime.format import row_bytes
    from larosa.tools.make_synthetic import spm_vocab
    g = GEMMA3_270M
    w = GGUFWriter(path, "gemma3")
    w.add_name("gemma-3-270m-shaped")
    w.add_context_length(g["ctx"])
    w.add_embedding_length(g["dim"])
    w.add_block_count(g["layers"])
    w.add_feed_forward_length(g["ff"])
    w.add_head_count(g["heads"])
    w.add_head_count_kv(g["kv_heads"])
    w.add_key_length(g["head_dim"])
    w.add_value_length(g["head_dim"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_sliding_window(512)
    tokens, scores, types = spm_vocab(g["vocab"])
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    q, kv = g["heads"] * g["head_dim"], g["kv_heads"] * g["head_dim"]
    plan = [("token_embd.weight", (g["vocab"], g["dim"]))]
    for l in range(g["layers"]):
        plan += [(f"blk.{l}.{n}.weight", s) for n, s in (
            ("attn_norm", (g["dim"],)), ("attn_q", (q, g["dim"])), ("attn_k", (kv, g["dim"])),
            ("attn_v", (kv, g["dim"])), ("attn_q_norm", (g["head_dim"],)), ("attn_k_norm", (g["head_dim"],)),
            ("attn_output", (g["dim"], q)), ("post_attention_norm", (g["dim"],)), ("ffn_norm", (g["dim"],)),
            ("ffn_gate", (g["ff"], g["dim"])), ("ffn_up", (g["ff"], g["dim"])), ("ffn_down", (g["dim"], g["ff"])),
            ("post_ffw_norm", (g["dim"],)))]
    plan.append(("output_norm.weight", (g["dim"],)))
    total = 0
    for name, shape in plan:
        t = QT.F32 if len(shape) == 1 else QT.Q8_0
        nbytes = row_bytes(t, shape[-1]) * int(np.prod(shape[:-1]))
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=t)
        total += -(-nbytes // 32) * 32
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    size = os.path.getsize(path)
    os.truncate(path, -(-size // 32) * 32 + total)
    return path


_OPEN = """
import sys, time
t0 = time.perf_counter()
from larosa.runtime import gguf_file as G, loader
from larosa.runtime.errors import UnsupportedError
from larosa.runtime.format import HParams
from larosa.runtime.model import Model, _tokenizer
t1 = time.perf_counter()
try:
    Model(sys.argv[1])                            # scan, metadata, then the source file is refused
    raise SystemExit("gemma3 accepted?")
except UnsupportedError:
    pass
t2 = time.perf_counter()
f = G.GGUFFile(sys.argv[1])
m = G.Metadata(f, f.path)
arch = m.str("general.architecture")
n_vocab = m.count("tokenizer.ggml.tokens")
hp = HParams(n_vocab=n_vocab, dim=m.int(arch + ".embedding_length"), n_layers=m.int(arch + ".block_count"),
             n_heads=m.int(arch + ".attention.head_count"), n_kv_heads=m.int(arch + ".attention.head_count_kv"),
             head_dim=m.int(arch + ".attention.key_length"), ffn_dim=m.int(arch + ".feed_forward_length"),
             norm_eps=m.float(arch + ".attention.layer_norm_rms_epsilon"), rope_base=1e6,
             n_ctx=m.int(arch + ".context_length"), tied=True)
t3 = time.perf_counter()
loader.check_tokenizer_keys(m, hp, f.path)             # a LaRoSA file's token checks (262,144 strings)
t4 = time.perf_counter()
lf = loader.LarosaFile(path=f.path, reader=f, meta=m, hp=hp, method="", sparsity=0.0, coefs={}, rotated=[],
                       thr_grid=None, thr_table={}, mlp_out_key="act", budget_default=False, tensors={})
tok = _tokenizer(lf)                               # llama.cpp's vocab-only load, as Model builds it
t5 = time.perf_counter()
assert tok.n_vocab == n_vocab
print(f"{t1 - t0:.4f} {t2 - t1:.4f} {t4 - t3:.4f} {t5 - t4:.4f}")
"""
_LLAMA_VOCAB = """
import sys, time
t0 = time.perf_counter()
from llama_cpp import Llama
t1 = time.perf_counter()
m = Llama(sys.argv[1], vocab_only=True, verbose=False)
t2 = time.perf_counter()
print(f"{t1 - t0:.4f} {t2 - t1:.4f}")
"""


def header(path: str, runs: int) -> dict[str, list[float]]:
    if not os.path.exists(path):
        write_gemma3_header(path)
    out: dict[str, list[float]] = {"larosa import": [], "Model(...) refusal": [], "token checks": [],
                                   "larosa tokenizer": [], "larosa process": [], "llama.cpp import": [], "llama.cpp vocab load": [],
                                   "llama.cpp process": []}
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", _OPEN, path], capture_output=True, text=True, check=True)
        out["larosa process"].append(time.perf_counter() - t)
        for k, v in zip(("larosa import", "Model(...) refusal", "token checks", "larosa tokenizer"), r.stdout.split()):
            out[k].append(float(v))
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", _LLAMA_VOCAB, path], capture_output=True, text=True, check=True)
        out["llama.cpp process"].append(time.perf_counter() - t)
        for k, v in zip(("llama.cpp import", "llama.cpp vocab load"), r.stdout.split()):
            out[k].append(float(v))
    return out


def _report(times: dict[str, list[float]]) -> None:
    for name, ts in times.items():
        print(f"{name:22s} median {statistics.median(ts):.3f} s  ({', '.join(f'{t:.3f}' for t in ts)})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="startup", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a1 = sub.add_parser("ttft")
    a1.add_argument("larosa")
    a1.add_argument("llama")
    a1.add_argument("-n", type=int, default=5)
    a1.add_argument("-t", type=int, default=min(os.cpu_count() or 1, 8))
    a2 = sub.add_parser("header")
    a2.add_argument("file", nargs="?", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "gemma3-270m-shaped.gguf"))
    a2.add_argument("-n", type=int, default=5)
    a = p.parse_args(argv)
    if a.cmd == "ttft":
        _report(ttft(a.larosa, a.llama, a.n, a.t))
    else:
        _report(header(a.file, a.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())

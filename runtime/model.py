"""Model: a LaRoSA GGUF loaded memory-mapped and evaluated by the C library, one call per batch.

    m = Model("smollm2.larosa-q8_0.gguf", sparsity=0.4, n_threads=2)
    for piece in m.generate("The capital of France is", max_tokens=32, temperature=0):
        print(piece, end="")
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Iterator

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

from larosa._kernels import ffi, lib

from . import format as F
from .errors import FormatError, LarosaError, UnsupportedError
from .generate import Sampling, generate_text, generate_tokens
from .gguf_file import write_vocab_gguf
from .loader import LarosaFile, load
from .tokenizer import Tokenizer

_TYPE_IDS = {"F32": lib.LR_F32, "F16": lib.LR_F16, "Q8_0": lib.LR_Q8_0, "Q4_0": lib.LR_Q4_0}
_IM_TYPE_IDS = {"Q8_0": lib.LR_Q8_0_IM, "Q4_0": lib.LR_Q4_0_IM}   # input-major: codes + scale table
_ERRORS = {lib.LR_EARG: "invalid argument", lib.LR_ESHAPE: "tensor shape or size mismatch",
           lib.LR_ETYPE: "unsupported tensor type", lib.LR_ENOMEM: "out of memory",
           lib.LR_ERANGE: "value out of range", lib.LR_ENAN: "non-finite values in the logits",
           lib.LR_ETHREAD: "cannot start threads"}
DEFAULT_N_CTX = 4096
# KV cache types: llama.cpp's names (-ctk / -ctv) and GGML type ids (llama-cpp-python's type_k / type_v)
KV_TYPES = {"f32": lib.LR_F32, "f16": lib.LR_F16, "q8_0": lib.LR_Q8_0}
DEFAULT_KV_TYPE = "f16"   # llama.cpp's default
PROMPT_CHUNK = 256     # prompt tokens per C call in eval_prompt
# the C calls of a model on the CPU (larosa.h) and on the GPU (gpu.h): same arguments
_CPU_API = SimpleNamespace(set_selection=lib.lr_model_set_selection, set_budget=lib.lr_model_set_budget,
                           eval=lib.lr_eval, rows_read=lib.lr_model_rows_read)
_GPU_API = SimpleNamespace(set_selection=lib.lr_gpu_model_set_selection, set_budget=lib.lr_gpu_model_set_budget,
                           eval=lib.lr_gpu_eval, rows_read=lib.lr_gpu_model_rows_read)


def kv_type_name(t: str | int | None, what: str = "KV cache type") -> str:
    """A KV cache type by llama.cpp's name or GGML type id -> its name ("f32", "f16", "q8_0");
    None: the default (f16). ValueError for anything else."""
    if t is None:
        return DEFAULT_KV_TYPE
    if isinstance(t, str) and t.lower() in KV_TYPES:
        return t.lower()
    if isinstance(t, int) and not isinstance(t, bool):
        for name, tid in KV_TYPES.items():
            if tid == t:
                return name
    raise ValueError(f"{what} must be one of {', '.join(KV_TYPES)} (or GGML type ids "
                     f"{', '.join(str(v) for v in KV_TYPES.values())}), got {t!r}")


class ContextError(LarosaError):
    """The tokens do not fit the context window (n_ctx)."""


class NumericsError(LarosaError):
    """The model produced NaN or Inf (a broken file, or activations overflowing float32), or logits
    all equal (a degenerate state no real model reaches: the head then ranks no token above another)."""


@dataclass
class Timings:
    """Wall-clock figures of the last eval/generate call."""
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    decode_tokens: int = 0        # tokens evaluated one at a time after the prompt
    decode_seconds: float = 0.0   # their evaluation time (sampling excluded, as in llama.cpp)
    sample_seconds: float = 0.0

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass
class _Keep:
    """Python objects whose memory the C model points into."""
    arrays: list = field(default_factory=list)


def _tokenizer(f: LarosaFile) -> Tokenizer:
    """llama.cpp's tokenizer of the file: its tokenizer.* keys (checked by load) copied byte for byte
    into a small vocab-only llama GGUF (gguf_file.write_vocab_gguf), loaded by llama.cpp, deleted.
    Tokenizer.from_metadata does the same through gguf's writer, which first turns every token and
    merge into a Python object (~0.2 s on SmolLM2, seconds on 256k-token vocabularies)."""
    keys = [k for k in f.reader.fields if k.startswith("tokenizer.")]
    if "tokenizer.ggml.model" not in keys:
        raise FormatError(f"{f.path}: no tokenizer in the file (tokenizer.ggml.model missing)")
    hp, u32 = f.hp, VT.UINT32
    kvs = [("llama.block_count", u32, hp.n_layers), ("llama.context_length", u32, hp.n_ctx),
           ("llama.embedding_length", u32, hp.dim), ("llama.feed_forward_length", u32, hp.ffn_dim),
           ("llama.attention.head_count", u32, hp.n_heads), ("llama.attention.head_count_kv", u32, hp.n_kv_heads),
           ("llama.attention.layer_norm_rms_epsilon", VT.FLOAT32, hp.norm_eps)]
    fd, tmp = tempfile.mkstemp(suffix=".vocab.gguf")
    os.close(fd)
    try:
        write_vocab_gguf(f.reader, tmp, kvs, keys)
        return Tokenizer(tmp)
    finally:
        os.unlink(tmp)


class Model:
    """A converted model ready to evaluate. Two Model objects (of the same or different files) are
    independent and may run concurrently, one per thread (the C calls release the GIL). One Model
    holds one context: threads sharing it would mix their tokens in one KV cache, so do not share
    it. Its calls are serialized by a lock all the same, so sharing never breaks the cache's
    bookkeeping or the C thread pool (each call sees the cache as the previous call left it).

    Context: at most n_ctx positions. eval raises ContextError, before any change, when the cached
    and new tokens exceed n_ctx (no shift, no silent truncation; rewind or reset to go on);
    generation stops once the context is full (its last token is sampled but not evaluated)."""

    def __init__(self, path: str | os.PathLike, sparsity: float | None = None,
                 n_threads: int | None = None, n_ctx: int | None = None, budget: bool | None = None,
                 type_k: str | int | None = None, type_v: str | int | None = None, topk: bool | None = None,
                 device: str = "cpu", scores: bool | None = None):
        """type_k, type_v: the KV cache's types, "f32", "f16" (default, as llama.cpp) or "q8_0"
        (or their GGML type ids 0, 1, 8, as llama-cpp-python takes them); q8_0 needs a head
        dimension that is a multiple of 32. topk=True runs Top-K with the file's scores on a file
        with threshold tables (what a --method auto file may choose; None: as the file says).
        scores=False ranks by |x| alone, the file's score tensors unused (with topk=True: a --method
        auto file's topk_abs selection; None: as the file says when budget and topk are left to it,
        else the scores are used).
        device: "cpu" (default), "gpu" (WebGPU through wgpu-native: pip install "larosa[gpu]";
        f16 / f32 KV cache) or "auto" (the GPU when one opens)."""
        from . import gpu
        self.device = gpu.resolve(device)   # GPUUnavailable (a LarosaError) says what is missing
        self.type_k, self.type_v = kv_type_name(type_k, "type_k"), kv_type_name(type_v, "type_v")
        self.file: LarosaFile = load(path)
        arch = self.file.meta.str(F.K_SOURCE_ARCH, "llama")
        if self.device == "gpu" and arch not in gpu.ARCHS:
            if device == "auto":
                self.device = "cpu"
            else:
                raise UnsupportedError(f"{path}: a {arch} model; the GPU step runs {', '.join(gpu.ARCHS)} files "
                                       "(this architecture's features run on the CPU only): use --device cpu")
        # thresholds held to a per-token byte budget (LarosaFile.budget), or Top-K on a threshold file
        self.budget, self.topk = self.file.selection_mode(budget, topk)
        self.scores = self.file.scores_mode(budget, topk, scores)
        if not self.scores and not self.topk and self.file.thr_table and \
                any(".score_" in name for name in self.file.tensors):
            raise ValueError("scores=False ranks by |x| under Top-K only: this file's threshold tables "
                             "were calibrated on the scored keys (use topk=True)")
        if self.budget:
            self.file.budget(self.file.sparsity)       # ValueError now for a file without thresholds
        hp = self.hp = self.file.hp
        self.n_threads = n_threads if n_threads is not None else min(os.cpu_count() or 1, 8)
        if not isinstance(self.n_threads, int) or not 1 <= self.n_threads <= 512:
            raise ValueError(f"n_threads must be an integer in [1, 512], got {n_threads}")
        self.n_ctx = min(hp.n_ctx, DEFAULT_N_CTX) if n_ctx is None else n_ctx
        if not isinstance(self.n_ctx, int) or not 1 <= self.n_ctx <= hp.n_ctx:
            raise ValueError(f"n_ctx must be an integer in [1, {hp.n_ctx}] (the model's context), got {n_ctx}")
        if "q8_0" in (self.type_k, self.type_v) and hp.head_dim % 32:
            raise ValueError(f"a q8_0 KV cache needs a head dimension that is a multiple of 32; "
                             f"{self.file.path} has {hp.head_dim} (use f16 or f32)")
        # ResourceError before lr_model_new allocates (the GPU's KV cache is on the device)
        if self.device == "cpu":
            self.file.check_memory(self.n_ctx, self.n_threads, self.type_k, self.type_v)
        self.tokenizer = _tokenizer(self.file)
        if self.tokenizer.n_vocab != hp.n_vocab:
            raise LarosaError(f"{self.file.path}: tokenizer has {self.tokenizer.n_vocab} tokens, "
                              f"the embedding {hp.n_vocab}")
        self._keep = _Keep()
        self._shapes_types = self.file.shapes_types()
        self._lock = threading.RLock()
        desc = self._describe()
        err = ffi.new("char[]", 256)
        if self.device == "gpu":   # the same calls on the device's model (c_kernels/gpu.h)
            self._gpu = gpu.device()
            self._api = _GPU_API
            ptr = lib.lr_gpu_model_new(self._gpu._g, desc, self.n_ctx, KV_TYPES[self.type_k], KV_TYPES[self.type_v],
                                       err, 256)
            if ptr == ffi.NULL:
                raise LarosaError(f"{self.file.path}: {ffi.string(err).decode()}")
            self._m = ffi.gc(ptr, lib.lr_gpu_model_free)
        else:
            self._api = _CPU_API
            ptr = lib.lr_model_new(desc, self.n_ctx, self.n_threads, KV_TYPES[self.type_k], KV_TYPES[self.type_v],
                                   err, 256)
            if ptr == ffi.NULL:
                raise LarosaError(f"{self.file.path}: {ffi.string(err).decode()}")
            self._m = ffi.gc(ptr, lib.lr_model_free)
            if lib.lr_model_head_repacked(self._m):   # the head reads its repacked copy: drop the mapped pages
                self.file.reader.release(self.file.tensors[F.T_EMBD if hp.tied else F.T_OUTPUT])
            self._collapse_huge_pages()
        self.tokens: list[int] = []          # what the KV cache holds, position by position
        self.timings = Timings()
        self.set_sparsity(self.file.sparsity if sparsity is None else sparsity)

    # -- set-up -------------------------------------------------------------------------------
    def _collapse_huge_pages(self) -> None:
        """Moves the block weights' copy and the repacked head onto 2 MiB pages in the background
        (runtime/hugepages.py); wait_huge_pages() waits for it."""
        from . import hugepages
        self._hugepages = None
        regions = []
        if self._arena is not None:
            regions.append((self._arena.address, self._arena.buf.nbytes))
        n = ffi.new("int64_t *")
        head8 = lib.lr_model_head8(self._m, n)
        if n[0] and hugepages.available():
            regions.append((int(ffi.cast("uintptr_t", head8)), n[0]))
        if regions:   # __del__ stops it before the C model and the arena are freed
            self._hugepages = hugepages.Collapser(regions)

    def __del__(self):
        h = getattr(self, "_hugepages", None)
        if h is not None:
            h.stop()

    def wait_huge_pages(self, timeout: float | None = None) -> int:
        """Waits (at most timeout seconds) for the weights' move onto 2 MiB pages that loading
        started; returns the bytes moved so far (0 where the kernel offers no huge pages or on
        the GPU). Decoding is correct before, during and after; benchmarks wait for it."""
        h = getattr(self, "_hugepages", None)
        if h is None:
            return 0
        h.wait(timeout)
        return h.huge_bytes

    def _tensor(self, name: str, ct) -> None:
        t = self.file.tensors.get(name)
        if t is None:
            ct.data = ffi.NULL
            return
        shape, qtype = self._shapes_types[name]
        rows, cols = shape if len(shape) == 2 else (1, shape[0])
        buf = ffi.from_buffer("char[]", self._copies.get(name, t.data))
        self._keep.arrays.append(buf)
        ct.type, ct.rows, ct.cols, ct.data, ct.nbytes = _TYPE_IDS[qtype.name], rows, cols, buf, t.data.nbytes
        if t.tensor_type == QT.I8:   # input-major Q8_0 / Q4_0: codes and their scale table
            scale = self.file.tensors[F.scale_name(name)]
            sbuf = ffi.from_buffer("char[]", self._copies.get(scale.name, scale.data))
            self._keep.arrays.append(sbuf)
            ct.type = _IM_TYPE_IDS[qtype.name]
            ct.scale, ct.scale_nbytes = sbuf, scale.data.nbytes

    def _copy_block_weights(self) -> dict:
        """name -> the block weights' (and their scale tables') copy in one arena that
        _collapse_huge_pages moves onto 2 MiB pages (runtime/hugepages.py); {} where that is off,
        not offered or too large, or on the GPU: the C model then reads the file mapping."""
        from . import hugepages
        self._arena = None
        if self.device != "cpu" or not hugepages.available():
            return {}
        names = []
        for l in range(self.hp.n_layers):
            for name in (F.T_ADAPTER(l), F.T_QKV(l), F.T_O(l), F.T_GATE_UP(l), F.T_DOWN(l)):
                if name in self.file.tensors:
                    names.append(name)
                    if self.file.tensors[name].tensor_type == QT.I8:
                        names.append(F.scale_name(name))
        total = sum(int(self.file.tensors[n].n_bytes) + 64 for n in names)
        if not total or not hugepages.fits(total):
            return {}
        self._arena = hugepages.Arena(total)
        with open(self.file.path, "rb") as f:
            return {n: self._arena.place(f.fileno(), int(self.file.tensors[n].data_offset),
                                         int(self.file.tensors[n].n_bytes)) for n in names}

    def _describe(self):
        hp = self.hp
        self._copies = self._copy_block_weights()
        d = ffi.new("lr_model_desc *")
        layers = ffi.new("lr_layer[]", hp.n_layers)
        self._keep.arrays += [d, layers]
        d.n_vocab, d.dim, d.n_layers = hp.n_vocab, hp.dim, hp.n_layers
        d.n_heads, d.n_kv_heads, d.head_dim, d.ffn_dim = hp.n_heads, hp.n_kv_heads, hp.head_dim, hp.ffn_dim
        d.norm_eps, d.rope_base = hp.norm_eps, hp.rope_base
        d.embd_scale, d.rope_base_swa, d.act = hp.embd_scale, hp.rope_base_swa, F.ACTIVATIONS.index(hp.act)
        d.attn_softcap, d.final_softcap = hp.attn_softcap, hp.final_softcap
        d.n_rot, d.swa_no_freqs = hp.n_rot, int(not hp.rope_freqs_swa)
        d.attn_temp_scale, d.attn_temp_length = hp.attn_temp_scale, hp.attn_temp_length
        self._tensor(F.T_EMBD, d.embd)
        self._tensor(F.T_EMBD if hp.tied else F.T_OUTPUT, d.head)
        self._tensor(F.T_OUTPUT_ADAPTER, d.out_adapter)
        self._tensor(F.T_OUTPUT_NORM, d.out_norm)
        self._tensor(self.file.rope_freqs_name(self.n_ctx) or F.T_ROPE_FREQS, d.rope_freqs)
        for l in range(hp.n_layers):
            L = layers[l]
            self._tensor(F.T_ADAPTER(l), L.adapter)
            self._tensor(F.T_QKV(l), L.wqkv)
            self._tensor(F.T_O(l), L.wo)
            self._tensor(F.T_GATE_UP(l), L.wgu)
            self._tensor(F.T_DOWN(l), L.wdown)
            for i, b in enumerate(F.BLOCK_INPUTS):   # scores=False: keys |x| (absent scores)
                self._tensor(F.T_SCORE(l, b) if self.scores else "", L.score[i])
            for kind, attr in F.LAYER_VECTOR_FIELDS.items():
                self._tensor(F.T_VEC(l, kind), getattr(L, attr))
            L.n_swa, L.no_rope = hp.window(l), int(not hp.rope(l))
        d.layers = layers
        d.mlp_out_gate_key = int(self.file.mlp_out_key == "gate")
        return d

    def set_sparsity(self, sparsity: float) -> None:
        """Switches to another model sparsity (FORMAT.md: each block input skips min(coef * s, 1) of
        its inputs, by Top-K or by the file's threshold tables); the cached context is dropped."""
        sel = self.file.selection(sparsity, thresholds=not self.topk)
        k = ffi.new("int32_t[]", [v for b in F.BLOCK_INPUTS for v in sel.k[b]])
        thr = ffi.new("float[]", [v for b in F.BLOCK_INPUTS for v in sel.threshold[b]])
        if self.budget:
            plan, cost = self.file.budget(sparsity)
            plan = ffi.new("float[]", [v for b in F.BLOCK_INPUTS for v in plan[b]])
            cost = ffi.new("float[]", [v for b in F.BLOCK_INPUTS for v in cost[b]])
        with self._lock:
            self._check(self._api.set_selection(self._m, k, thr))
            if self.budget:
                self._check(self._api.set_budget(self._m, plan, cost))
            self.sparsity, self.ks, self.thresholds = float(sparsity), sel.k, sel.threshold
            self.reset()   # cached keys and values were computed at the old sparsity
            self.rows_read(reset=True)

    def _check(self, rc: int) -> None:
        if rc == lib.LR_ENAN:
            raise NumericsError(f"{self.file.path}: NaN or Inf in the logits")
        if rc == lib.LR_EGPU:
            raise LarosaError(f"GPU: {self._gpu.error()}")
        if rc != lib.LR_OK:
            raise LarosaError(f"C runtime: {_ERRORS.get(rc, rc)}")

    # -- tokens -------------------------------------------------------------------------------
    def tokenize(self, text: str | bytes, add_bos: bool | None = None, special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        return self.tokenizer.decode(tokens, special=special)

    def reset(self) -> None:
        """Forgets the cached context."""
        with self._lock:
            self.tokens = []

    def rewind(self, n: int) -> None:
        """Keeps only the first n cached tokens (the next eval continues from position n)."""
        with self._lock:
            if not 0 <= n <= len(self.tokens):
                raise ValueError(f"cannot rewind to {n}: {len(self.tokens)} tokens are cached")
            self.tokens = self.tokens[:n]

    # -- evaluation ---------------------------------------------------------------------------
    def eval(self, tokens: list[int], all_logits: bool = False) -> np.ndarray:
        """Appends tokens to the cached context and returns the logits of the last one ([n_vocab])
        or of all of them ([n, n_vocab]). NumericsError when they are not finite or all equal (an
        overflow); the tokens stay cached then."""
        arr = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if arr.size == 0:
            raise ValueError("eval needs at least one token")
        if arr.min() < 0 or arr.max() >= self.hp.n_vocab:
            bad = int(arr[(arr < 0) | (arr >= self.hp.n_vocab)][0])
            raise ValueError(f"token id {bad} outside the vocabulary (0..{self.hp.n_vocab - 1})")
        toks = ffi.new("int32_t[]", arr.astype(np.int32).tolist())
        n = int(arr.size)
        out = np.empty((n, self.hp.n_vocab) if all_logits else self.hp.n_vocab, dtype=np.float32)
        with self._lock:
            if len(self.tokens) + n > self.n_ctx:
                raise ContextError(f"{len(self.tokens)} cached + {n} new tokens exceed n_ctx = {self.n_ctx}")
            rc = self._api.eval(self._m, toks, n, len(self.tokens), ffi.from_buffer("float[]", out), int(all_logits))
            if rc == lib.LR_OK or rc == lib.LR_ENAN:
                self.tokens += arr.tolist()
        self._check(rc)
        if self.hp.n_vocab > 1 and (out.max(axis=-1) == out.min(axis=-1)).any():
            raise NumericsError(f"{self.file.path}: every logit is equal (degenerate activations)")
        return out

    def eval_prompt(self, tokens: list[int]) -> tuple[np.ndarray, int]:
        """Logits after `tokens` and how many tokens were evaluated: the longest cached prefix is
        re-used. The last token always runs alone through the decode step, so the logits do not
        depend on how much of the prompt was cached (batched and single-token sums round
        differently, and a Top-K near-tie could then pick differently). An empty or too long prompt
        raises before the cache changes."""
        tokens = list(tokens)
        if not tokens:
            raise ValueError("the prompt must hold at least one token")
        if len(tokens) > self.n_ctx:
            raise ContextError(f"prompt of {len(tokens)} tokens exceeds n_ctx = {self.n_ctx}")
        with self._lock:
            common = 0
            for a, b in zip(self.tokens, tokens):
                if a != b:
                    break
                common += 1
            common = min(common, len(tokens) - 1)
            self.tokens = self.tokens[:common]
            new = tokens[common:]
            for i in range(0, len(new) - 1, PROMPT_CHUNK):   # chunks: Ctrl-C gets through between them
                self.eval(new[i:min(i + PROMPT_CHUNK, len(new) - 1)])
            return self.eval(new[-1:]), len(new)

    def bytes_per_token(self) -> float:
        """Weight bytes one decode step reads at the current sparsity (nominal for thresholds)."""
        return self.file.bytes_per_token(self.sparsity)

    def rows_read(self, reset: bool = False) -> tuple[dict[str, float], int]:
        """Inputs actually read per token since the last reset, per block input (summed over
        layers), and the tokens evaluated."""
        rows, _, n = self._reads(reset)
        return rows, n

    def _reads(self, reset: bool) -> tuple[dict[str, float], dict[str, float], int]:
        """(rows, groups of 32 inputs touched) per token and block input, summed over layers; tokens"""
        out = ffi.new("uint64_t[9]")
        with self._lock:
            self._check(self._api.rows_read(self._m, out, int(reset)))
        n = int(out[4])
        per_token = lambda o: {b: (out[o + i] / n if n else 0.0) for i, b in enumerate(F.BLOCK_INPUTS)}
        return per_token(0), per_token(5), n

    def bytes_read_per_token(self, reset: bool = False) -> float:
        """Weight bytes a token really read since the last reset (nan before any token): the
        selected rows' codes plus, for input-major Q8_0 / Q4_0 weights, the whole scale table of
        every group of 32 inputs touched, which a sparse step reads in full (bytes_per_token counts
        a row's 1/32 share of its group's scales: at 40 % of the rows of a Q4_0 weight that is
        ~15 % below what is read)."""
        rows, groups, n = self._reads(reset)
        if not n:
            return float("nan")
        if self.device == "gpu":   # the GPU step counts rows, not groups: the rows' 1/32 scale shares
            L = self.hp.n_layers
            return F.bytes_per_token(self.hp, self.file.shapes_types(), {b: [rows[b] / L] * L for b in F.BLOCK_INPUTS})
        return self.file.bytes_read(rows, groups)

    def skipped_fraction(self, reset: bool = False) -> float:
        """Fraction of the block weights' bytes (q/k/v, o, gate/up, down) that Top-K or thresholds
        skipped per token, measured since the last reset (nan before any token)."""
        rows, n = self.rows_read(reset)
        if n == 0:
            return float("nan")
        cost = self.file.row_bytes()   # rows[b] sums the layers: its mean k times each layer's row
        read = sum(rows[b] / self.hp.n_layers * c for b in F.BLOCK_INPUTS for c in cost[b])
        dense = sum(self.hp.block_input_width(b) * c for b in F.BLOCK_INPUTS for c in cost[b])
        return 1.0 - read / dense

    def __repr__(self) -> str:
        return (f"Model({os.path.basename(self.file.path)!r}, sparsity={self.sparsity}, "
                f"n_threads={self.n_threads}, n_ctx={self.n_ctx}{', budget=True' if self.budget else ''}"
                f"{', topk=True' if self.topk else ''}{', scores=False' if not self.scores else ''}"
                f"{', device=' + repr(self.device) if self.device != 'cpu' else ''})")

    def generate_tokens(self, prompt: list[int], max_tokens: int = 128, sampling: Sampling | None = None):
        """Yields generated token ids after the prompt (see generate.generate_tokens)."""
        return generate_tokens(self, prompt, max_tokens, sampling or Sampling())

    def generate(self, prompt: str | list[int], max_tokens: int = 128, stop: list[str] | None = None,
                 **sampling) -> Iterator[str]:
        """Streams generated text (UTF-8 safe) after prompt; sampling: temperature, top_k, top_p,
        min_p, repeat_penalty, seed (generate.Sampling). Ends at an end-of-generation token, a stop
        string (not included), max_tokens, or a full context."""
        return generate_text(self, prompt, max_tokens, stop or [], Sampling(**sampling))


    def create_chat_completion(self, messages, **kwargs):
        """llama-cpp-python's method form of chat.create_chat_completion (same arguments)."""
        from .chat import create_chat_completion   # chat imports this module
        return create_chat_completion(self, messages, **kwargs)

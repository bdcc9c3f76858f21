"""Calibration tokens: from a text file, or sampled from the model itself when no file is given."""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass

import numpy as np

from larosa.runtime.errors import LarosaError
from larosa.runtime.tokenizer import Tokenizer

MIN_TOKENS = 64
HELDOUT_TOKENS = 1024   # --method auto scores its candidates on this many tokens after the calibration ones
HELDOUT_MIN = 16        # fewer held-out tokens than this: none


@dataclass
class Calibration:
    tokens: np.ndarray   # [n_windows, window] int32
    source: str          # "file:<name>" or "self-generated:seed=<n>"
    sha256: str          # of the calibration file's bytes ("" when self-generated)
    heldout: np.ndarray | None = None   # [n_windows, window] int32: text not calibrated on (--method auto)

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.size)


def _windows(ids: list[int], n_tokens: int, window: int, bos: int | None) -> np.ndarray:
    """Cuts the first n_tokens ids into whole windows; each window starts with BOS if the model uses one."""
    n_tokens = min(n_tokens, len(ids))
    window = min(window, n_tokens)
    n_win = n_tokens // window
    out = np.asarray(ids[: n_win * window], dtype=np.int32).reshape(n_win, window)
    if bos is not None:
        out[:, 0] = bos
    return out


def from_file(model_path: str, calib_path: str, n_tokens: int, window: int, heldout: int = 0) -> Calibration:
    """Tokenizes (with llama.cpp, as the model does) just enough of the file for n_tokens, and up to
    `heldout` more that follow them (one window of at most `window`, when the file has them)."""
    if not os.path.isfile(calib_path):
        raise LarosaError(f"{calib_path}: calibration file not found")
    with open(calib_path, "rb") as f:
        data = f.read()
    tok = Tokenizer(model_path)
    n_bytes = 16 * (n_tokens + heldout)
    while True:  # tokenize a prefix, growing it until it holds enough tokens
        chunk = data[:n_bytes]
        ids = tok.encode(chunk.decode("utf-8", errors="ignore"), add_bos=False)
        if len(ids) >= n_tokens + heldout or n_bytes >= len(data):
            break
        n_bytes *= 2
    if len(ids) < MIN_TOKENS:
        raise LarosaError(f"{calib_path}: only {len(ids)} tokens of text; at least {MIN_TOKENS} are needed")
    bos = tok.bos_id if tok.add_bos else None
    calib = _windows(ids, n_tokens, window, bos)
    rest = ids[calib.size:]
    held = _windows(rest, min(heldout, window), window, bos) if heldout and len(rest) >= HELDOUT_MIN else None
    return Calibration(calib, source=f"file:{os.path.basename(calib_path)}",
                       sha256=hashlib.sha256(data).hexdigest(), heldout=held)


def self_generated(model_path: str, n_tokens: int, window: int, seed: int = 0,
                   n_threads: int | None = None, progress: bool = True, heldout: int = 0) -> Calibration:
    """Data-free calibration: text sampled (temperature 1, top-p 0.95) from the source model with
    llama.cpp, each window started from a random token. Costs one dense generation of n_tokens
    (and of one more window of min(heldout, window) tokens, held out, when heldout > 0)."""
    from llama_cpp import Llama
    from tqdm import tqdm

    tok = Tokenizer(model_path)
    window = min(window, n_tokens)
    n_win = max(1, n_tokens // window)
    held = min(heldout, window)
    llm = Llama(model_path, n_ctx=window + 1, n_threads=n_threads or os.cpu_count(), seed=seed, verbose=False)
    rng = random.Random(seed)
    rows = []
    bar = tqdm(total=n_win * window + held, desc="calibration text (sampled)", unit="tok", disable=not progress)
    for size in [window] * n_win + ([held] if held >= HELDOUT_MIN else []):
        ids = [tok.bos_id] if tok.add_bos else []
        ids.append(rng.randrange(tok.n_vocab))
        while len(ids) < size:
            for t in llm.generate(ids, temp=1.0, top_k=0, top_p=0.95, min_p=0.0, reset=True):
                if tok.is_eog(t):
                    ids.append(rng.randrange(tok.n_vocab))  # restart the text from a fresh token
                    break
                ids.append(t)
                bar.update(1)
                if len(ids) >= size:
                    break
        rows.append(ids[:size])
    bar.close()
    del llm
    return Calibration(np.asarray(rows[:n_win], dtype=np.int32), source=f"self-generated:seed={seed}", sha256="",
                       heldout=np.asarray(rows[n_win:], dtype=np.int32) if len(rows) > n_win else None)

"""The README's main job: fetch SmolLM2-135M, convert it at 40% sparsity (once; cached), generate
text from a prompt through the C runtime, and print prompt and decode tokens/s."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from larosa.converter.cli import DEFAULT_METHOD
from larosa.converter.cli import main as convert_main
from larosa.tools.fetch_model import cache_dir, fetch_smollm2

PROMPT = "The three most important inventions of the twentieth century are"
SHARED_CALIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "calibration" / "wikitext2_raw_train_first1MB.txt"


def main() -> int:
    from larosa.runtime.errors import LarosaError
    from larosa.runtime.model import Model

    from larosa.runtime.loader import load

    src = fetch_smollm2()
    out = cache_dir() / "models" / "SmolLM2-135M-Instruct.larosa-q8_0.gguf"
    try:   # a file cached by an older larosa, or another method than the default: convert again
        fresh = out.exists() and load(out).method == DEFAULT_METHOD
    except LarosaError:
        fresh = False
    if not fresh:
        args = [str(src), "-o", str(out), "--sparsity", "0.4", "--type", "q8_0", "--force"]
        if SHARED_CALIB.exists():   # the project's machines; elsewhere text sampled from the model
            args += ["--calib", str(SHARED_CALIB)]
        if convert_main(args) != 0:
            return 1
    threads = min(os.cpu_count() or 1, 4)
    try:
        m = Model(out, n_threads=threads)
        print(f"\n{out.name}: sparsity {m.sparsity:g}, {threads} threads, "
              f"{m.bytes_per_token() / 2**20:.1f} MiB of weights read per token\n")
        sys.stdout.write(PROMPT)
        for piece in m.generate(PROMPT, max_tokens=96, temperature=0):
            sys.stdout.write(piece)
            sys.stdout.flush()
        t = m.timings
        print(f"\n\nprompt: {t.prompt_tokens} tokens at {t.prompt_tps:.1f} tok/s; "
              f"decode: {t.decode_tokens} tokens at {t.decode_tps:.1f} tok/s")
    except LarosaError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

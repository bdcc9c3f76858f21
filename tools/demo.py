"""The README's main job: fetch SmolLM2, convert it at 40% sparsity, show the result."""
from __future__ import annotations

import os
import sys

from larosa.converter.cli import main as convert_main
from larosa.tools.fetch_model import cache_dir, fetch_smollm2

SHARED_CALIB = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "calibration",
                            "wikitext2_raw_train_first1MB.txt")


def main() -> int:
    src = fetch_smollm2()
    out = cache_dir() / "models" / "SmolLM2-135M-Instruct.larosa-q8_0.gguf"
    if not out.exists():
        args = [str(src), "-o", str(out), "--sparsity", "0.4", "--type", "q8_0"]
        if os.path.exists(SHARED_CALIB):   # the project's machines; elsewhere: self-generated text
            args += ["--calib", os.path.abspath(SHARED_CALIB)]
        if convert_main(args) != 0:
            return 1
    print(f"converted model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

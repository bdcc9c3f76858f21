"""Decode tok/s and GPU time per kernel of LaRoSA files on the GPU for kernel variants side by side in
one process (one device open, each variant a fresh Model): the before / after runs of BENCHMARKS.md's
"GPU decode" section.

    python tools/gpu_variants.py FILE [FILE ...]

A variant: the selection kernel (select_sg.wgsl with subgroups, or select.wgsl), the Q8_0 / Q4_0
matvec (mv_q8p / mv_q4p prefetching, or mv_q8 / mv_q4), LAROSA_GPU_MIN_WG (gpu.c's mv_rows)
and LAROSA_GPU_ROWS (selected rows per matvec workgroup).
Each (variant, sparsity): a 32-token prompt, 40 greedy tokens one at a time, the median of the last
32 wall times around Model.eval; then 8 tokens with per-dispatch timestamps (each dispatch in its
own pass) for the GPU ms per kernel.
"""
import os
import sys
import time

import numpy as np

KERNELS = ("select", "mv_q8", "mv_q4", "mv_f16", "mv_f32", "red_store", "red_add", "red_swiglu",
           "attend", "head_prep", "head_q8", "head_q4", "head_f16", "head_f32", "mv_q8p", "mv_q4p",
           "mv_q8d", "mv_q4d", "select1")   # gpu.h's order
GROUPS = {"select": ("select", "select1"), "matvec": ("mv_q8", "mv_q4", "mv_f16", "mv_f32", "mv_q8p", "mv_q4p", "mv_q8d", "mv_q4d"),
          "reduce": ("red_store", "red_add", "red_swiglu"), "attend": ("attend",),
          "head": ("head_prep", "head_q8", "head_q4", "head_f16", "head_f32")}
# name: (subgroup selection, pipelined matvec, min workgroups, rows per workgroup); "before": the
# kernels of 4ee0911 (BENCHMARKS.md's first GPU run), "after": the defaults since 2026-12-01
# "now": the matvecs with integer dots (mv_q8d / mv_q4d, the default since 2026-12-01 05:30; "after"
# keeps mv_q8p / mv_q4p); "noprep": the step's commands encoded before each submit
# (LAROSA_GPU_PREENCODE=0), not while the previous token runs
# "wg132" / "wg0": the matvecs' workgroup aim (gpu.c's mv_rows) at 132 and off (256 rows a chunk)
VARIANTS = {"before": (0, 0, 0, 256), "sg": (1, 0, 0, 256), "after": (1, 1, 264, 256), "now": (1, 2, 264, 256),
            "noprep": (1, 2, 264, 256), "wg132": (1, 2, 132, 256), "wg0": (1, 2, 0, 256)}
ENV = {"noprep": {"LAROSA_GPU_PREENCODE": "0"}}


def run(path: str, names, sparsities=(0.0, 0.4, 0.5)) -> None:
    from larosa._kernels import ffi, lib
    from larosa.runtime import gpu
    from larosa.runtime.model import Model
    d = gpu.device()
    for name in names:
        sg, pipe, wg, rows = VARIANTS[name]
        if lib.lr_gpu_use_subgroups(d._g, sg) != 0:
            print(f"{name}: no subgroups on this adapter, skipped", flush=True)
            continue
        lib.lr_gpu_use_pipelined_matvec(d._g, pipe)
        os.environ["LAROSA_GPU_MIN_WG"] = str(wg)
        os.environ["LAROSA_GPU_ROWS"] = str(rows)
        os.environ["LAROSA_GPU_PREENCODE"] = ENV.get(name, {}).get("LAROSA_GPU_PREENCODE", "1")
        t0 = time.perf_counter()
        m = Model(path, sparsity=0.0, n_ctx=256, device="gpu")
        load = time.perf_counter() - t0
        for s in sparsities:
            m.set_sparsity(s)
            m.reset()
            logits = m.eval(list(range(1, 33)))
            out = ffi.new("double[]", len(KERNELS) + 2)
            lib.lr_gpu_model_profile(m._m, out, 0, 0)   # resets the host times
            times = []
            for _ in range(40):
                tok = int(np.argmax(logits))
                t0 = time.perf_counter()
                logits = m.eval([tok])
                times.append(time.perf_counter() - t0)
            dt = float(np.median(times[8:]))
            bpt = m.bytes_per_token()
            line = (f"{os.path.basename(path)} {name} s {s}: {1 / dt:.1f} tok/s ({dt * 1e3:.2f} ms), "
                    f"{bpt / 2**20:.0f} MiB/token, {bpt / dt / 1e9:.0f} GB/s; load {load:.1f} s")
            lib.lr_gpu_model_profile(m._m, out, len(KERNELS) + 2, 0)
            line += (f"; host ms/token: encoding {out[len(KERNELS)] / 1e6 / len(times):.2f}, "
                     f"waiting {out[len(KERNELS) + 1] / 1e6 / len(times):.2f}")
            if lib.lr_gpu_model_profile(m._m, out, len(KERNELS), 1) >= 0:
                for _ in range(8):
                    logits = m.eval([int(np.argmax(logits))])
                n = max(lib.lr_gpu_model_profile(m._m, out, len(KERNELS), 0), 1)
                ms = {k: out[i] / 1e6 / n for i, k in enumerate(KERNELS)}
                parts = {g: sum(ms[k] for k in ks) for g, ks in GROUPS.items()}
                line += "\n  GPU ms/token: total %.2f; " % sum(parts.values()) + \
                        ", ".join(f"{g} {v:.2f}" for g, v in parts.items())
            print(line, flush=True)
        del m


if __name__ == "__main__":
    names = os.environ.get("VARIANTS", ",".join(VARIANTS)).split(",")
    for p in sys.argv[1:]:
        run(p, names)

"""Decode tok/s of a LaRoSA file on the GPU per matvec chunk size (LAROSA_GPU_ROWS) and sparsity, with
the device's copy bandwidth: the tuning run behind the GPU section of BENCHMARKS.md.

    python tools/gpu_probe.py llama2-7b.larosa-q4_0.gguf [rows,rows,...]
"""
import os
import sys
import time

import numpy as np


KERNELS = ("select", "mv_q8", "mv_q4", "mv_f16", "mv_f32", "red_store", "red_add", "red_swiglu",
           "attend", "head_prep", "head_q8", "head_q4", "head_f16", "head_f32", "mv_q8p", "mv_q4p",
           "mv_q8d", "mv_q4d", "select1")   # gpu.h's order


def main() -> None:
    path = sys.argv[1]
    rows = [int(r) for r in (sys.argv[2] if len(sys.argv) > 2 else "256,128,512").split(",")]
    from larosa._kernels import ffi, lib
    from larosa.runtime import gpu
    from larosa.runtime.model import Model
    d = gpu.device()
    print(f"device: {d.info}; copy bandwidth (read + written): "
          f"{lib.lr_gpu_copy_bandwidth(d._g, 1 << 30, 5) / 1e9:.0f} GB/s", flush=True)
    for r in rows:
        os.environ["LAROSA_GPU_ROWS"] = str(r)
        t0 = time.perf_counter()
        m = Model(path, sparsity=0.0, n_ctx=256, device="gpu")
        load = time.perf_counter() - t0
        mib = lib.lr_gpu_model_bytes(m._m) / 2**20
        for s in (0.0, 0.4, 0.5):
            m.set_sparsity(s)
            logits = m.eval(list(range(1, 33)))   # a 32-token prompt, then greedy decode
            times = []
            for _ in range(40):
                tok = int(np.argmax(logits))
                t0 = time.perf_counter()
                logits = m.eval([tok])
                times.append(time.perf_counter() - t0)
            dt = float(np.median(times[8:]))
            bpt = m.bytes_per_token()
            print(f"rows {r} s {s}: {1 / dt:.1f} tok/s ({dt * 1e3:.2f} ms), {bpt / 2**20:.0f} MiB/token, "
                  f"{bpt / dt / 1e9:.0f} GB/s; load {load:.1f} s, {mib:.0f} MiB on the device", flush=True)
            if r == rows[0]:   # GPU time per kernel (timestamps: each dispatch in its own pass)
                out = ffi.new("double[]", len(KERNELS))
                if lib.lr_gpu_model_profile(m._m, out, len(KERNELS), 1) >= 0:
                    for _ in range(8):
                        logits = m.eval([int(np.argmax(logits))])
                    n = lib.lr_gpu_model_profile(m._m, out, len(KERNELS), 0)
                    parts = {k: out[i] / 1e6 / max(n, 1) for i, k in enumerate(KERNELS) if out[i] > 0}
                    print("  GPU ms/token: total %.2f; " % sum(parts.values()) +
                          ", ".join(f"{k} {v:.3f}" for k, v in parts.items()), flush=True)
        del m


if __name__ == "__main__":
    main()

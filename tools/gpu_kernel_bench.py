"""GPU time of one selection kernel per dispatch, for WGSL variants side by side: each case's kernel
dispatched 200 times in one compute pass (as the decode step records them: dependent dispatches,
wgpu's barriers between), timed by timestamps at the pass's ends. For tuning select_sg.wgsl on the
H200 without a model (BENCHMARKS.md's GPU section).

    python tools/gpu_kernel_bench.py VARIANT.wgsl [VARIANT.wgsl ...]

Cases: (n, mode, k, norm, quant), the 7B shape's selections: 4096 (attn_in, mlp_in: normed;
attn_out) and 11008 (mlp_out), dense (mode 3) and Top-K (mode 0) at s = 0.4.
"""
import os
import sys

import numpy as np
import wgpu

CASES = [(4096, 3, 0, 1, 1), (4096, 3, 0, 0, 1), (11008, 3, 0, 0, 1), (4096, 0, 2458, 1, 1), (4096, 0, 2458, 0, 1),
         (11008, 0, 6605, 0, 1)]
REPS = int(os.environ.get("REPS", 200))


def main() -> None:
    ad = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    dev = ad.request_device_sync(required_features=["timestamp-query", "subgroup"],
                                 required_limits={"max-compute-workgroup-storage-size": 32768})
    print(ad.info["device"], ad.info["backend_type"], flush=True)
    kinds = "urrrwww"
    entries = [{"binding": i, "visibility": wgpu.ShaderStage.COMPUTE,
                "buffer": {"type": "uniform" if c == "u" else "read-only-storage" if c == "r" else "storage"}}
               for i, c in enumerate(kinds)]
    bgl = dev.create_bind_group_layout(entries=entries)
    pl = dev.create_pipeline_layout(bind_group_layouts=[bgl])
    rng = np.random.default_rng(1)
    qs = dev.create_query_set(type="timestamp", count=2)
    qb = dev.create_buffer(size=16, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
    for path in sys.argv[1:]:
        mod = dev.create_shader_module(code=open(path).read())
        pipe = dev.create_compute_pipeline(layout=pl, compute={"module": mod, "entry_point": "main"})
        for n, mode, k, norm, quant in CASES:
            p = np.zeros(16, np.uint32)
            p[:8] = [n, mode, k, quant, norm, 0, 0, 4]
            p[8:10] = np.array([-1.0, 1e-5], np.float32).view(np.uint32)
            x = (rng.standard_normal(n) * 0.5).astype(np.float32)
            bufs = [dev.create_buffer_with_data(data=p.tobytes() + bytes(192), usage=wgpu.BufferUsage.UNIFORM),
                    dev.create_buffer_with_data(data=x.tobytes(), usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC),
                    dev.create_buffer(size=16, usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC),
                    dev.create_buffer(size=16, usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC),
                    dev.create_buffer(size=(4 + 2 * n + n // 32) * 4, usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC),
                    dev.create_buffer(size=32, usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC),
                    dev.create_buffer(size=n * 4, usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC)]
            bg = dev.create_bind_group(layout=bgl, entries=[{"binding": i, "resource": {"buffer": b}}
                                                            for i, b in enumerate(bufs)])
            best = 1e9
            for rep in range(4):
                enc = dev.create_command_encoder()
                cp = enc.begin_compute_pass(timestamp_writes={"query_set": qs, "beginning_of_pass_write_index": 0,
                                                              "end_of_pass_write_index": 1})
                cp.set_pipeline(pipe)
                for _ in range(REPS):
                    cp.set_bind_group(0, bg)
                    cp.dispatch_workgroups(1, 1, 1)
                cp.end()
                enc.resolve_query_set(qs, 0, 2, qb, 0)
                dev.queue.submit([enc.finish()])
                t = np.frombuffer(dev.queue.read_buffer(qb), np.uint64)
                if rep:
                    best = min(best, (int(t[1]) - int(t[0])) / REPS / 1e3)
            sel = np.frombuffer(dev.queue.read_buffer(bufs[4]), np.uint32)
            print(f"{os.path.basename(path)} n {n} mode {mode} k {k} norm {norm} quant {quant}: "
                  f"{best:.2f} us/dispatch (count {sel[0]})", flush=True)


if __name__ == "__main__":
    main()

"""GPU time of one kernel per dispatch, for WGSL variants side by side: each case's kernel
dispatched 200 times in one compute pass (as the decode step records them: dependent dispatches,
wgpu's barriers between), timed by timestamps at the pass's ends. For tuning the kernels on the
H200 without a model (BENCHMARKS.md's GPU section).

    python tools/gpu_kernel_bench.py VARIANT.wgsl [VARIANT.wgsl ...]       selection (select_sg.wgsl's entry)
    python tools/gpu_kernel_bench.py --mv ENTRY[:R] ... -- MATVEC.wgsl REDUCE.wgsl
        a matvec entry point (mv_q4p, mv_q8p, ...; R: selected rows per workgroup, else gpu.c's rule)
        and red_store on the 7B shape's matrices at 60 % and 100 % of the rows

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
        src = open(path).read()
        mod = dev.create_shader_module(code=src)
        pipe = dev.create_compute_pipeline(layout=pl, compute={"module": mod, "entry_point": "main"})
        pipe1 = pipe   # select_sg's n <= 4096 pipeline (gpu_device.c), where the source has it
        if "override ONE" in src:
            pipe1 = dev.create_compute_pipeline(layout=pl, compute={"module": mod, "entry_point": "main",
                                                                    "constants": {"ONE": 1}})
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
                cp.set_pipeline(pipe1 if n <= 4096 else pipe)
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


def bench_pass(dev, qs, qb, items, reps):
    """[(pipeline, bind group, x, y)] dispatched in turn, reps times in one pass: us per round"""
    best = 1e9
    for rep in range(4):
        enc = dev.create_command_encoder()
        cp = enc.begin_compute_pass(timestamp_writes={"query_set": qs, "beginning_of_pass_write_index": 0,
                                                      "end_of_pass_write_index": 1})
        for _ in range(reps):
            for pipe, bg, x, y in items:
                cp.set_pipeline(pipe)
                cp.set_bind_group(0, bg)
                cp.dispatch_workgroups(x, y, 1)
        cp.end()
        enc.resolve_query_set(qs, 0, 2, qb, 0)
        dev.queue.submit([enc.finish()])
        t = np.frombuffer(dev.queue.read_buffer(qb), np.uint64)
        if rep:
            best = min(best, (int(t[1]) - int(t[0])) / reps / 1e3)
    return best


MV_SHAPES = [("wqkv", 4096, 12288), ("wo", 4096, 4096), ("wgu", 4096, 22016), ("wdown", 11008, 4096)]


def mv_main(entries, mv_path, red_path) -> None:
    ad = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    lim = ad.limits
    dev = ad.request_device_sync(required_features=["timestamp-query", "subgroup"], required_limits={
        "max-storage-buffer-binding-size": lim["max-storage-buffer-binding-size"],
        "max-buffer-size": lim["max-buffer-size"]})
    print(ad.info["device"], ad.info["backend_type"], flush=True)
    S = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC

    def layout(kinds):
        e = [{"binding": i, "visibility": wgpu.ShaderStage.COMPUTE,
              "buffer": {"type": "uniform" if c == "u" else "read-only-storage" if c == "r" else "storage"}}
             for i, c in enumerate(kinds)]
        bgl = dev.create_bind_group_layout(entries=e)
        return bgl, dev.create_pipeline_layout(bind_group_layouts=[bgl])
    mvl, mvpl = layout("urrrw")
    rdl, rdpl = layout("urrrww")
    mv_mod = dev.create_shader_module(code=open(mv_path).read())
    red = dev.create_compute_pipeline(layout=rdpl, compute={"module": dev.create_shader_module(code=open(red_path).read()),
                                                              "entry_point": "red_store"})
    qs = dev.create_query_set(type="timestamp", count=2)
    qb = dev.create_buffer(size=16, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
    rng = np.random.default_rng(2)
    bind = lambda bgl, bufs: dev.create_bind_group(layout=bgl, entries=[
        {"binding": i, "resource": {"buffer": b}} for i, b in enumerate(bufs)])
    for name, rows, cols in MV_SHAPES:
        q4 = any(e.startswith("mv_q4") for e in entries)
        codes = rng.integers(0, 256, rows * cols // (2 if q4 else 1), dtype=np.uint8)
        w = dev.create_buffer_with_data(data=codes.tobytes(), usage=S)
        sc = dev.create_buffer_with_data(data=rng.uniform(2e-4, 4e-4, rows // 32 * cols).astype(np.float16).tobytes(), usage=S)
        for frac in (0.6, 1.0):
            k = int(rows * frac)
            idx = np.sort(rng.choice(rows, k, replace=False)).astype(np.uint32)
            sel = np.zeros(4 + 2 * rows + rows // 32, np.uint32)
            sel[0] = k
            sel[4:4 + k] = idx
            sel[4 + rows:4 + rows + k] = rng.integers(-127, 128, k).astype(np.float32).view(np.uint32)
            sel[4 + 2 * rows:] = np.full(rows // 32, 0.01, np.float32).view(np.uint32)
            selb = dev.create_buffer_with_data(data=sel.tobytes(), usage=S)
            for ent in entries:
                e, _, r = ent.partition(":")
                tiles = (cols + 1023) // 1024
                R = int(r) if r else 256
                if not r:
                    while R >= 64 and tiles * ((rows + R - 1) // R) < 264:
                        R = R // 8 * 4
                chunks = (rows + R - 1) // R
                part = dev.create_buffer(size=chunks * cols * 4, usage=S)
                out = dev.create_buffer(size=cols * 4, usage=S)
                dummy, dummy_w = dev.create_buffer(size=16, usage=S), dev.create_buffer(size=16, usage=S)
                mp = dev.create_buffer_with_data(data=np.array([rows, cols, R, 0], np.uint32).tobytes() + bytes(240),
                                                 usage=wgpu.BufferUsage.UNIFORM)
                rp = dev.create_buffer_with_data(data=np.array([cols, R, 0, cols // 2], np.uint32).tobytes() + bytes(240),
                                                 usage=wgpu.BufferUsage.UNIFORM)
                pipe = dev.create_compute_pipeline(layout=mvpl, compute={"module": mv_mod, "entry_point": e})
                mv = (pipe, bind(mvl, [mp, selb, w, sc, part]), tiles, chunks)
                rd = (red, bind(rdl, [rp, selb, part, dummy, out, dummy_w]), (cols + 31) // 32, 1)
                t_mv = bench_pass(dev, qs, qb, [mv], 100)
                t_both = bench_pass(dev, qs, qb, [mv, rd], 100)
                mb = k * cols * (0.5 if q4 else 1.0) / 1e6
                y = np.frombuffer(dev.queue.read_buffer(out), np.float32)
                ref = y if ent == entries[0] else ref
                err = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
                print(f"{name} {rows}x{cols} {frac:.1f} {ent} R {R} wg {tiles * ((k + R - 1) // R)}: "
                      f"matvec {t_mv:.2f} us ({mb / t_mv:.2f} TB/s), + reduce {t_both - t_mv:.2f} us; "
                      f"max rel. diff from {entries[0]} {err:.1e}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--mv":
        cut = sys.argv.index("--")
        mv_main(sys.argv[2:cut], *sys.argv[cut + 1:cut + 3])
    else:
        main()

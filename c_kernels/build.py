"""cffi build of the C library into the extension module larosa._kernels (run at install time).

Flags: -O3 -march=native by default (the host's SIMD, like llama.cpp's native build). The AVX2,
AVX-512 and NEON kernels carry their own target attributes and are chosen at run time, so
LAROSA_CFLAGS="-O3" gives a portable build that still uses them. The scalar kernels are always
compiled and selectable (LAROSA_SIMD=scalar or larosa_set_simd).
"""
import os
import platform
import shlex
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["kernels.c", "topk.c", "qmatvec.c", "qmatvec_x86.c", "qmatvec_neon.c", "simd_x86.c", "simd_neon.c", "threads.c", "forward.c", "prefill.c", "membw.c",
           "gpu_device.c", "gpu.c", "gpu_test.c"]   # gpu*: the WebGPU path (gpu.h)


def _cdef() -> str:
    header = (HERE / "larosa.h").read_text() + (HERE / "gpu.h").read_text()
    return "\n".join(line for line in header.splitlines() if not line.lstrip().startswith("#"))


def _cflags() -> list[str]:
    if "LAROSA_CFLAGS" in os.environ:
        return shlex.split(os.environ["LAROSA_CFLAGS"])
    flags = ["-O3", "-std=c11", "-D_GNU_SOURCE", "-fopenmp-simd", "-Wall", "-Wno-unused-function"]
    if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
        flags.append("-march=native" if platform.machine().lower() in ("x86_64", "amd64") else "-mcpu=native")
    return flags


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "larosa._kernels",
    '#include "larosa.h"\n#include "gpu.h"',
    sources=[os.path.relpath(HERE / s) for s in SOURCES],   # setuptools wants relative paths
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=_cflags() + ["-pthread"],
    extra_link_args=["-pthread", "-lm", "-ldl"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

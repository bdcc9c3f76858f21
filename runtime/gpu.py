"""The GPU device of Model(device="gpu"): wgpu-native (Vulkan, Metal, DX12) opened once per process.

wgpu-native comes from the optional `wgpu` package (pip install "larosa[gpu]"), which ships the
library and the headers the C side was built against (c_kernels/webgpu/, wgpu 0.32 = wgpu-native
29). Nothing here imports `wgpu` itself: the library is found in its folder and loaded by the C
library (lr_gpu_open, c_kernels/gpu_device.c). The WGSL kernels are c_kernels/shaders/*.wgsl.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import threading
from pathlib import Path

from larosa._kernels import ffi, lib

from .errors import LarosaError

INSTALL_HINT = 'pip install "larosa[gpu]"'


class GPUUnavailable(LarosaError):
    """No usable GPU: wgpu not installed, no adapter, or the device failed to open."""


def _shader_dir() -> Path:
    here = Path(__file__).resolve().parent
    for d in (here.parent / "shaders", here.parent / "c_kernels" / "shaders"):
        if (d / "select.wgsl").is_file():
            return d
    import larosa
    return Path(larosa.__file__).resolve().parent / "shaders"


def wgpu_library() -> str:
    """Path of the wgpu-native library inside the installed `wgpu` package (LAROSA_WGPU_LIB
    overrides); GPUUnavailable when it is missing, saying how to install it."""
    env = os.environ.get("LAROSA_WGPU_LIB")
    if env:
        if not os.path.isfile(env):
            raise GPUUnavailable(f"LAROSA_WGPU_LIB={env}: no such file")
        return env
    spec = importlib.util.find_spec("wgpu")
    if spec is None or not spec.submodule_search_locations:
        raise GPUUnavailable(f"--device gpu needs the wgpu package (wgpu-native), which is not installed: "
                             f"{INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        hits = sorted(glob.glob(os.path.join(folder, "resources", "*wgpu_native*")))
        hits = [h for h in hits if h.endswith((".so", ".dylib", ".dll"))]
        if hits:
            return hits[0]
    raise GPUUnavailable(f"the wgpu package has no wgpu-native library in its resources folder; reinstall it: "
                         f"{INSTALL_HINT}")


class Device:
    """An open WebGPU device (lr_gpu): its adapter's description in .info."""

    def __init__(self):
        path = wgpu_library()
        err = ffi.new("char[]", 1024)
        ptr = lib.lr_gpu_open(path.encode(), str(_shader_dir()).encode(), err, 1024)
        if ptr == ffi.NULL:
            raise GPUUnavailable(f"GPU: {ffi.string(err).decode(errors='replace')}")
        self._g = ffi.gc(ptr, lib.lr_gpu_close)
        out = ffi.new("char[]", 512)
        lib.lr_gpu_adapter_info(self._g, out, 512)
        self.info = ffi.string(out).decode(errors="replace")
        self.max_binding = int(lib.lr_gpu_max_binding(self._g))

    def error(self) -> str:
        out = ffi.new("char[]", 1024)
        lib.lr_gpu_error(self._g, out, 1024)
        return ffi.string(out).decode(errors="replace")


_device: Device | None = None
_device_error: GPUUnavailable | None = None
_lock = threading.Lock()


def device() -> Device:
    """The process's GPU device, opened on first use (GPUUnavailable, remembered, when there is none)."""
    global _device, _device_error
    with _lock:
        if _device is None and _device_error is None:
            try:
                _device = Device()
            except GPUUnavailable as e:
                _device_error = e
        if _device is None:
            raise _device_error
        return _device


def available() -> bool:
    """True when a GPU device opens (wgpu installed and an adapter found)."""
    try:
        device()
        return True
    except GPUUnavailable:
        return False


# source architectures whose step the GPU path implements (llama's, with Qwen's biases and q/k norms);
# the others' features (post norms, GeGLU, windows, soft-caps, scales, RoPE-less layers) run on the CPU only
ARCHS = ("llama", "qwen2", "qwen3")


def resolve(dev: str) -> str:
    """"gpu", "cpu" or "auto" -> "gpu" or "cpu" ("auto": the GPU when one opens)."""
    if dev not in ("gpu", "cpu", "auto"):
        raise ValueError(f"device must be 'gpu', 'cpu' or 'auto', got {dev!r}")
    if dev == "auto":
        return "gpu" if available() else "cpu"
    if dev == "gpu":
        device()   # GPUUnavailable with the reason
    return dev

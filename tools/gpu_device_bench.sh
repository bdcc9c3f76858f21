#!/bin/bash
# The H200 timings of BENCHMARKS.md ("GPU decode"), on a machine with no network: everything comes
# in a payload folder P, made on a machine with one and copied over (as a tarball):
#   P/src      this checkout (larosa's sources)
#   P/whl      wheels for the machine's python3: cffi, pycparser, gguf, wgpu 0.32 (wgpu-native),
#              diskcache, setuptools, wheel
#   P/cpuwhl   llama-cpp-python's CPU wheel (its tokenizer for larosa until the CUDA build is there)
#   P/gl       Debian's libvulkan1 and glvnd .debs (the Vulkan loader for the NVIDIA driver's ICD)
#   P/lcp      llama-cpp-python 0.3.36's sources (llama.cpp vendored), trimmed to the CPU and CUDA backends
#   P/skel     gguf_skeleton stems of the 7B-shape pairs (tools/bench_models: llama2-7b q4_0, q8_0)
# Made with: git ls-files -co --exclude-standard | tar cf - -T - | tar xf - -C P/src;
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64
#     --platform manylinux_2_17_x86_64 -d P/whl cffi==2.1.1 wgpu==0.32.0 gguf==0.19.0 pycparser diskcache
#     setuptools==80.9.0 wheel;
#   apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 (in P/gl);
#   llama_cpp_python-0.3.36.tar.gz unpacked in P/lcp without vendor/llama.cpp/{models,docs,tests,examples,...}
#     and the ggml backends other than CPU and CUDA;
#   python -m larosa.tools.gguf_skeleton skeleton llama2-7b.TYPE.gguf P/skel/llama2-7b.TYPE (and larosa-TYPE).
# Usage: gpu_device_bench.sh P OUT PHASE, PHASE one of
#   setup   loaders, wheels, larosa built in place, llama-cpp-python with CUDA built in the background
#   probe   the adapter, the GPU kernel tests, the copy bandwidth, decode tok/s per matvec chunk size
#   bench   larosa-bench --device gpu on both pairs (llama.cpp on the GPU where its CUDA build finished)
#   variants  tools/gpu_variants.py (before / after kernels, GPU ms per kernel) on both LaRoSA files
set -u
P=$1 OUT=$2 PHASE=$3
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
M=/dev/shm/m
[ -d /dev/shm ] && [ "$(df -k --output=avail /dev/shm | tail -1)" -gt 30000000 ] || M=/tmp/m
mkdir -p "$M"

inflate() {   # the pair of type $1, made once per machine
    for f in llama2-7b.$1 llama2-7b.larosa-$1; do
        [ -f "$M/$f.gguf" ] || python3 -m larosa.tools.gguf_skeleton inflate "$P/skel/$f" "$M/$f.gguf"
    done
}

case "$PHASE" in
setup)
    for f in "$P"/gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$P"/whl/*.whl
    python3 -m pip install -q --no-index --no-deps --target /tmp/cpu_site "$P"/cpuwhl/*.whl
    (cd "$P/src" && python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .) || exit 1
    # llama.cpp for the GPU: llama-cpp-python's CUDA build, for sm_90 only (minutes on 16 cores)
    setsid nohup bash -c "cd $P/lcp && CMAKE_ARGS='-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF' \
        CMAKE_BUILD_PARALLEL_LEVEL=15 python3 -m pip install --no-deps --no-build-isolation --no-index \
        --target /tmp/lcp_site . > /tmp/llama_build.log 2>&1; echo \$? > /tmp/llama_build.rc" >/dev/null 2>&1 &
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
    ;;
probe)
    export PYTHONPATH=/tmp/site:/tmp/cpu_site
    python3 -c "from larosa.runtime import gpu; d = gpu.device(); print(d.info, d.max_binding)"
    (cd "$P/src" && timeout 120 python3 -m pytest -q -x tests/test_gpu.py -k "not smollm2 and not step" 2>&1 | tail -5)
    inflate q4_0
    # the copy bandwidth as PyTorch's CUDA copy reaches it (bytes read + written), for comparison
    PYTHONPATH= python3 -c "
import torch, time
a = torch.empty(1 << 30, dtype=torch.uint8, device='cuda'); b = torch.empty_like(a)
for i in range(3): b.copy_(a)
torch.cuda.synchronize(); t = time.perf_counter()
for i in range(20): b.copy_(a)
torch.cuda.synchronize(); print('torch device-to-device copy (read + written): %.0f GB/s' % (2 * 20 * a.numel() / (time.perf_counter() - t) / 1e9))"
    python3 "$P/src/tools/gpu_probe.py" "$M/llama2-7b.larosa-q4_0.gguf" ${ROWS:-256} 2>&1
    ;;
bench)
    for i in $(seq 1 60); do [ -f /tmp/llama_build.rc ] && break; sleep 5; done   # the CUDA build of setup
    if [ -f /tmp/llama_build.rc ] && [ "$(cat /tmp/llama_build.rc)" = 0 ]; then
        export PYTHONPATH=/tmp/lcp_site:/tmp/site
    else
        echo "llama-cpp-python CUDA build: not finished or failed; tail of its log:"; tail -20 /tmp/llama_build.log
        export PYTHONPATH=/tmp/site:/tmp/cpu_site
    fi
    for t in q4_0 q8_0; do
        inflate $t
        python3 -m larosa.tools.bench -m "$M/llama2-7b.$t.gguf" -M "$M/llama2-7b.larosa-$t.gguf" --device gpu \
            --sparsity 0,0.4,0.5 -t 1 -n 64 -p 128 --rounds 3 --json 2>&1 | tee "$OUT/bench-$t.txt"
    done
    ;;
variants)
    export PYTHONPATH=/tmp/site:/tmp/cpu_site
    inflate q4_0; inflate q8_0
    python3 "$P/src/tools/gpu_variants.py" "$M/llama2-7b.larosa-q4_0.gguf" "$M/llama2-7b.larosa-q8_0.gguf" 2>&1 \
        | tee "$OUT/variants.txt"
    ;;
esac

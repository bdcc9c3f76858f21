#!/bin/bash
# One device session of BENCHMARKS.md's "GPU decode" (2026-12-01 09:35 UTC, gpu-3): larosa trees side by
# side (tools/gpu_variants.py, alternating rounds), the selection kernel bench, the GPU tests on that GPU,
# then llama.cpp's CUDA build (llama-bench, built after the timings) on the same 7B-shape files.
# Everything comes in a payload folder P carried into the checkout (no network there):
#   P/gl/*.deb      libvulkan1 and glvnd (apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1
#                   libglx0 libgles2)
#   P/whl           wheels for the machine's python3.12: cffi, pycparser, gguf 0.19, wgpu 0.32, rendercanvas,
#                   diskcache (pip download --no-deps --only-binary=:all: --python-version 3.12 ...)
#   P/llama_cpp_py.tar.xz  the installed llama_cpp package (larosa's tokenizer) with one copy of each
#                   library (libmtmd dropped, symlinks for the versioned names): 1.8 MB, where the wheel is 24
#   P/skel          gguf_skeleton stems of llama2-7b q4_0 / q8_0 and their LaRoSA files (made with
#                   `gguf_skeleton grow` from a 2-layer pair of the 7B widths: see that tool)
#   P/base.tar, P/new.tar (git archive --prefix=base/ BEFORE, --prefix=new/ HEAD); more trees as TREES says
#   P/llama.tar.xz  llama-cpp-python 0.3.36's vendor/llama.cpp trimmed to CMakeLists.txt cmake common include
#                   src vendor licenses ggml (backends other than cpu and cuda removed) and tools/llama-bench,
#                   tools/CMakeLists.txt reduced to add_subdirectory(llama-bench): 2.2 MB
# The machine goes back 30 s after a call, so phase 2 must follow phase 1 at once (the build and the
# files stay only while it is held).
# Usage: P=folder OUT=results TREES="base new" bash tools/gpu_session.sh 1; then the same with 2
set -u
P=${P:-$PWD/.gpu3p}; PHASE=$1; TREES=${TREES:-base new}
export PYTHONUNBUFFERED=1 VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
M=/dev/shm/m; mkdir -p $M
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
wait_for() { local n=0; while [ ! -f $1 ] && [ $n -lt ${2:-600} ]; do sleep 1; n=$((n+1)); done; }
infl() { [ -f $M/$1.gguf ] || python3 -m larosa.tools.gguf_skeleton inflate $P/skel/$1 $M/$1.gguf > /dev/null; }
variants() {  # tree round
  PYTHONPATH=/tmp/site_$1:/tmp/site VARIANTS=now python3 /tmp/trees/$1/tools/gpu_variants.py \
    $M/llama2-7b.larosa-q4_0.gguf $M/llama2-7b.larosa-q8_0.gguf 2>&1 | sed "s/^/$1$2: /" | tee -a $OUT/variants.txt
}
if [ $PHASE = 1 ]; then
  date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
  for f in $P/gl/*.deb; do dpkg -x $f /; done; ldconfig
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $P/whl/*.whl
  tar xJf $P/llama_cpp_py.tar.xz -C /tmp/site
  mkdir -p /tmp/trees
  for t in $TREES; do
    tar xf $P/$t.tar -C /tmp/trees
    ( PYTHONPATH=/tmp/site python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site_$t /tmp/trees/$t > /tmp/build_$t.log 2>&1; echo $? > /tmp/build_$t.rc ) &
  done
  for t in $TREES; do wait_for /tmp/build_$t.rc; el "built $t rc $(cat /tmp/build_$t.rc)"; done
  export PYTHONPATH=/tmp/site_new:/tmp/site
  infl llama2-7b.larosa-q4_0 & infl llama2-7b.larosa-q8_0 & wait
  el inflated
  for r in 1 2; do for t in $TREES; do variants $t $r; done; el "round $r"; done
  REPS=200 python3 /tmp/trees/new/tools/gpu_kernel_bench.py /tmp/trees/*/c_kernels/shaders/select_sg.wgsl 2>&1 | tee $OUT/kbench.txt
  ( mkdir -p /tmp/lc && tar xJf $P/llama.tar.xz -C /tmp/lc && cd /tmp/lc/llama.cpp &&
    cmake -S . -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF > /tmp/lc/cfg.log 2>&1 &&
    cmake --build build -j15 --target llama-bench > /tmp/lc/build.log 2>&1; echo $? > /tmp/lc/rc ) > /dev/null 2>&1 &
  (cd /tmp/trees/new && timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py \
     -k "(select or spmv or head or long_context or matches_cpu_on_tiny or preencoded) and not smollm2" 2>&1 | tail -6 | tee $OUT/tests.txt)
  infl llama2-7b.q4_0 & infl llama2-7b.q8_0 & wait
  el "dense inflated"
  wait_for /tmp/lc/rc 300; el "llama.cpp build: $(cat /tmp/lc/rc 2>/dev/null || echo running)"
else
  export PYTHONPATH=/tmp/site_new:/tmp/site
  wait_for /tmp/lc/rc 500; el "llama.cpp build rc $(cat /tmp/lc/rc)"
  B=/tmp/lc/llama.cpp/build/bin/llama-bench
  for q in q4_0 q8_0; do $B -m $M/llama2-7b.$q.gguf -p 0 -n 128 -ngl 99 -r 5 2>&1 | tee -a $OUT/llama.txt | grep -E "tg|model"; done
  for t in $TREES; do variants $t 3; done
  el done
fi

#!/bin/bash
# One device session of BENCHMARKS.md's "GPU decode" (2026-12-01 05:28 UTC): larosa before (5fc04e6) and
# now side by side (tools/gpu_variants.py), the kernel tests on that GPU, then llama.cpp's CUDA build
# (llama-bench, built there while nothing else is timed) on the same 7B-shape files. Everything comes
# in a payload folder P (no network there; tools/gpu_device_bench.sh says how each part is made):
#   P/gl/*.deb (libvulkan1, glvnd), P/whl (wgpu 0.32, cffi, pycparser, gguf, setuptools, wheel),
#   P/cpuwhl (llama-cpp-python's CPU wheel: larosa's tokenizer), P/skel (gguf_skeleton stems of
#   llama2-7b q4_0 / q8_0 and their LaRoSA files), P/base.tar and P/new.tar (git archive
#   --prefix=base/ 5fc04e6, --prefix=new/ HEAD), P/llama.tar.xz (llama-cpp-python 0.3.36's
#   vendor/llama.cpp trimmed to CMakeLists.txt cmake common include src vendor licenses ggml and
#   tools/llama-bench, tools/CMakeLists.txt reduced to add_subdirectory(llama-bench)).
# Usage: P=folder OUT=results bash tools/gpu_session.sh
set -u
P=${P:-$PWD/.gpu2p}
export PYTHONUNBUFFERED=1 VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
M=/dev/shm/m; mkdir -p $M
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
for f in $P/gl/*.deb; do dpkg -x $f /; done; ldconfig
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $P/whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/cpu_site $P/cpuwhl/*.whl
export PYTHONPATH=/tmp/site
mkdir -p /tmp/trees; tar xf $P/base.tar -C /tmp/trees; tar xf $P/new.tar -C /tmp/trees
for t in base new; do
  ( python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site_$t /tmp/trees/$t > /tmp/build_$t.log 2>&1; echo $? > /tmp/build_$t.rc ) &
done
wait_for() { while [ ! -f $1 ]; do sleep 1; done; }
for t in base new; do wait_for /tmp/build_$t.rc; el "built $t rc $(cat /tmp/build_$t.rc)"; done
export PYTHONPATH=/tmp/site_new:/tmp/site:/tmp/cpu_site
infl() { [ -f $M/$1.gguf ] || python3 -m larosa.tools.gguf_skeleton inflate $P/skel/$1 $M/$1.gguf > /dev/null; }
infl llama2-7b.larosa-q4_0 & infl llama2-7b.larosa-q8_0 & wait
el inflated
PYTHONPATH=/tmp/site_base:/tmp/site:/tmp/cpu_site VARIANTS=after python3 /tmp/trees/new/tools/gpu_variants.py \
   $M/llama2-7b.larosa-q4_0.gguf $M/llama2-7b.larosa-q8_0.gguf 2>&1 | sed "s/^/base: /" | tee -a $OUT/variants.txt
el "ran base"
VARIANTS=now,after,noprep python3 /tmp/trees/new/tools/gpu_variants.py \
   $M/llama2-7b.larosa-q4_0.gguf $M/llama2-7b.larosa-q8_0.gguf 2>&1 | sed "s/^/new: /" | tee -a $OUT/variants.txt
el "ran new"
# llama.cpp: build alone (the timings above had the CPU to themselves), dense files meanwhile
( mkdir -p /tmp/lc && tar xJf $P/llama.tar.xz -C /tmp/lc && cd /tmp/lc/llama.cpp &&
  cmake -S . -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF > /tmp/lc/cfg.log 2>&1 &&
  cmake --build build -j15 --target llama-bench > /tmp/lc/build.log 2>&1; echo $? > /tmp/lc/rc ) &
(cd /tmp/trees/new && timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "not smollm2 and not chat and not step" 2>&1 | tail -4 | tee $OUT/tests.txt)
el tests
infl llama2-7b.q4_0 & infl llama2-7b.q8_0 & wait
el "dense inflated"
wait_for /tmp/lc/rc; el "llama.cpp build rc $(cat /tmp/lc/rc)"; tail -2 /tmp/lc/build.log
B=/tmp/lc/llama.cpp/build/bin/llama-bench
for q in q4_0 q8_0; do $B -m $M/llama2-7b.$q.gguf -p 0 -n 128 -ngl 99 -r 5 2>&1 | tee -a $OUT/llama.txt | grep -E "tg|model"; done
el llama

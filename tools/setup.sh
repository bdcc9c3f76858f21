#!/bin/sh
# Sets up .venv with everything larosa needs and installs larosa (editable; this builds the C
# library). Idempotent: a second run only re-installs larosa. Used by `make setup`.
set -eu
cd "$(dirname "$0")/.."
VENV=${LAROSA_VENV:-.venv}
CACHE=${LAROSA_CACHE:-$HOME/.cache/larosa}
LLAMA_CPP_VERSION=0.3.36

[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
PY="$VENV/bin/python"
pip() { "$PY" -m pip --disable-pip-version-check -q "$@"; }

pip install --upgrade pip "setuptools>=77" wheel "cffi>=1.16"

# torch, CPU build. On the project's machines pip finds a local wheel of torch 2.13.0. Elsewhere a
# bare "pip install torch" may fetch a multi-GB CUDA build; take the CPU wheel instead with
#   pip install torch --index-url https://download.pytorch.org/whl/cpu
if ! "$PY" -c "import torch" 2>/dev/null; then
    pip install "torch==2.13.0" || pip install torch --index-url https://download.pytorch.org/whl/cpu
fi

# llama-cpp-python (tokenizer of record and dense baseline), built from source once and cached.
# On x86 the build must not use AMX: llama.cpp's native build enables it where the CPU reports it,
# and it dies with SIGILL where the kernel does not allow it (these machines).
if ! "$PY" -c "import llama_cpp" 2>/dev/null; then
    WHEELS="$CACHE/wheels"
    mkdir -p "$WHEELS"
    if ! ls "$WHEELS"/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl >/dev/null 2>&1; then
        echo "building llama-cpp-python $LLAMA_CPP_VERSION (about 6 minutes on 2 cores, once)"
        flags=""
        case "$(uname -m)" in x86_64|amd64) flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" ;; esac
        CMAKE_ARGS="-DCMAKE_C_FLAGS=\"$flags\" -DCMAKE_CXX_FLAGS=\"$flags\"" \
            pip wheel --no-deps --no-cache-dir "llama-cpp-python==$LLAMA_CPP_VERSION" -w "$WHEELS"
    fi
    pip install "$(ls "$WHEELS"/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl | head -n 1)"
fi

pip install -e ".[test,server,gpu]"

# AArch64 cross compiler and qemu-user, so the tests also run the NEON kernels (optional: without
# them that test skips; needs root and apt-get, which CI has)
sh tools/setup_cross.sh || echo "larosa: no AArch64 cross tools; the NEON test will be skipped"
# Debian's chromium and chromedriver: the headless browser of tests/test_server_browser.py (optional:
# without them that test skips; needs root and apt-get, which CI has)
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends chromium chromium-driver ||
            { apt-get update -q && apt-get install -y -q --no-install-recommends chromium chromium-driver; } ||
            echo "larosa: could not install chromium; the browser test will be skipped"
    else
        echo "larosa: no chromium/chromedriver (apt-get install chromium chromium-driver as root); the browser test will be skipped"
    fi
fi
# Mesa's lavapipe (a Vulkan device on the CPU) and the Vulkan loader: the GPU path's tests run on it
# (optional: without them tests/test_gpu.py skips; needs root and apt-get, which CI has)
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends mesa-vulkan-drivers libvulkan1 ||
            { apt-get update -q && apt-get install -y -q --no-install-recommends mesa-vulkan-drivers libvulkan1; } ||
            echo "larosa: could not install lavapipe; the GPU tests will be skipped"
    else
        echo "larosa: no Vulkan driver (apt-get install mesa-vulkan-drivers libvulkan1 as root); the GPU tests will be skipped"
    fi
fi
"$PY" -c "import larosa.runtime, llama_cpp, torch" && echo "larosa: set up in $VENV"

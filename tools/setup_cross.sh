#!/bin/sh
# Installs what tests/test_cross_neon.py needs to build the C kernels for AArch64 and run them on an
# x86 machine: the cross compiler, the AArch64 C library and qemu's user-mode emulator.
# Idempotent: does nothing when aarch64-linux-gnu-gcc, the AArch64 libc and qemu-aarch64 (or
# qemu-aarch64-static) are already present. Installs with apt-get only when running as root on a
# system that has apt-get; otherwise it says what is missing and exits non-zero.
set -eu

have() { command -v "$1" >/dev/null 2>&1; }

missing=""
have aarch64-linux-gnu-gcc || missing="$missing gcc-aarch64-linux-gnu"
[ -e /usr/aarch64-linux-gnu/include/stdio.h ] && [ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] ||
    missing="$missing libc6-dev-arm64-cross"
have qemu-aarch64 || have qemu-aarch64-static || missing="$missing qemu-user"

if [ -z "$missing" ]; then
    echo "setup_cross: nothing to do (aarch64-linux-gnu-gcc, AArch64 libc and qemu-aarch64 present)"
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! have apt-get; then
    echo "setup_cross: missing:$missing" >&2
    echo "setup_cross: run as root on a Debian/Ubuntu system, or install them yourself" >&2
    exit 1
fi

start=$(date +%s)
echo "setup_cross: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# refresh the package lists only when the first attempt cannot find the packages
# shellcheck disable=SC2086
if ! apt-get install -y -q --no-install-recommends $missing; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends $missing
fi
echo "setup_cross: installed$missing in $(($(date +%s) - start)) s"

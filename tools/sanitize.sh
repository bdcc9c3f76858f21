#!/bin/sh
# Runs the C library built with AddressSanitizer + UndefinedBehaviorSanitizer (gcc):
#   kernels  tests/c/kernel_check.c: every SIMD level against scalar, every tail path (on AArch64
#            twice: the NEON integer kernels with SDOT and without, LAROSA_NO_DOTPROD=1)
#   leaks    tests/c/leak_check.c: model new / eval / free cycles and every refusal path of
#            lr_model_new, under LeakSanitizer, then built plain under valgrind (if installed)
#   runtime  Python runtime tests against a sanitized build of larosa._kernels (built in a temp
#            dir; the installed one is not touched), after a canary that must trip ASan
#   corpus   (not in all) replays a fuzz corpus (tools/fuzz.sh SECONDS --model makes one) through
#            the loader, Model and one eval with the sanitized build: tools/sanitize.sh corpus DIR...
#            (coverage-guided fuzzing itself does not work under gcc's ASan: it takes over
#            libFuzzer's coverage symbols)
#
#   tools/sanitize.sh [all|kernels|leaks|runtime] [pytest arguments replacing the default tests]
#
# Exit status: 0 no finding, 1 a finding or a failed test, 77 no usable sanitizer runtime here.
# Python leaks by design, so the runtime part runs with detect_leaks=0; the C leaks are the leaks part.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
CC=${CC:-gcc}
PART=${1:-all}
[ $# -gt 0 ] && shift
KC=$ROOT/c_kernels
KERNEL_SRC="$KC/kernels.c $KC/topk.c $KC/qmatvec.c $KC/qmatvec_x86.c $KC/qmatvec_neon.c $KC/simd_x86.c $KC/simd_neon.c"
LIB_SRC="$KERNEL_SRC $KC/threads.c $KC/forward.c $KC/prefill.c $KC/membw.c"
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
CFLAGS="-O1 -g -std=c11 -D_GNU_SOURCE -fopenmp-simd -Wall -Wno-unused-function -Wno-unknown-pragmas"
case "$(uname -m)" in x86_64|amd64) CFLAGS="$CFLAGS -march=native" ;; esac
# halt at the first report; allocator_may_return_null: a refused huge allocation returns NULL as
# malloc does (lr_model_new's ENOMEM path), instead of ASan aborting
export ASAN_OPTIONS="abort_on_error=0:allocator_may_return_null=1:detect_leaks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM

say() { echo "sanitize.sh: $*"; }
finding() { say "FINDING: $*" >&2; exit 1; }

# a sanitized trivial program must build and run, or there is nothing to test with
printf '#include <stdlib.h>\nint main(void){char *p = malloc(4); p[0] = 1; int r = p[0] - 1; free(p); return r;}\n' >"$TMP/probe.c"
if ! $CC $SAN "$TMP/probe.c" -o "$TMP/probe" 2>"$TMP/probe.err" || ! "$TMP/probe" 2>>"$TMP/probe.err"; then
    say "no usable sanitizer runtime for $CC: $(tail -n 2 "$TMP/probe.err" | tr '\n' ' ')" >&2
    exit 77
fi

# fails on a sanitizer report in $1 (runs that exit 0 after a report would otherwise pass)
no_reports() {
    if grep -E "ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: (Address|Leak|UndefinedBehavior)Sanitizer" "$1" >/dev/null; then
        grep -E -A 12 "ERROR: |runtime error:" "$1" | head -n 40 >&2
        finding "$2"
    fi
}

kernels() {
    $CC $CFLAGS $SAN -pthread -I "$KC" "$ROOT/tests/c/kernel_check.c" $KERNEL_SRC -lm -o "$TMP/kernel_check"
    "$TMP/kernel_check" -q 2 >"$TMP/kernels.log" 2>&1 || { tail -n 30 "$TMP/kernels.log" >&2; finding "kernel_check failed"; }
    no_reports "$TMP/kernels.log" "kernel_check"
    say "kernels: $(grep '^SUMMARY' "$TMP/kernels.log")"
    case "$(uname -m)" in aarch64|arm64)
        LAROSA_NO_DOTPROD=1 "$TMP/kernel_check" -q 2 >"$TMP/kernels_base.log" 2>&1 ||
            { tail -n 30 "$TMP/kernels_base.log" >&2; finding "kernel_check (LAROSA_NO_DOTPROD=1) failed"; }
        no_reports "$TMP/kernels_base.log" "kernel_check (LAROSA_NO_DOTPROD=1)"
        say "kernels (baseline NEON, no SDOT): $(grep '^SUMMARY' "$TMP/kernels_base.log")" ;;
    esac
}

leaks() {
    $CC $CFLAGS $SAN -pthread -I "$KC" "$ROOT/tests/c/leak_check.c" $LIB_SRC -lm -o "$TMP/leak_check_san"
    "$TMP/leak_check_san" 20 >"$TMP/lsan.log" 2>&1 || { tail -n 40 "$TMP/lsan.log" >&2; finding "leak_check under ASan/LSan"; }
    no_reports "$TMP/lsan.log" "leak_check under ASan/LSan"
    say "leaks (LeakSanitizer): $(grep '^leak_check:' "$TMP/lsan.log"), 0 leaks"
    if ! command -v valgrind >/dev/null; then
        say "leaks (valgrind): skipped, valgrind is not installed"
        return
    fi
    # plain build: valgrind and ASan do not mix; no -march=native: valgrind has no AVX-512
    $CC -O1 -g -std=c11 -D_GNU_SOURCE -fopenmp-simd -pthread -I "$KC" "$ROOT/tests/c/leak_check.c" $LIB_SRC -lm \
        -o "$TMP/leak_check"
    if ! valgrind -q --leak-check=full --show-leak-kinds=all --errors-for-leak-kinds=definite,indirect,possible \
        --error-exitcode=99 "$TMP/leak_check" 5 >"$TMP/vg.log" 2>&1; then
        tail -n 40 "$TMP/vg.log" >&2
        finding "leak_check under valgrind (exit 99: memcheck errors or leaks)"
    fi
    say "leaks (valgrind memcheck): $(grep '^leak_check:' "$TMP/vg.log"), no errors, no leaks"
}

# python with the sanitized extension in place of larosa._kernels: $1 the .so, then python args
SHIM='import importlib.util, sys
import larosa
spec = importlib.util.spec_from_file_location("larosa._kernels", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.modules["larosa._kernels"] = larosa._kernels = mod
print("sanitized larosa._kernels:", mod.__file__, flush=True)
del sys.argv[1]
if sys.argv[1] == "-c":
    exec(sys.argv[2])
else:
    import pytest
    sys.exit(pytest.main(sys.argv[1:]))'

build_ext() {
    # the sources are copied: cffi writes its objects next to them
    mkdir -p "$TMP/ext/src"
    cp "$KC"/*.c "$KC"/*.h "$KC/build.py" "$TMP/ext/src/"
    cp -r "$KC/webgpu" "$TMP/ext/src/"   # the GPU path's headers (gpu_internal.h)
    (cd "$TMP/ext" && LAROSA_CFLAGS="$CFLAGS $SAN" LDFLAGS="$SAN" "$PY" -c '
import importlib.util
spec = importlib.util.spec_from_file_location("larosa_build", "src/build.py")
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
m.ffibuilder.compile(tmpdir=".")' >"$TMP/build.log" 2>&1) || { tail -n 30 "$TMP/build.log" >&2; finding "sanitized build failed"; }
    SO=$(ls "$TMP"/ext/larosa/_kernels*.so)
    ASAN_LIB=$($CC -print-file-name=libasan.so)
    [ -e "$ASAN_LIB" ] || { say "no libasan.so for $CC" >&2; exit 77; }
    # libstdc++ loaded before ASan starts: llama.cpp throws C++ exceptions (caught inside it), and
    # ASan's __cxa_throw interceptor fails a CHECK when it finds no real one
    export LD_PRELOAD="$ASAN_LIB $($CC -print-file-name=libstdc++.so.6)"
    export ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" PYTHONMALLOC=malloc
}

runtime() {
    build_ext
    # canary: a read past a buffer through the sanitized library must be reported
    if "$PY" -c "$SHIM" "$SO" -c '
import numpy as np
from larosa._kernels import ffi, lib
x, idx = np.ones(4000, np.float32), np.zeros(4100, np.int32)
lib.lr_topk(ffi.from_buffer("float[]", x), 4100, 1, ffi.from_buffer("int32_t[]", idx))' >"$TMP/canary.log" 2>&1 \
        || ! grep -q "heap-buffer-overflow" "$TMP/canary.log"; then
        tail -n 20 "$TMP/canary.log" >&2
        finding "the canary overflow was not reported: the sanitized build is not in use"
    fi
    say "runtime: canary overflow reported by ASan, as it must be"
    [ $# -gt 0 ] || set -- -q -p no:cacheprovider \
        "$ROOT/tests/test_kernels.py" \
        "$ROOT/tests/test_runtime.py::test_tiny_models_match_reference" \
        "$ROOT/tests/test_runtime.py::test_prefix_reuse_equals_fresh_eval" \
        "$ROOT/tests/test_runtime_errors.py" \
        "$ROOT/tests/test_hostile.py::test_nonfinite_weights_raise_numerics_error" \
        "$ROOT/tests/test_hostile.py::test_kv_cache_bound"
    set +e
    (cd "$ROOT" && "$PY" -c "$SHIM" "$SO" "$@") >"$TMP/pytest.log" 2>&1
    rc=$?
    set -e
    no_reports "$TMP/pytest.log" "runtime tests under ASan/UBSan"
    [ $rc -eq 0 ] || { tail -n 40 "$TMP/pytest.log" >&2; finding "runtime tests failed under ASan/UBSan (exit $rc)"; }
    say "runtime: $(grep -E '^sanitized larosa' "$TMP/pytest.log")"
    say "runtime: $(grep -E '[0-9]+ passed' "$TMP/pytest.log" | tail -n 1)"
}

corpus() {
    [ $# -gt 0 ] || { echo "usage: tools/sanitize.sh corpus DIR..." >&2; exit 2; }
    build_ext
    FINDINGS=${LAROSA_CACHE:-$HOME/.cache/larosa}/fuzz/findings
    mkdir -p "$FINDINGS"
    set +e
    "$PY" -c "$SHIM" "$SO" -c '
import runpy, sys
target = sys.argv[3]
sys.argv = [target, "--model", "-runs=0", "-timeout=20", "-artifact_prefix=" + sys.argv[4]] + sys.argv[5:]
runpy.run_path(target, run_name="__main__")' "$ROOT/tests/fuzz/fuzz_loader.py" "$FINDINGS/" "$@" >"$TMP/corpus.log" 2>&1
    rc=$?
    set -e
    no_reports "$TMP/corpus.log" "fuzz corpus under ASan/UBSan"
    [ $rc -eq 0 ] || { grep -v '^INFO: Instrumenting' "$TMP/corpus.log" | tail -n 40 >&2; finding "fuzz corpus replay (exit $rc)"; }
    say "corpus: $(grep -E '^Done [0-9]+ runs' "$TMP/corpus.log")"
}

case "$PART" in
    kernels) kernels ;;
    leaks) leaks ;;
    runtime) runtime "$@" ;;
    corpus) corpus "$@" ;;
    all) kernels; leaks; runtime "$@" ;;
    *) echo "usage: tools/sanitize.sh [all|kernels|leaks|runtime [pytest args]|corpus DIR...]" >&2; exit 2 ;;
esac
say "no findings"

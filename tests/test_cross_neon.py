"""The C kernels of every SIMD level against the scalar reference, through tests/c/kernel_check.c.

Native: the driver built with gcc checks AVX2 and AVX-512 (those this CPU has; the integer
kernels with and without VNNI as the CPU has it) against scalar.
AArch64: the driver cross-compiled with aarch64-linux-gnu-gcc and run under qemu-aarch64 checks
the NEON kernels (c_kernels/simd_neon.c, and c_kernels/qmatvec_neon.c's integer kernels in both
their paths: SDOT, and baseline NEON forced with LAROSA_NO_DOTPROD=1 or chosen on a CPU without
FEAT_DotProd) against scalar on this x86 machine. The cross tests skip only when the cross compiler
(with its C library) or qemu is absent; tools/setup_cross.sh installs them. Each configuration is
also run built with AddressSanitizer + UBSan, which turns any read or write past a tensor or an
output into a failure (under qemu without the exhaustive fp16 sweep, which the plain runs do).
Run tools/setup_cross.sh first to get the cross tools.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KC = ROOT / "c_kernels"
DRIVER = ROOT / "tests" / "c" / "kernel_check.c"
# only what the public kernel entry points need (no threads, forward pass or bandwidth probe)
SOURCES = [DRIVER, *(KC / f for f in ("kernels.c", "topk.c", "qmatvec.c", "qmatvec_x86.c", "qmatvec_neon.c", "simd_x86.c",
                                      "simd_neon.c"))]
CFLAGS = ["-O2", "-std=c11", "-D_GNU_SOURCE", "-pthread"]
SANITIZE = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
CROSS_CC = "aarch64-linux-gnu-gcc"
SYSROOT = "/usr/aarch64-linux-gnu"
NEON_MARCH = "-march=armv8-a"   # the baseline: no extension needed (FCVTL is base AArch64; SDOT is per function)
# the NEON integer kernels' paths: SDOT where the CPU has it (qemu's default CPU does), baseline NEON
# when forced, and chosen by the run-time check on a CPU without FEAT_DotProd (Cortex-A57)
NEON_PATHS = {"dotprod": ([], {}, "yes"), "forced-baseline": ([], {"LAROSA_NO_DOTPROD": "1"}, "no"),
              "cortex-a57": (["-cpu", "cortex-a57"], {}, "no")}
QEMU_SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=0"}   # LeakSanitizer cannot run under qemu-user
LEVELS = ("scalar", "avx2", "avx512", "neon")
IS_X86 = platform.machine().lower() in ("x86_64", "amd64")


def _compile(cc: str, out: Path, flags: list[str]) -> None:
    cmd = [cc, *flags, "-I", str(KC), *map(str, SOURCES), "-lm", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"


def _run(cmd: list[str], env: dict | None = None) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env={**os.environ, **(env or {})})
    fails = [l for l in r.stdout.splitlines() if l.startswith("FAIL")]
    assert r.returncode == 0 and not fails, (
        f"{' '.join(cmd)} exited {r.returncode}\n" + "\n".join(fails[:20]) + "\n" + r.stdout[-1500:]
        + r.stderr[-3000:])
    return r.stdout


def _parse(out: str) -> tuple[dict[str, bool], dict[str, tuple[int, int]], tuple[int, int]]:
    """(level -> available, level -> (checks, failures), (total checks, total failures))"""
    m = re.search(r"^levels:(.*)$", out, re.M)
    assert m, out[:500]
    avail = {k: v == "yes" for k, v in re.findall(r"(\w+)=(yes|no)", m.group(1))}
    per = {l: (int(c), int(f)) for l, c, f in re.findall(r"^LEVEL (\w+) checks=(\d+) failures=(\d+)$", out, re.M)}
    s = re.search(r"^SUMMARY levels=\S* checks=(\d+) failures=(\d+)$", out, re.M)
    assert s, out[-500:]
    return avail, per, (int(s.group(1)), int(s.group(2)))


def _assert_level_checked(out: str, level: str) -> None:
    """level ran exactly the checks the scalar level ran, every one passed, covering every kernel
    entry point and type, the exact decoding of all fp16 patterns, the shapes and the k modes"""
    avail, per, (total, failures) = _parse(out)
    assert avail[level], f"{level} not available"
    assert failures == 0
    scalar_checks = per["scalar"][0]
    assert scalar_checks >= 1000, per
    assert per[level] == (scalar_checks, 0), per
    spmv_types, dot_types = ("F32", "F16", "Q8_0_IM", "Q4_0_IM"), ("F32", "F16", "Q8_0", "Q4_0")
    checked = [("lr_spmv", spmv_types), ("spmv slice", ("F32", "F16")), ("qspmv slice", ("Q8_0_IM", "Q4_0_IM")),
               ("lr_dot_rows", dot_types), ("dot_rows slice", ("F32", "F16")), ("qdot slice", ("Q8_0", "Q4_0")),
               ("lr_spmm", ("Q8_0_IM", "Q4_0_IM")), ("qgemm slice", ("Q8_0_IM", "Q4_0_IM")),
               ("nonfinite lr_spmv", spmv_types), ("nonfinite lr_dot_rows", dot_types),
               ("nonfinite lr_spmm", ("Q8_0_IM", "Q4_0_IM")),
               ("lr_attn_scores", ("F32", "F16", "Q8_0")), ("lr_attn_values", ("F32", "F16", "Q8_0"))]
    for op, types in checked:
        for t in types:
            n = len(re.findall(rf"^PASS level={level} {op} {t} ", out, re.M))
            assert n > 0, f"no {op} {t} check at level {level}"
    # the batch sizes of lr_spmm: one token, a few, the largest
    for t in ("Q8_0_IM", "Q4_0_IM"):
        ns = {int(n) for n in re.findall(rf"^PASS level={level} lr_spmm {t} \S+ \S+ n=(\d+) ", out, re.M)}
        assert {1, 64} <= ns and len(ns) >= 3, ns
    exact = re.findall(rf"^PASS level={level} exact halves: (lr_spmv|lr_dot_rows) (\w+),", out, re.M)
    assert set(exact) == {("lr_spmv", t) for t in ("F16", "Q8_0_IM", "Q4_0_IM")} | \
        {("lr_dot_rows", t) for t in ("F16", "Q8_0", "Q4_0")}, exact
    # the spmv checks covered k = 0, k = 1, a random k, k = rows and dense (idx = NULL), every type
    for t in spmv_types:
        for mode in ("k=0", "k=1", "k=random", "k=rows", "idx=NULL"):
            assert re.search(rf"^PASS level={level} lr_spmv {t} rows=\d+ cols=\d+ {mode} ", out, re.M), (t, mode)
    # the column counts reached every tile / chunk / tail path: float 40, 77, ..., _IM 1, 2, 3, 5
    # and 17 chunks of 64 over 1, 2 and 5 groups of 32 inputs, ggml rows of 1 .. 33 blocks
    for cols in (40, 77, 288, 544, 1056):
        assert re.search(rf"^PASS level={level} lr_spmv F16 rows=\d+ cols={cols} ", out, re.M)
    for t in ("Q8_0_IM", "Q4_0_IM"):
        for cols in (64, 128, 192, 320, 1088):
            for rows in (32, 64, 160):
                assert re.search(rf"^PASS level={level} lr_spmv {t} rows={rows} cols={cols} ", out, re.M), (t, rows, cols)
    for t in ("Q8_0", "Q4_0"):
        for cols in (32, 96, 1056):
            assert re.search(rf"^PASS level={level} lr_dot_rows {t} rows=\d+ cols={cols} ", out, re.M), (t, cols)
    # the attention kernels: every vector tail of the head size (F32 / F16), 1 .. 5 positions and more
    for t in ("F32", "F16"):
        for hd in (2, 6, 40, 72, 100, 128):
            for n in (1, 3, 4, 5, 333):
                for op in ("lr_attn_scores", "lr_attn_values"):
                    assert re.search(rf"^PASS level={level} {op} {t} hd={hd} n={n} ", out, re.M), (op, t, hd, n)
    for hd in (32, 96, 256):
        for op in ("lr_attn_scores", "lr_attn_values"):
            assert re.search(rf"^PASS level={level} {op} Q8_0 hd={hd} n=333 ", out, re.M), (op, hd)
    assert len(re.findall(r"^PASS lr_kv_store ", out, re.M)) == 6   # F16 (2), Q8_0 (2), refusals (2)
    assert len(re.findall(r"^PASS lr_topk ", out, re.M)) >= 100
    assert len(re.findall(r"^PASS lr_(spmv|dot_rows|spmm) .* -> LR_E", out, re.M)) >= 10


def _host_x86_levels() -> dict[str, bool]:
    """what /proc/cpuinfo says, independently of lr_simd_available"""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pytest.skip("no /proc/cpuinfo to compare the SIMD levels with")
    return {"avx2": {"avx2", "fma", "f16c"} <= flags, "avx512": {"avx512f", "avx512bw"} <= flags}


def _host_cc() -> str:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    assert cc, "no C compiler (gcc) found; the project's C library needs one anyway"
    return cc


def _sanitizer_works(cc: str, tmp: Path, flags: list[str], runner: list[str], env: dict) -> str | None:
    """None if a sanitized trivial program builds and runs, else why not"""
    src = tmp / "san_probe.c"
    src.write_text("#include <stdlib.h>\nint main(void) { char *p = malloc(4); p[0] = 1; int r = p[0] - 1;"
                   " free(p); return r; }\n")
    r = subprocess.run([cc, *SANITIZE, str(src), "-o", str(tmp / "san_probe")], capture_output=True, text=True)
    if r.returncode:
        return f"{cc} cannot link with -fsanitize=address,undefined: {r.stderr.strip()[-300:]}"
    r = subprocess.run([*runner, str(tmp / "san_probe")], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=60)
    if r.returncode:
        return f"sanitized programs do not run here: {r.stderr.strip()[-300:]}"
    return None


# ---- native ------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [CFLAGS, ["-O3", "-march=native", "-std=c11", "-D_GNU_SOURCE", "-pthread"]],
                         ids=["O2", "O3-march-native"])
def test_native_kernel_check(tmp_path, flags):
    exe = tmp_path / "kernel_check"
    _compile(_host_cc(), exe, flags)
    out = _run([str(exe), "1"])
    avail, per, (total, failures) = _parse(out)
    assert failures == 0 and total > 1000
    if IS_X86:
        assert avail["scalar"] and not avail["neon"]
        host = _host_x86_levels()
        for level in ("avx2", "avx512"):
            assert avail[level] == host[level], f"lr_simd_available({level}) disagrees with /proc/cpuinfo"
            if host[level]:
                _assert_level_checked(out, level)
        if not any(host.values()):
            pytest.skip("this CPU has neither AVX2 nor AVX-512: only the scalar level was checked")
    else:
        for level in LEVELS[1:]:
            if avail.get(level):
                _assert_level_checked(out, level)


def test_native_kernel_check_sanitized(tmp_path):
    cc = _host_cc()
    why = _sanitizer_works(cc, tmp_path, SANITIZE, [], {})
    if why:
        pytest.skip(why)
    exe = tmp_path / "kernel_check_san"
    _compile(cc, exe, [*SANITIZE, "-std=c11", "-D_GNU_SOURCE", "-pthread"])
    out = _run([str(exe), "-q", "2"])
    assert _parse(out)[2][1] == 0


# ---- AArch64 under qemu ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def cross_cc(tmp_path_factory):
    """(cross compiler, a linked AArch64 test program); skips when the cross toolchain is absent"""
    cc = shutil.which(CROSS_CC)
    if not cc:
        pytest.skip(f"{CROSS_CC} not installed (tools/setup_cross.sh installs it)")
    tmp = tmp_path_factory.mktemp("cross")
    probe = tmp / "probe.c"
    probe.write_text("#include <stdio.h>\n#include <math.h>\nint main(void) { printf(\"%g\\n\", sqrt(4.0)); return 0; }\n")
    r = subprocess.run([cc, str(probe), "-lm", "-o", str(tmp / "probe")], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"{CROSS_CC} has no AArch64 C library (libc6-dev-arm64-cross): {r.stderr.strip()[-300:]}")
    return cc, tmp / "probe"


@pytest.fixture(scope="module")
def cross(cross_cc):
    """(cross compiler, qemu command prefix); skips when either is absent"""
    cc, probe = cross_cc
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if not qemu:
        pytest.skip("qemu-aarch64 not installed (tools/setup_cross.sh installs qemu-user)")
    runner = [qemu, "-L", SYSROOT]
    r = subprocess.run([*runner, str(probe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "2", f"qemu cannot run an AArch64 program: {r.stderr}"
    return cc, runner


@pytest.mark.parametrize("march", [NEON_MARCH, "-march=armv8.2-a+fp16", "-mcpu=neoverse-n1"])
def test_simd_neon_compiles_for_aarch64(cross_cc, tmp_path, march):
    """simd_neon.c and qmatvec_neon.c need nothing beyond -march=armv8-a (and build for newer cores
    too), and really compile the NEON tables there; at the baseline, SDOT is in the dotprod kernels
    only (compiled for it per function), so the baseline ones run on any AArch64 CPU"""
    cc, _ = cross_cc
    nm = shutil.which("aarch64-linux-gnu-nm") or shutil.which("nm")
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    for src, table in (("simd_neon.c", "lr_kernels_neon"), ("qmatvec_neon.c", "lr_qkernels_neon")):
        obj = tmp_path / src.replace(".c", ".o")
        cmd = [cc, *CFLAGS, march, "-Wall", "-Wextra", "-I", str(KC), "-c", str(KC / src), "-o", str(obj)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
        if nm:
            syms = subprocess.run([nm, str(obj)], capture_output=True, text=True).stdout
            assert re.search(rf"\b[RDT] {table}$", syms, re.M), syms
        if objdump and src == "qmatvec_neon.c" and march == NEON_MARCH:
            dis = subprocess.run([objdump, "-d", str(obj)], capture_output=True, text=True).stdout
            with_sdot, fn = set(), None
            for line in dis.splitlines():
                m = re.match(r"^[0-9a-f]+ <([^>]+)>:$", line)
                if m:
                    fn = m.group(1).split(".")[0]
                elif re.search(r"\tsdot\t", line):
                    with_sdot.add(fn)
            # the SDOT kernels (and their helpers, if not inlined) only: *_dot
            assert with_sdot and all(f.endswith("_dot") for f in with_sdot), with_sdot


@pytest.fixture(scope="module")
def neon_exe(cross, tmp_path_factory):
    """the driver built for AArch64 (-march=armv8-a)"""
    cc, _ = cross
    exe = tmp_path_factory.mktemp("neon") / "kernel_check_aarch64"
    _compile(cc, exe, [*CFLAGS, NEON_MARCH])
    return exe


@pytest.mark.parametrize("path", list(NEON_PATHS))
def test_neon_kernel_check_under_qemu(cross, neon_exe, path):
    _, runner = cross
    qemu_args, env, dotprod = NEON_PATHS[path]
    out = _run([runner[0], *qemu_args, *runner[1:], str(neon_exe), "3"], env)
    assert out.startswith("kernel_check arch=aarch64 ")
    assert out.splitlines()[0].endswith(f" dotprod={dotprod}"), out.splitlines()[0]
    avail, per, _ = _parse(out)
    assert avail["neon"] and not avail["avx2"] and not avail["avx512"]
    assert set(per) == {"scalar", "neon"}
    _assert_level_checked(out, "neon")


@pytest.fixture(scope="module")
def neon_san_exe(cross, tmp_path_factory):
    """the driver built for AArch64 with ASan + UBSan; skips when sanitized programs cannot run"""
    cc, runner = cross
    tmp = tmp_path_factory.mktemp("neon_san")
    why = _sanitizer_works(cc, tmp, SANITIZE, runner, QEMU_SAN_ENV)
    if why:
        pytest.skip(why)
    exe = tmp / "kernel_check_aarch64_san"
    _compile(cc, exe, [*SANITIZE, "-std=c11", "-D_GNU_SOURCE", "-pthread", NEON_MARCH])
    return exe


@pytest.mark.parametrize("path", ["dotprod", "forced-baseline"])
def test_neon_kernel_check_under_qemu_sanitized(cross, neon_san_exe, path):
    _, runner = cross
    qemu_args, env, dotprod = NEON_PATHS[path]
    # without the fp16 sweep, which the plain runs do (slow here)
    out = _run([runner[0], *qemu_args, *runner[1:], str(neon_san_exe), "-q", "--no-exhaustive", "4"],
               {**QEMU_SAN_ENV, **env})
    assert out.splitlines()[0].endswith(f" dotprod={dotprod}"), out.splitlines()[0]
    avail, per, (_, failures) = _parse(out)
    assert avail["neon"] and failures == 0 and per["neon"][0] == per["scalar"][0] > 0

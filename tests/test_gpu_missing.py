"""Without wgpu (the optional extra "gpu"), everything but --device gpu works, and that says what is
missing; these run on every machine."""
import importlib.util
import os
import subprocess
import sys

import pytest

from larosa.runtime import gpu


def test_missing_wgpu_says_how_to_install(monkeypatch):
    monkeypatch.delenv("LAROSA_WGPU_LIB", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(gpu.GPUUnavailable, match=r'pip install "larosa\[gpu\]"'):
        gpu.wgpu_library()


def test_device_names_are_checked():
    with pytest.raises(ValueError, match="'gpu', 'cpu' or 'auto'"):
        gpu.resolve("cuda")
    assert gpu.resolve("cpu") == "cpu"


def test_run_cli_reports_a_missing_library(converted):
    env = dict(os.environ, LAROSA_WGPU_LIB="/nonexistent/libwgpu_native.so")
    code = "import sys; from larosa.runtime.cli import run_main; sys.exit(run_main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "-m", converted["tied_q8"], "-p", "x", "--device", "gpu"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "LAROSA_WGPU_LIB=/nonexistent/libwgpu_native.so: no such file" in r.stderr, r.stderr


@pytest.mark.parametrize("prog", ["chat", "server"])
def test_chat_and_server_report_a_missing_library(converted, prog):
    env = dict(os.environ, LAROSA_WGPU_LIB="/nonexistent/libwgpu_native.so")
    main = {"chat": "from larosa.runtime.chat_cli import main", "server": "from larosa.runtime.server import main"}[prog]
    code = f"import sys; {main}; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "-m", converted["tied_q8"], "--device", "gpu"],
                       capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"larosa-{prog}: error:" in r.stderr and "LAROSA_WGPU_LIB=/nonexistent/libwgpu_native.so: no such file" in r.stderr

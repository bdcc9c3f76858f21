"""Helpers of the larosa-server tests: a server in a thread of the test process (its state can be
inspected), one in a subprocess (for signals and memory), and plain HTTP / server-sent events."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import uvicorn

from larosa.runtime import server as S


class ThreadServer:
    """larosa-server on a free loopback port, served by uvicorn in a thread."""

    def __init__(self, argv: list[str]):
        a = S.parse_args(argv + ["--port", "0"])
        self.state = S.load_state(a)
        self.app = S.build_app(self.state, a.cors_origin)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=a.host, port=0, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pool(self) -> S.SlotPool:
        return self.state.pool

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextmanager
def thread_server(argv: list[str]) -> Iterator[ThreadServer]:
    srv = ThreadServer(argv)
    try:
        yield srv
    finally:
        srv.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessServer:
    """The larosa-server command in a subprocess; ready once /health answers."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "larosa.runtime.server", *argv, "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _ = request(self.port, "GET", "/health", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"larosa-server did not start:\n{self.proc.communicate()[0]}")
            time.sleep(0.1)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

    def terminate(self, timeout: float = 30) -> tuple[int, str]:
        """SIGTERM; the exit status and everything the server printed."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def request(port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
            raw: bytes | None = None, timeout: float = 60) -> tuple[int, Any]:
    """One plain HTTP request; the status and the body (parsed when it is JSON)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"Content-Type": "application/json", **(headers or {})}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        text = r.read()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text
    finally:
        c.close()


class EventStream:
    """A streaming request read event by event, that can be dropped mid-stream (close())."""

    def __init__(self, port: int, path: str, body: dict, headers: dict[str, str] | None = None, timeout: float = 60):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("POST", path, body=json.dumps({**body, "stream": True}).encode(),
                          headers={"Content-Type": "application/json", **(headers or {})})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def events(self) -> Iterator[Any]:
        """The data of each event: a dict, or the string "[DONE]"."""
        data = []
        for line in self.resp:
            line = line.decode().rstrip("\r\n")
            if line.startswith("data: "):
                data.append(line[6:])
            elif not line and data:
                text = "\n".join(data)
                data = []
                yield text if text == "[DONE]" else json.loads(text)

    def close(self) -> None:
        """Drops the connection (the socket is shut down: the server sees the client go)."""
        with_sock = self.conn.sock
        if with_sock is not None:
            with_sock.shutdown(socket.SHUT_RDWR)
        self.resp.close()
        self.conn.close()


def chat_text(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events
                   if isinstance(e, dict) and e.get("choices"))


def wait_for(cond, timeout: float = 10, step: float = 0.01) -> float:
    """Seconds until cond() is true; AssertionError after timeout."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(step)
    return time.monotonic() - t0

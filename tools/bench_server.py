"""larosa-server's overhead: time to first token and decode tok/s through the server (the openai
client, streaming, loopback) against the Python API (create_chat_completion, streaming) on the same
model and threads, and requests per second with 1 and 2 slots.

    python -m larosa.tools.bench_server -m smollm2.larosa-q8_0.gguf [-t 1] [--runs 5]
"""
from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

PROMPTS = [f"Story {i}: write a long story about a {w}." for i, w in
           enumerate(["cat", "dog", "ship", "robot", "garden", "river", "clock", "mountain"])]


def timed(stream, content) -> tuple[float, float, int]:
    """(time to first token, decode tok/s after it, pieces) of a stream of chunks."""
    t0, first, n = time.perf_counter(), None, 0
    for chunk in stream:
        if content(chunk):
            n += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return first - t0, (n - 1) / (end - first), n


def serve(path: str, threads: int, slots: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "larosa.runtime.server", "-m", path, "-t", str(threads),
                             "-np", str(slots), "-c", "1024", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    import openai
    client = openai.OpenAI(base_url=url, api_key="-", max_retries=0)
    for _ in range(300):
        try:
            client.models.list()
            return proc, url
        except openai.APIConnectionError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_server", description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-t", "--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("-n", "--max-tokens", type=int, default=128)
    a = p.parse_args(argv)
    import openai

    from larosa.runtime import Model, create_chat_completion
    msgs = [[{"role": "user", "content": q}] for q in PROMPTS[:a.runs]]
    m = Model(a.model, n_threads=a.threads, n_ctx=1024)
    api = [timed(create_chat_completion(m, x, max_tokens=a.max_tokens, temperature=0, stream=True),
                 lambda c: c["choices"][0]["delta"].get("content")) for x in msgs]
    del m
    proc, url = serve(a.model, a.threads, 1)
    try:
        c = openai.OpenAI(base_url=url, api_key="-", max_retries=0)
        model = c.models.list().data[0].id
        srv = [timed(c.chat.completions.create(model=model, messages=x, max_tokens=a.max_tokens, temperature=0,
                                               stream=True), lambda ch: ch.choices and ch.choices[0].delta.content)
               for x in msgs]
    finally:
        proc.terminate()
        proc.wait()
    med = lambda rows, i: statistics.median(r[i] for r in rows)   # noqa: E731
    print(f"{a.runs} greedy replies of up to {a.max_tokens} tokens, {a.threads} thread(s), medians:")
    for name, rows in (("Python API", api), ("server", srv)):
        print(f"  {name:10s}  time to first token {med(rows, 0) * 1e3:6.1f} ms   decode {med(rows, 1):6.1f} tok/s")
    for slots in (1, 2):
        proc, url = serve(a.model, a.threads, slots)
        try:
            c = openai.OpenAI(base_url=url, api_key="-", max_retries=0)
            model = c.models.list().data[0].id

            def one(i: int) -> int:
                r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPTS[i % 8]}],
                                              max_tokens=32, temperature=0)
                return r.usage.completion_tokens
            t0 = time.perf_counter()
            with ThreadPoolExecutor(4) as ex:
                tokens = sum(ex.map(one, range(16)))
            dt = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait()
        print(f"  -np {slots} x -t {a.threads}: 16 requests (4 clients, up to 32 tokens each) "
              f"{16 / dt:.2f} req/s, {tokens / dt:.1f} generated tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

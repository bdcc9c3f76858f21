"""larosa-server under concurrency: slots, the bounded queue (503), a client that disconnects frees its
slot at once, a load of 8 clients x 20 requests, and SIGTERM."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from larosa.runtime import Model, create_chat_completion
from server_helpers import EventStream, ProcessServer, chat_text, request, thread_server, wait_for

COUNT = {"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 400, "temperature": 0}   # greedy counting: no early end


def idle(srv) -> int:
    return request(srv.port, "GET", "/health")[1]["slots_idle"]


@pytest.fixture(scope="module")
def srv(smollm2_q8):
    with thread_server(["-m", smollm2_q8, "-np", "2", "-t", "1", "-c", "512", "--queue-size", "1"]) as s:
        yield s


def test_slots_queue_full_and_disconnect_frees_the_slot(srv):
    a = EventStream(srv.port, "/v1/completions", COUNT)
    b = EventStream(srv.port, "/v1/completions", COUNT)
    ea, eb = a.events(), b.events()
    first_b = (next(ea), next(eb))[1]                  # both are generating
    assert idle(srv) == 0
    # a third request waits in the queue; a fourth finds it full: 503
    queued: dict = {}
    t = threading.Thread(target=lambda: queued.update(r=request(srv.port, "POST", "/v1/completions",
                                                                {"prompt": "Hello", "max_tokens": 3})))
    t.start()
    wait_for(lambda: request(srv.port, "GET", "/health")[1]["queued"] == 1)
    status, err = request(srv.port, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
    assert status == 503 and err["error"]["code"] == "queue_full" and err["error"]["type"] == "unavailable_error"
    # a drops mid-stream: its generation stops and the queued request gets its slot at once
    n_a = len([next(ea) for _ in range(5)])
    a.close()
    t0 = time.monotonic()
    t.join(timeout=10)
    assert not t.is_alive() and queued["r"][0] == 200, queued
    assert time.monotonic() - t0 < 2.0
    assert queued["r"][1]["usage"]["completion_tokens"] == 3
    # b goes on meanwhile, then drops too: both slots idle, neither generated its 400 tokens
    assert next(eb)["choices"][0]["text"]
    b.close()
    assert wait_for(lambda: idle(srv) == 2, timeout=2) < 2
    for s in srv.pool.slots:
        assert len(s.model.tokens) < 300, "a cancelled generation ran on"
    assert n_a == 5 and first_b["choices"][0]["finish_reason"] is None


def test_a_queued_client_that_leaves_gives_its_place_back(srv):
    a = EventStream(srv.port, "/v1/completions", COUNT)
    b = EventStream(srv.port, "/v1/completions", COUNT)
    next(a.events()), next(b.events())
    body = json.dumps({"prompt": "Hi", "max_tokens": 2}).encode()
    c = socket.create_connection(("127.0.0.1", srv.port))
    c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    wait_for(lambda: request(srv.port, "GET", "/health")[1]["queued"] == 1)
    c.shutdown(socket.SHUT_RDWR)
    c.close()
    wait_for(lambda: request(srv.port, "GET", "/health")[1]["queued"] == 0, timeout=2)
    a.close(), b.close()
    wait_for(lambda: idle(srv) == 2, timeout=5)
    assert all(len(s.model.tokens) < 300 for s in srv.pool.slots)


def test_non_streaming_client_that_disconnects_frees_the_slot(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port)
    conn.request("POST", "/v1/completions", body=json.dumps(COUNT), headers={"Content-Type": "application/json"})
    wait_for(lambda: idle(srv) == 1)
    time.sleep(0.3)                                      # generating
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    assert wait_for(lambda: idle(srv) == 2, timeout=2) < 1.0
    assert all(len(s.model.tokens) < 300 for s in srv.pool.slots)


def test_load_8_clients_x_20_requests(smollm2_q8):
    """Streams, plain requests, cancellations and invalid requests mixed: every valid request gets the
    Python API's greedy answer, none is lost, the slots are reused, and the server's memory stays flat."""
    prompts = [f"Give me one word that rhymes with {w}." for w in ("cat", "sun", "tree", "blue")]
    ref = Model(smollm2_q8, n_threads=1, n_ctx=512)
    want = {p: create_chat_completion(ref, [{"role": "user", "content": p}], max_tokens=6, temperature=0)
            ["choices"][0]["message"]["content"] for p in prompts}
    srv = ProcessServer(["-m", smollm2_q8, "-np", "2", "-t", "1", "-c", "512", "--queue-size", "8"])
    try:
        def one(i: int, j: int):
            kind, p = (i + j) % 4, prompts[(i * 3 + j) % 4]
            body = {"messages": [{"role": "user", "content": p}], "max_tokens": 6, "temperature": 0}
            if kind == 0:      # plain
                status, r = request(srv.port, "POST", "/v1/chat/completions", body)
                assert status == 200, r
                return "plain", r["choices"][0]["message"]["content"] == want[p], r["larosa"]["id_slot"]
            if kind == 1:      # stream
                s = EventStream(srv.port, "/v1/chat/completions", body)
                events = list(s.events())
                s.close()
                assert events[-1] == "[DONE]"
                return "stream", chat_text(events) == want[p], events[-2]["larosa"]["id_slot"]
            if kind == 2:      # cancelled after its first event
                s = EventStream(srv.port, "/v1/chat/completions", {**body, "max_tokens": 200})
                first = next(s.events())
                s.close()
                return "cancel", first["choices"][0]["delta"] == {"role": "assistant"}, None
            bad = [b'{"messages": ', {"messages": [], "max_tokens": 6}, {"messages": "x"}, {**body, "top_k": 1.5}]
            b = bad[(i + j) % len(bad)]
            status, r = request(srv.port, "POST", "/v1/chat/completions", None if isinstance(b, bytes) else b,
                                raw=b if isinstance(b, bytes) else None)
            return "invalid", status == 400 and "error" in r, None

        def client(i: int):
            return [one(i, j) for j in range(20)]
        with ThreadPoolExecutor(8) as ex:          # a first round warms the server up
            list(ex.map(client, range(8)))
        rss0 = srv.rss_mib()
        with ThreadPoolExecutor(8) as ex:
            results = [r for rs in ex.map(client, range(8)) for r in rs]
        rss1 = srv.rss_mib()
        assert len(results) == 160 and all(ok for _, ok, _ in results), [r for r in results if not r[1]]
        kinds = {k: sum(1 for r in results if r[0] == k) for k in ("plain", "stream", "cancel", "invalid")}
        assert kinds == {"plain": 40, "stream": 40, "cancel": 40, "invalid": 40}
        slots = [s for _, _, s in results if s is not None]
        assert slots.count(0) > 10 and slots.count(1) > 10
        assert rss1 - rss0 < 24, f"server memory grew {rss0:.0f} -> {rss1:.0f} MiB"
        print(f"server RSS after the warm-up round {rss0:.1f} MiB, after 160 more requests {rss1:.1f} MiB")
        # the last cancelled streams stop within a token of their client leaving
        wait_for(lambda: request(srv.port, "GET", "/health")[1] ==
                 {"status": "ok", "slots_idle": 2, "slots_processing": 0, "queued": 0}, timeout=2)
    finally:
        srv.kill()


def test_sigterm_stops_taking_work_cancels_what_runs_and_exits(smollm2_q8):
    srv = ProcessServer(["-m", smollm2_q8, "-np", "1", "-t", "1", "-c", "512", "--shutdown-timeout", "1"])
    try:
        s = EventStream(srv.port, "/v1/completions", COUNT)
        events = s.events()
        next(events)
        queued: dict = {}
        t = threading.Thread(target=lambda: queued.update(r=request(srv.port, "POST", "/v1/completions",
                                                                    {"prompt": "Hi", "max_tokens": 2})))
        t.start()
        wait_for(lambda: request(srv.port, "GET", "/health")[1]["queued"] == 1)
        t0 = time.monotonic()
        rc, out = srv.terminate(timeout=20)
        took = time.monotonic() - t0
        t.join(timeout=5)
        assert rc == 0 and took < 6, (rc, took, out)
        assert queued["r"][0] == 503 and queued["r"][1]["error"]["code"] == "shutting_down"
        rest = list(events)                 # cancelled after the grace period: it ends with an error event
        assert 5 < len(rest) < 350 and "[DONE]" not in rest
        assert rest[-1]["error"]["code"] == "shutting_down", rest[-1]
        assert "Application shutdown complete" in out and "Traceback" not in out
        with pytest.raises(OSError):
            request(srv.port, "GET", "/health", timeout=1)
    finally:
        srv.kill()


def test_sigterm_lets_a_short_request_finish(smollm2_q8):
    srv = ProcessServer(["-m", smollm2_q8, "-t", "1", "-c", "256"])
    try:
        s = EventStream(srv.port, "/v1/completions", {**COUNT, "max_tokens": 40,
                                                      "stream_options": {"include_usage": True}})
        events = s.events()
        first = next(events)
        srv.proc.send_signal(__import__("signal").SIGTERM)
        rest = list(events)
        assert rest[-1] == "[DONE]" and rest[-3]["choices"][0]["finish_reason"] == "length"
        assert rest[-2]["usage"]["completion_tokens"] == 40 and first["choices"][0]["text"]
        assert srv.proc.wait(timeout=20) == 0
    finally:
        srv.kill()


def test_the_slot_is_free_when_the_reply_ends():
    """A reply's last item arrives only after its slot is released: a client that reads the reply and
    then asks /health (or sends the next request) finds the slot idle. The release used to run a loop
    iteration after the reply had ended (seen as test_server's /health reporting a busy slot)."""
    import asyncio
    from larosa.runtime.server_slots import SlotPool

    class Fake:   # what the pool reads of a slot's model
        cancel, sparsity, tokens = None, 0.0, []

    async def main():
        pool = SlotPool([Fake()], queue_size=1)
        seen = []
        for n in (0, 1, 3):
            slot = await pool.acquire([1, 2], 0.0)
            assert slot.busy
            seen.append([x async for x in pool.run(slot, lambda m, n=n: iter(range(n)))])
            assert not slot.busy, f"{n} items: the slot is still busy after the reply ended"
        # a job that fails is answered with its error, the slot free by then too
        slot = await pool.acquire([1], 0.0)

        def bad(m):
            yield 1
            raise ValueError("boom")
        with pytest.raises(ValueError):
            async for _ in pool.run(slot, bad):
                pass
        assert not slot.busy
        pool.close()
        return seen

    assert asyncio.run(main()) == [[], [0], [0, 1, 2]]

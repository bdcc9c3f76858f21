"""larosa-server: an OpenAI-compatible HTTP server on loopback (the endpoints and shapes of
llama-server and llama-cpp-python's server), on starlette + uvicorn.

    larosa-server -m smollm2.larosa-q8_0.gguf -np 2
    curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "Hi"}]}'

GET /v1/models, POST /v1/completions, POST /v1/chat/completions (stream: true gives server-sent
events ending in `data: [DONE]`), GET /health, and a chat page at /.

Slots: -np Model objects, each with its own context, so a follow-up turn sent to the slot that
served the conversation re-uses the cached prefix (a request goes to the idle slot whose cache
shares the longest prefix with its prompt). Requests wait in a bounded queue while every slot is
busy; a full queue answers 503. Generation runs in one thread per slot (the C calls release the
GIL); a client that goes away sets its slot's cancel flag, which the next model call sees (between
two tokens, or two prompt chunks), so the slot is free again at once.

Chat requests go through chat.create_chat_completion unchanged: the model's template in the
sandbox, message text that never becomes control tokens, the same text as the Python API.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import importlib.resources
import json
import logging
import math
import os
import signal
import sys
import time
import uuid
import warnings
from contextlib import asynccontextmanager, suppress
from typing import Any, AsyncIterator, Callable, Iterator

from pydantic import ValidationError

from .cli import add_device_arg, add_kv_args
from .errors import LarosaError
from .generate import text_pieces
from .server_api import ApiError, Cancelled, ChatBody, CompletionBody, _Body, _validation_error
from .server_slots import Slot, SlotPool, _slot_model_class

PROG = "larosa-server"
MAX_BODY = 8 << 20              # bytes of a request body (a full 128k-token context is ~0.5 MiB of text)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
log = logging.getLogger("larosa.server")


# -- generation jobs (run in a slot's thread) ---------------------------------------------------
def _extras(model, slot: Slot, prompt_len: int) -> dict[str, Any]:
    """larosa's additions to a response: llama-server's `timings`, and `larosa` (sparsity, the
    fraction of block weight bytes skipped over this request, the slot)."""
    t = model.timings
    skipped = model.skipped_fraction()
    return {"timings": {"cache_n": prompt_len - t.prompt_tokens, "prompt_n": t.prompt_tokens,
                        "prompt_ms": t.prompt_seconds * 1e3, "prompt_per_second": t.prompt_tps,
                        "predicted_n": t.decode_tokens, "predicted_ms": t.decode_seconds * 1e3,
                        "predicted_per_second": t.decode_tps},
            "larosa": {"sparsity": round(model.sparsity, 6), "id_slot": slot.id,
                       "skipped_fraction": None if math.isnan(skipped) else skipped}}


def _prepare(model, sparsity: float) -> None:
    if model.sparsity != sparsity:
        model.set_sparsity(sparsity)        # drops the slot's cache: it was made at another sparsity
    model.rows_read(reset=True)


def _completion_pieces(model, prompt: list[int], n: int, stops: list[str], sampling) -> Iterator[str]:
    """Text pieces of a completion, as generate.generate_text makes them (the text goes on from the
    prompt's; a stop string ends it, not included; a tail that may begin one is held back), but
    drawn through model.generate_tokens so that the slot model counts the tokens."""
    return text_pieces(model.generate_tokens(prompt, n, sampling), model.tokenizer.stream(context=prompt),
                       model.tokenizer.is_eog, stops)


def _finish_reason(model, end_ids: frozenset[int] = frozenset()) -> str:
    """"stop" when the generation ended before its limit (an end-of-generation token, a stop
    string), "length" when it ran to max_tokens or a full context."""
    last = model.yielded[-1] if model.yielded else -1
    if model.tokenizer.is_eog(last) or last in end_ids or not model.exhausted:
        return "stop"
    return "length"


def _completion_tokens(model, end_ids: frozenset[int] = frozenset()) -> int:
    """Tokens generated, less a final end-of-generation (or end-of-turn) token."""
    n = len(model.yielded)
    return n - 1 if n and (model.tokenizer.is_eog(model.yielded[-1]) or model.yielded[-1] in end_ids) else n


# -- the app -------------------------------------------------------------------------------------
class ServerState:
    """What the endpoints share: the pool, the chat setup, the served model's id and options."""

    def __init__(self, pool: SlotPool, setup, model_id: str, sparsity: float, api_key: str | None,
                 allowed_hosts: set[str] | None):
        self.pool, self.setup, self.model_id, self.sparsity = pool, setup, model_id, sparsity
        self.api_key, self.allowed_hosts = api_key, allowed_hosts
        self.front = pool.slots[0].model    # its tokenizer and template, for the checks before a slot
        self.created = int(time.time())


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _context_error(n: int, n_ctx: int, what: str) -> ApiError:
    return ApiError(400, f"the {what} is {n} tokens and leaves no room for a reply in the context of "
                         f"n_ctx = {n_ctx} tokens: shorten it or start the server with a larger -c",
                    param="messages" if what == "conversation" else "prompt", code="context_length_exceeded")


def build_app(state: ServerState, cors_origins: list[str] | None = None):
    """The ASGI app (starlette) for a ServerState."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from .chat import ChatTemplateError, create_chat_completion, format_chat
    from .generate import Sampling

    def error(e: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    class EventStream(StreamingResponse):
        """Server-sent events; the events' generator is closed however the response ends (a client
        that disconnects cancels the stream: closing it sets the slot's cancel flag)."""

        def __init__(self, events: AsyncIterator[str]):
            super().__init__(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            self.events = events

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                with suppress(RuntimeError):
                    await self.events.aclose()

    async def read_body(request: Request, schema: type[_Body]) -> _Body:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":   # also keeps browsers' cross-origin "simple" POSTs out
            raise ApiError(415, "send the request body as JSON with Content-Type: application/json")
        length = request.headers.get("content-length") or "0"
        if length.isdigit() and int(length) > MAX_BODY:
            raise ApiError(413, f"the request body is over {MAX_BODY >> 20} MiB")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise ApiError(413, f"the request body is over {MAX_BODY >> 20} MiB")
        try:
            req = schema.model_validate_json(bytes(body))
        except ValidationError as e:
            raise _validation_error(e) from None
        req.check()
        if req.model is not None and req.model != state.model_id:
            raise ApiError(404, f"the model {req.model!r} does not exist: this server serves "
                                f"{state.model_id!r} (GET /v1/models)", param="model", code="model_not_found")
        try:
            Sampling(**req.sampling())
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        if req.sparsity is not None:
            try:
                if not 0 <= req.sparsity < 1:
                    raise ValueError(f"sparsity must be in [0, 1), got {req.sparsity}")
                state.front.file.selection(req.sparsity)    # what set_sparsity would refuse
            except ValueError as e:
                raise ApiError(400, str(e), param="sparsity") from None
        return req

    async def until_disconnect(request: Request, work):
        """Awaits work, cancelled when the client disconnects first (then raises Cancelled)."""
        async def gone():
            while (await request.receive())["type"] != "http.disconnect":
                pass
        task, watch = asyncio.ensure_future(work), asyncio.ensure_future(gone())
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            task.cancel()
            with suppress(asyncio.CancelledError, Cancelled):
                await task
            raise Cancelled("the client disconnected")
        finally:
            watch.cancel()
            task.cancel()

    async def serve(request: Request, req: _Body, prompt: list[int], job, finish: Callable[[list], dict]):
        """Runs job in a slot: a stream of server-sent events, or one JSON object made by finish
        from the items once they are all there."""
        sparsity = state.sparsity if req.sparsity is None else req.sparsity
        try:
            slot = await until_disconnect(request, state.pool.acquire(prompt, sparsity))
        except Cancelled:
            return Response(status_code=499)    # nobody is listening
        if req.stream:
            return EventStream(sse(state.pool.run(slot, lambda m: job(m, slot, sparsity)), req))

        async def collect():
            return [item async for item in state.pool.run(slot, lambda m: job(m, slot, sparsity))]
        try:
            items = await until_disconnect(request, collect())
        except Cancelled:
            return Response(status_code=499)
        return JSONResponse(finish(items))

    async def sse(items: AsyncIterator[dict], req: _Body) -> AsyncIterator[str]:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        try:
            async for item in items:
                usage = item.pop("usage", None)
                yield _event(item)
                if include_usage and usage is not None:
                    yield _event({**_head(item), "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
        except Exception as e:   # after the headers: the error is the last event
            if isinstance(e, ApiError):
                log.info("stream ended: %s", e.message)
            else:
                log.error("stream ended by an error", exc_info=e)
                e = ApiError(500, str(e) if isinstance(e, (LarosaError, ValueError)) else
                             f"internal error ({type(e).__name__})")
            yield _event(e.body())
        finally:
            await items.aclose()

    def _event(item: dict) -> str:
        return f"data: {json.dumps(item, ensure_ascii=False, separators=(',', ':'))}\n\n"

    def _head(item: dict) -> dict:
        return {k: item[k] for k in ("id", "object", "created", "model")}

    # -- endpoints ------------------------------------------------------------------------------
    async def chat_completions(request: Request) -> Response:
        req: ChatBody = await read_body(request, ChatBody)
        model, setup = state.front, state.setup
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # the system-role fold note: said once at start-up
                prompt = await asyncio.to_thread(format_chat, model, req.messages, setup=setup)
        except ChatTemplateError as e:
            raise ApiError(400, str(e), param="messages", code="chat_template_error") from None
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        if len(prompt) >= model.n_ctx:
            raise _context_error(len(prompt), model.n_ctx, "conversation")
        end_ids = setup.stop_ids

        def job(m, slot: Slot, sparsity: float) -> Iterator[dict]:
            _prepare(m, sparsity)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                chunks = create_chat_completion(m, req.messages, max_tokens=req.max_tokens, stop=req.stop,
                                                stream=True, model_name=state.model_id, setup=setup,
                                                **req.sampling())
            try:
                for chunk in chunks:
                    if chunk["choices"][0]["finish_reason"] is not None:
                        chunk.update(_extras(m, slot, len(prompt)),
                                     usage=_usage(len(prompt), _completion_tokens(m, end_ids)))
                    yield chunk
            finally:
                chunks.close()

        def finish(chunks: list[dict]) -> dict:
            last = chunks[-1]
            content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
            return {**_head(last), "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "logprobs": None, "finish_reason": last["choices"][0]["finish_reason"]}],
                    "usage": last["usage"], "timings": last["timings"], "larosa": last["larosa"]}
        return await serve(request, req, prompt, job, finish)

    async def completions(request: Request) -> Response:
        req: CompletionBody = await read_body(request, CompletionBody)
        model = state.front
        p = req.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise ApiError(400, f"one prompt per request (got {len(p)})", param="prompt")
            p = p[0]
        prompt = await asyncio.to_thread(model.tokenize, p) if isinstance(p, str) else list(p)
        if not prompt:
            raise ApiError(400, "the prompt is empty", param="prompt")
        bad = [t for t in prompt if not 0 <= t < model.hp.n_vocab]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{model.hp.n_vocab - 1})",
                           param="prompt")
        if len(prompt) >= model.n_ctx:
            raise _context_error(len(prompt), model.n_ctx, "prompt")
        room = model.n_ctx - len(prompt)
        n = room if req.max_tokens is None or req.max_tokens <= 0 else min(req.max_tokens, room)
        stops = [s for s in req.stops() if s]
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, finish: str | None) -> dict:
            return {"id": cid, "object": "text_completion", "created": created, "model": state.model_id,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        def job(m, slot: Slot, sparsity: float) -> Iterator[dict]:
            from .generate import Sampling
            _prepare(m, sparsity)
            for piece in _completion_pieces(m, prompt, n, stops, Sampling(**req.sampling())):
                yield chunk(piece, None)
            yield {**chunk("", _finish_reason(m)), **_extras(m, slot, len(prompt)),
                   "usage": _usage(len(prompt), _completion_tokens(m))}

        def finish(chunks: list[dict]) -> dict:
            last = chunks[-1]
            text = "".join(c["choices"][0]["text"] for c in chunks)
            return {**last, "choices": [{**last["choices"][0], "text": text}]}
        return await serve(request, req, prompt, job, finish)

    async def models(request: Request) -> Response:
        m = state.front
        return JSONResponse({"object": "list", "data": [{
            "id": state.model_id, "object": "model", "created": state.created, "owned_by": "larosa",
            "meta": {"n_ctx": m.n_ctx, "n_ctx_train": m.hp.n_ctx, "n_vocab": m.hp.n_vocab,
                     "sparsity": round(state.sparsity, 6), "slots": len(state.pool.slots)}}]})

    async def health(request: Request) -> Response:
        busy = sum(s.busy for s in state.pool.slots)
        return JSONResponse({"status": "ok", "slots_idle": len(state.pool.slots) - busy,
                             "slots_processing": busy, "queued": state.pool.queued})

    page = (importlib.resources.files(__package__) / "static" / "chat.html").read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; "
                                           "script-src 'unsafe-inline'; style-src 'unsafe-inline'",
                                           "X-Content-Type-Options": "nosniff"})

    # -- middleware and error handlers ----------------------------------------------------------
    class Guard:
        """Host check (a DNS-rebinding page gets no answer from a loopback server) and API key
        (every endpoint but /health and the static page at /)."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            e = self.check(scope)
            if e is not None:
                return await error(e)(scope, receive, send)
            await self.app(scope, receive, send)

        @staticmethod
        def check(scope) -> ApiError | None:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if state.allowed_hosts is not None:
                host = headers.get("host", "")
                name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
                if name.lower() not in state.allowed_hosts:
                    return ApiError(400, f"unexpected Host header {host!r}: this server answers to "
                                         f"{', '.join(sorted(state.allowed_hosts))}", code="invalid_host")
            if state.api_key is None or scope["path"] in ("/health", "/") or scope["method"] == "OPTIONS":
                return None
            auth = headers.get("authorization", "")
            scheme, _, key = auth.partition(" ")
            if scheme.lower() != "bearer" or not key:
                return ApiError(401, "missing API key: send Authorization: Bearer <key>", code="invalid_api_key")
            if not hmac.compare_digest(key.strip().encode(), state.api_key.encode()):
                return ApiError(401, "incorrect API key", code="invalid_api_key")
            return None

    async def http_error(request: Request, exc: HTTPException) -> Response:
        msg = {404: f"no endpoint {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error(ApiError(exc.status_code, msg.get(exc.status_code, str(exc.detail)),
                              type="not_found_error" if exc.status_code == 404 else None))

    async def api_error(request: Request, exc: ApiError) -> Response:
        return error(exc)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s", request.url.path, exc_info=exc)
        return error(ApiError(500, f"internal error ({type(exc).__name__}); the server log has the details"))

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(state.pool.close)   # in-flight work was finished or cancelled

    middleware = [Middleware(Guard)]
    if cors_origins:
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                                        allow_headers=["Authorization", "Content-Type"]))
    routes = [Route("/", index), Route("/health", health), Route("/v1/models", models),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"])]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, ApiError: api_error, Exception: internal_error})


# -- start-up ------------------------------------------------------------------------------------
def load_state(a: argparse.Namespace) -> ServerState:
    """Loads -np slot models and the chat setup; LarosaError/ValueError for bad options."""
    from .chat import ChatTemplateError, chat_setup, format_chat, make_setup
    SlotModel = _slot_model_class()
    models = [SlotModel(a.model, sparsity=a.sparsity, n_threads=a.threads, n_ctx=a.ctx_size, budget=a.budget,
                        type_k=a.cache_type_k, type_v=a.cache_type_v, device=a.device) for _ in range(a.parallel)]
    front = models[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # notes are printed below
        if a.chat_template_file:
            with open(a.chat_template_file, encoding="utf-8") as f:
                setup = make_setup(front, f.read())
        else:
            setup = chat_setup(front)
        try:    # a template that refuses every conversation is refused now, not at every request
            format_chat(front, [{"role": "user", "content": "Hello"}], setup=setup)
        except ChatTemplateError as e:
            raise LarosaError(f"the chat template refuses a one-message conversation, so every "
                              f"request would fail: {e}") from None
    for note in setup.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    allowed = (LOOPBACK | {a.host.lower()}) if a.host in LOOPBACK else None
    return ServerState(SlotPool(models, a.queue_size), setup, a.alias or os.path.basename(a.model),
                       front.sparsity, a.api_key, allowed)


def _parser() -> argparse.ArgumentParser:
    threads = min(os.cpu_count() or 1, 8)
    p = argparse.ArgumentParser(prog=PROG, description="An OpenAI-compatible HTTP server for a LaRoSA model "
                                "(GET /v1/models, POST /v1/completions, POST /v1/chat/completions, GET /health, "
                                "a chat page at /).")
    p.add_argument("-m", "--model", required=True, help="LaRoSA GGUF (from larosa-convert)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("-c", "--ctx-size", type=int, help="context size of each slot (default: min(model, 4096))")
    p.add_argument("-t", "--threads", type=int,
                   help=f"CPU threads of each slot (default: {threads} divided by the slots, at least 1)")
    p.add_argument("-np", "--parallel", type=int, default=1, help="slots: requests served at once (default 1)")
    p.add_argument("--queue-size", type=int, default=16,
                   help="requests that may wait for a slot; more get 503 (default 16)")
    p.add_argument("--sparsity", type=float, help="model sparsity in [0, 1) (default: the file's)")
    p.add_argument("--budget", action=argparse.BooleanOptionalAction,
                   help="hold each token to the planned bytes (threshold files; default: as the file says)")
    add_kv_args(p)
    add_device_arg(p)   # gpu: each slot is a model on the device, its weights uploaded once per slot
    p.add_argument("-a", "--alias", help="model id in the API (default: the file's name)")
    p.add_argument("--api-key", default=os.environ.get("LAROSA_API_KEY"),
                   help="require Authorization: Bearer KEY on every endpoint but /health "
                        "(default: $LAROSA_API_KEY; the environment keeps it out of `ps`)")
    p.add_argument("--cors-origin", action="append", default=[],
                   help="allow browser pages from this origin (repeatable; default: none)")
    p.add_argument("--chat-template-file", help="a chat template (jinja) to use instead of the file's")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="on SIGTERM/Ctrl-C, seconds in-flight requests may take to finish before they "
                        "are cancelled (default 10)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked (argparse's exit 2 with a message for bad values)."""
    p = _parser()
    a = p.parse_args(argv)
    if a.parallel < 1:
        p.error("-np must be >= 1")
    if a.queue_size < 0:
        p.error("--queue-size must be >= 0")
    if a.threads is None:
        a.threads = max(1, min(os.cpu_count() or 1, 8) // a.parallel)
    if a.threads < 1:
        p.error("-t must be >= 1")
    if not 0 <= a.port < 65536:
        p.error("--port must be in 0..65535 (0: any free port)")
    if a.api_key is not None and not a.api_key.strip():
        p.error("--api-key must not be empty")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        import uvicorn
        state = load_state(a)
        app = build_app(state, a.cors_origin)
    except (LarosaError, ValueError, OSError, ImportError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):   # SIGTERM / Ctrl-C: stop taking work, answer the queue 503
            loop = getattr(self, "loop", None)
            if loop is not None:
                loop.call_soon_threadsafe(state.pool.begin_shutdown, a.shutdown_timeout)
            super().handle_exit(sig, frame)

        async def serve(self, sockets=None):
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets)

    config = uvicorn.Config(app, host=a.host, port=a.port, log_level="info", timeout_graceful_shutdown=a.shutdown_timeout + 10,
                            lifespan="on", access_log=True)
    m = state.front
    print(f"{PROG}: {state.model_id}, sparsity {m.sparsity:g}, n_ctx {m.n_ctx}, {len(state.pool.slots)} slot(s) "
          f"x {m.n_threads} thread(s), http://{a.host}:{a.port}/"
          f"{', API key required' if a.api_key else ''}", file=sys.stderr, flush=True)
    # uvicorn re-raises the signal after its graceful shutdown: with these no-op handlers the process
    # then returns 0 instead of dying by the signal (or raising KeyboardInterrupt)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

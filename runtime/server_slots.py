"""larosa-server's slots: -np Model objects, each with its own context and prompt cache, one
worker thread each, and a bounded FIFO of waiting requests (runtime/server.py serves them)."""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any, AsyncIterator, Callable, Iterator

from .server_api import ApiError, Cancelled


# -- slots ---------------------------------------------------------------------------------------
def _slot_model_class():
    from .model import Model

    class SlotModel(Model):
        """A Model whose every evaluation first checks the slot's cancel flag (so a request stops
        between two C calls), and which counts the tokens a generation yields (for usage and
        finish_reason)."""
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.cancel = threading.Event()    # replaced by each request (SlotPool.run)
            self.yielded: list[int] = []       # the tokens of the last generation
            self.exhausted = False             # it ran to its end (not closed early)

        def eval(self, tokens, all_logits=False):
            if self.cancel.is_set():
                raise Cancelled("the request was cancelled")
            return super().eval(tokens, all_logits)

        def generate_tokens(self, prompt, max_tokens=128, sampling=None):
            self.yielded, self.exhausted = [], False
            inner = super().generate_tokens(prompt, max_tokens, sampling)

            def counted() -> Iterator[int]:
                try:
                    for tok in inner:
                        self.yielded.append(tok)
                        yield tok
                    self.exhausted = True
                finally:
                    inner.close()
            return counted()

    return SlotModel


class Slot:
    def __init__(self, id: int, model):
        self.id, self.model = id, model
        self.busy = False
        self.last_used = 0.0
        self.requests = 0


_END, _CANCELLED = object(), object()


class SlotPool:
    """n slots, a FIFO of at most queue_size waiting requests, one worker thread per slot."""

    def __init__(self, models: list, queue_size: int):
        self.slots = [Slot(i, m) for i, m in enumerate(models)]
        self.queue_size = queue_size
        self.closing = False
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._executor = ThreadPoolExecutor(len(models), thread_name_prefix="larosa-slot")

    @property
    def queued(self) -> int:
        return sum(not f.done() for f in self._waiters)

    def _pick(self, prompt: list[int], sparsity: float) -> Slot | None:
        """The idle slot that would evaluate the fewest tokens: longest cached prefix at the same
        sparsity (another sparsity drops the cache), then the least recently used."""
        def score(s: Slot):
            m, common = s.model, 0
            if m.sparsity == sparsity:
                for a, b in zip(m.tokens, prompt):
                    if a != b:
                        break
                    common += 1
            return common, -s.last_used
        idle = [s for s in self.slots if not s.busy]
        return max(idle, key=score) if idle else None

    async def acquire(self, prompt: list[int], sparsity: float) -> Slot:
        if self.closing:
            raise ApiError(503, "the server is shutting down", code="shutting_down")
        slot = self._pick(prompt, sparsity)
        if slot is not None:
            slot.busy = True
            return slot
        if self.queued >= self.queue_size:
            raise ApiError(503, f"all {len(self.slots)} slots are busy and the queue is full "
                                f"({self.queue_size} waiting): retry later", code="queue_full")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:    # the client left while queued
            with suppress(ValueError):
                self._waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result())   # handed a slot just as it left
            raise

    def release(self, slot: Slot) -> None:
        slot.busy, slot.last_used = False, time.monotonic()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                slot.busy = True
                waiter.set_result(slot)
                return

    def begin_shutdown(self, grace: float) -> None:
        """No new work; the queued requests are answered 503; the running ones have grace seconds
        to finish, then they are cancelled (and end with a 503 error)."""
        self.closing = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ApiError(503, "the server is shutting down", code="shutting_down"))
        asyncio.get_running_loop().call_later(grace, self.cancel_all)

    async def run(self, slot: Slot, job: Callable[[Any], Iterator[Any]]) -> AsyncIterator[Any]:
        """The items job(model) yields in the slot's thread. Leaving early (the client went away,
        the task was cancelled) sets the cancel flag; the slot is released when its thread is done."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        cancel = slot.model.cancel = threading.Event()
        slot.requests += 1

        def emit(item: Any) -> None:
            with suppress(RuntimeError):      # the loop is closed: nobody is listening
                loop.call_soon_threadsafe(items.put_nowait, item)

        def work() -> None:
            try:
                for item in job(slot.model):
                    emit(item)
                emit(_END)
            except Cancelled:
                emit(_CANCELLED)
            except BaseException as e:        # handed to the request, which answers it
                emit(e)

        done = loop.run_in_executor(self._executor, work)
        released = False

        def free(_=None) -> None:   # once: here when the reply ends, else when the thread is done
            nonlocal released
            if not released:
                released = True
                self.release(slot)
        done.add_done_callback(free)
        try:
            while (item := await items.get()) is not _END:
                if item is _CANCELLED:
                    if self.closing:    # not the client's doing: say so (a client that left hears nothing)
                        raise ApiError(503, "the server shut down before the reply was complete",
                                       code="shutting_down")
                    return
                if isinstance(item, BaseException):
                    await done
                    free()
                    raise item
                yield item
            # the slot is free before the reply ends: a client that asks /health or sends its next
            # request on reading the reply finds it idle (done's callback may still be queued)
            await done
            free()
        finally:
            cancel.set()

    def cancel_all(self) -> None:
        for s in self.slots:
            s.model.cancel.set()

    def close(self) -> None:
        self.cancel_all()
        self._executor.shutdown(wait=True)

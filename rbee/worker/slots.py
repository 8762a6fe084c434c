"""Slots: who holds which of the worker's N sequences, and the async bridge to the decode thread.

``SlotTable`` is plain data, mutated only on the event loop without awaiting, so taking a slot is
atomic: with one slot left, of two simultaneous requests exactly one gets it.

Events travel from the decode thread to the loop through one :class:`Outbox` per pool: the first
event of a burst wakes the loop once, and everything emitted until the loop gets round to it rides
along. One wake-up per decode step instead of one per token per stream keeps the loop thread (which
competes for the same cores as llama.cpp's threads) cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from rbee.errors import ErrorCode, RbeeError

Event = dict[str, Any]


class SlotTable:
    def __init__(self, total: int) -> None:
        self.total = total
        self._holders: dict[int, str] = {}

    @property
    def busy(self) -> int:
        return len(self._holders)

    @property
    def available(self) -> int:
        return self.total - len(self._holders)

    def acquire(self, request_id: str) -> int:
        if request_id in self._holders.values():
            raise RbeeError(
                ErrorCode.INVALID_REQUEST,
                f"Request id '{request_id}' is already running on this worker. Send a unique X-Request-Id.",
            )
        free = next((i for i in range(self.total) if i not in self._holders), None)
        if free is None:
            raise RbeeError(
                ErrorCode.ALL_SLOTS_BUSY,
                f"All {self.total} slot(s) of this worker are busy. Retry shortly or use another worker.",
                {"slots_total": self.total, "slots_busy": self.busy},
            )
        self._holders[free] = request_id
        return free

    def release(self, slot: int) -> None:
        self._holders.pop(slot, None)

    def holds(self, request_id: str) -> bool:
        return request_id in self._holders.values()


class Backend(Protocol):
    """What the bridge needs of the engine (rbee.worker.engine.Engine)."""

    def submit(self, job: Any) -> None: ...
    def cancel(self, request_id: str, on_done: Callable[[bool], None]) -> None: ...


class Outbox:
    """Calls from any thread, run on the loop in order, with one loop wake-up per burst."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[Callable[..., None], tuple[Any, ...]]] = []

    def put(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            self._pending.append((fn, args))
            if len(self._pending) > 1:  # a wake-up is already on its way
                return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for fn, args in pending:
            fn(*args)


def _is_last(event: Event) -> bool:
    return bool(event.get("done")) or "error" in event


class Generation:
    """One running request as seen from the event loop: an async stream of events."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self.finished = asyncio.Event()  # set once the slot is free again

    def emit(self, event: Event) -> None:
        """Called from the decode thread."""
        self._outbox.put(self._events.put_nowait, event)

    async def events(self) -> AsyncIterator[Event]:
        async for batch in self.batches():
            for event in batch:
                yield event

    async def batches(self) -> AsyncIterator[list[Event]]:
        """Events in order, grouped as they arrived, so a slow reader writes them in one go."""
        while True:
            batch = [await self._events.get()]
            while not _is_last(batch[-1]) and not self._events.empty():
                batch.append(self._events.get_nowait())
            yield batch
            if _is_last(batch[-1]):
                return


MakeJob = Callable[[int, Callable[[Event], None], Callable[[], None]], Any]


class SlotPool:
    """Admits requests into slots, hands them to the engine, frees slots when the engine is done."""

    def __init__(self, engine: Backend, total: int) -> None:
        self.engine = engine
        self.table = SlotTable(total)
        self._running: dict[str, Generation] = {}
        self._outbox: Outbox | None = None
        self.draining = False

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self, request_id: str, make_job: MakeJob) -> Generation:
        """Take a slot and submit. ``make_job(slot, emit, on_finish)`` builds the engine's job."""
        if self.draining:
            raise RbeeError(ErrorCode.DRAINING, "This worker is shutting down. Send the request to another worker.")
        slot = self.table.acquire(request_id)
        if self._outbox is None:
            self._outbox = Outbox(asyncio.get_running_loop())
        outbox = self._outbox
        gen = Generation(outbox)

        def on_finish() -> None:  # decode thread → loop, queued behind the events emitted before it
            outbox.put(self._finished, request_id, slot, gen)

        self._running[request_id] = gen
        try:
            self.engine.submit(make_job(slot, gen.emit, on_finish))
        except BaseException:
            self._finished(request_id, slot, gen)
            raise
        return gen

    def _finished(self, request_id: str, slot: int, gen: Generation) -> None:
        self.table.release(slot)
        if self._running.get(request_id) is gen:
            del self._running[request_id]
        gen.finished.set()

    async def cancel(self, request_id: str) -> bool:
        """Stop a request; returns once its slot is free. Unknown ids are fine (idempotent)."""
        gen = self._running.get(request_id)
        if gen is None:
            return False
        loop = asyncio.get_running_loop()
        acknowledged = loop.create_future()

        def on_done(found: bool) -> None:  # decode thread
            loop.call_soon_threadsafe(lambda: acknowledged.done() or acknowledged.set_result(found))

        self.engine.cancel(request_id, on_done)
        await acknowledged
        await gen.finished.wait()
        return True

    async def cancel_all(self) -> int:
        ids = list(self._running)
        await asyncio.gather(*(self.cancel(i) for i in ids))
        return len(ids)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing runs; False if something still runs after ``timeout`` seconds."""
        waits = [g.finished.wait() for g in self._running.values()]
        if not waits:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
            return True
        except TimeoutError:
            return False

"""Slots: who holds which of the worker's N sequences, and the async bridge to the decode thread.

``SlotTable`` is plain data, mutated only on the event loop without awaiting, so taking a slot is
atomic: with one slot left, of two simultaneous requests exactly one gets it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

from rbee.errors import ErrorCode, RbeeError


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
    def cancel(self, request_id: str, on_done: Any) -> None: ...


class Generation:
    """One running request as seen from the event loop: an async stream of events."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.finished = asyncio.Event()

    # Called from the decode thread.
    def emit(self, event: dict[str, Any]) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            event = await self._events.get()
            yield event
            if event.get("done") or "error" in event:
                return


class SlotPool:
    """Admits requests into slots, hands them to the engine, frees slots when the engine is done."""

    def __init__(self, engine: Backend, total: int) -> None:
        self.engine = engine
        self.table = SlotTable(total)
        self._running: dict[str, Generation] = {}
        self.draining = False

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self, request_id: str, make_job: Any) -> Generation:
        """Take a slot and submit. ``make_job(slot, generation)`` builds the engine's job."""
        if self.draining:
            raise RbeeError(ErrorCode.DRAINING, "This worker is shutting down. Send the request to another worker.")
        slot = self.table.acquire(request_id)
        loop = asyncio.get_running_loop()
        gen = Generation(loop)

        def on_finish() -> None:  # decode thread → loop
            loop.call_soon_threadsafe(self._finished, request_id, slot, gen)

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

        def on_done(found: bool) -> None:
            loop.call_soon_threadsafe(lambda: acknowledged.done() or acknowledged.set_result(found))

        self.engine.cancel(request_id, on_done)
        await acknowledged
        await gen.finished.wait()
        return True

    async def wait_idle(self, timeout: float) -> bool:
        waits = [g.finished.wait() for g in self._running.values()]
        if not waits:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
            return True
        except TimeoutError:
            return False

"""Slots: who holds which of the worker's N sequences, and the async bridge to the decode thread.

``SlotTable`` is plain data, mutated only on the event loop without awaiting, so taking a slot is
atomic: with one slot left, of two simultaneous requests exactly one gets it.

Events travel from the decode thread to the loop through one :class:`Outbox` per pool: the first
event of a burst wakes the loop once, and everything emitted until the loop gets round to it rides
along. One wake-up per decode step instead of one per token per stream keeps the loop thread (which
competes for the same cores as llama.cpp's threads) cheap.

With an engine that says when its burst is over (``set_flush``), the outbox does not wake the loop
on each event at all: the engine flushes once a step, right before it calls into llama.cpp, so the
loop writes the step's tokens while llama.cpp computes the next ones (with the GIL free) instead of
in between. The wake-up itself must not let go of the GIL either: asyncio's own
(``call_soon_threadsafe``) sends on a socket, which releases it, and the loop thread, woken on
another core, takes it and writes every stream before the decode thread gets it back. So on Linux
the outbox wakes the loop through its own eventfd, written by a libc call that keeps the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from rbee.errors import ErrorCode, RbeeError
from rbee.events import EngineEvent, is_last
from rbee.worker.engine_api import Emit, Job, Work

Observe = Callable[[Emit, str], Emit]  # (a job's emit, its request id) -> the emit to use



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

    def acquire(self, request_id: str, rank: Callable[[list[int]], list[int]] | None = None) -> int:
        """Take a free slot: the first of ``rank(free slots)`` when given (the engine's prompt cache
        orders them by what they hold), else the lowest."""
        if request_id in self._holders.values():
            raise RbeeError(
                ErrorCode.INVALID_REQUEST,
                f"Request id '{request_id}' is already running on this worker. Send a unique X-Request-Id.",
            )
        free = [i for i in range(self.total) if i not in self._holders]
        if not free:
            raise RbeeError(
                ErrorCode.ALL_SLOTS_BUSY,
                f"All {self.total} slot(s) of this worker are busy. Retry shortly or use another worker.",
                {"slots_total": self.total, "slots_busy": self.busy},
            )
        slot = rank(free)[0] if rank is not None else free[0]
        self._holders[slot] = request_id
        return slot

    def release(self, slot: int) -> None:
        self._holders.pop(slot, None)

    def holds(self, request_id: str) -> bool:
        return request_id in self._holders.values()


class Backend(Protocol):
    """What the bridge needs of the engine (rbee.worker.engine.Engine)."""

    def submit(self, job: Job) -> None: ...
    def cancel(self, request_id: str, on_done: Callable[[bool], None]) -> None: ...


def _gil_holding_write() -> Callable[[int, Any, int], int] | None:
    """libc ``write`` called without releasing the GIL (ctypes.PyDLL), where there is one."""
    try:
        write = ctypes.PyDLL(None).write
    except (OSError, AttributeError):
        return None
    write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    write.restype = ctypes.c_ssize_t
    return write


class _EventFdWaker:
    """Runs ``callback`` on the loop when :meth:`wake` is called from another thread, keeping the GIL."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None],
                 write: Callable[[int, Any, int], int]) -> None:
        self._loop = loop
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._one = ctypes.c_uint64(1)
        self._write = write
        self._callback = callback
        loop.add_reader(self._fd, self._readable)

    def wake(self) -> None:
        self._write(self._fd, ctypes.byref(self._one), 8)  # a closed fd (shutting down) just fails

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._fd)
        self._callback()

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


class Outbox:
    """Calls from any thread, run on the loop in order, with one loop wake-up per burst.

    ``deferred``: :meth:`put` only queues, and nothing reaches the loop until someone calls
    :meth:`flush` (the engine, once a step and before it blocks); then the wake-up keeps the GIL
    where the platform allows (see the module's docstring).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, deferred: bool = False) -> None:
        self._loop = loop
        self._deferred = deferred
        self._lock = threading.Lock()
        self._pending: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._woken = False  # a wake-up is on its way: what is put now rides along with it
        self._waker: _EventFdWaker | None = None
        write = _gil_holding_write() if deferred and hasattr(os, "eventfd") else None
        if write is not None:
            self._waker = _EventFdWaker(loop, self._deliver, write)

    def put(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            self._pending.append((fn, args))
            if self._deferred or self._woken:
                return
            self._woken = True
        self._wake()

    def flush(self) -> None:
        """Hand what was put so far to the loop (one wake-up; none when there is nothing new)."""
        with self._lock:
            if not self._pending or self._woken:
                return
            self._woken = True
        self._wake()

    def _wake(self) -> None:
        if self._waker is not None:
            self._waker.wake()
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self._loop.call_soon_threadsafe(self._deliver)

    def close(self) -> None:
        """Stop listening (on the loop, once nothing emits any more)."""
        if self._waker is not None:
            self._waker.close()

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._woken = False
        for fn, args in pending:
            fn(*args)


class Generation:
    """One running request as seen from the event loop: an async stream of events."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self.finished = asyncio.Event()  # set once the slot is free again

    def emit(self, event: EngineEvent) -> None:
        """Called from the decode thread."""
        self._outbox.put(self._events.put_nowait, event)

    async def events(self) -> AsyncIterator[EngineEvent]:
        async for batch in self.batches():
            for event in batch:
                yield event

    async def batches(self) -> AsyncIterator[list[EngineEvent]]:
        """Events in order, grouped as they arrived, so a slow reader writes them in one go."""
        while True:
            batch = [await self._events.get()]
            while not is_last(batch[-1]) and not self._events.empty():
                batch.append(self._events.get_nowait())
            yield batch
            if is_last(batch[-1]):
                return


class SlotPool:
    """Admits requests into slots, hands them to the engine, frees slots when the engine is done."""

    def __init__(self, engine: Backend, total: int, observe: Observe | None = None) -> None:
        self.engine = engine
        self._observe = observe  # wraps each job's emit (metrics, the log line per generation)
        self.table = SlotTable(total)
        self._running: dict[str, Generation] = {}
        self._outbox: Outbox | None = None
        self.draining = False

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self, work: Work) -> Generation:
        """Take a slot and submit ``work`` to the engine in it."""
        request_id = work.request_id
        if self.draining:
            raise RbeeError(ErrorCode.DRAINING, "This worker is shutting down. Send the request to another worker.")
        prefer = getattr(self.engine, "prefer_slots", None)  # (work, free slots) -> them, best first
        slot = self.table.acquire(request_id, None if prefer is None else lambda free: prefer(work, free))
        if self._outbox is None:
            set_flush = getattr(self.engine, "set_flush", None)
            self._outbox = Outbox(asyncio.get_running_loop(), deferred=set_flush is not None)
            if set_flush is not None:
                set_flush(self._outbox.flush)
        outbox = self._outbox
        gen = Generation(outbox)

        def on_finish() -> None:  # decode thread → loop, queued behind the events emitted before it
            outbox.put(self._finished, request_id, slot, gen)

        self._running[request_id] = gen
        emit = gen.emit if self._observe is None else self._observe(gen.emit, request_id)
        try:
            self.engine.submit(Job(work, slot, emit, on_finish))
        except BaseException:
            self._finished(request_id, slot, gen)
            raise
        return gen

    def close(self) -> None:
        """After the engine has stopped: release the outbox's wake-up channel."""
        if self._outbox is not None:
            self._outbox.close()

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

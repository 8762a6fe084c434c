"""Admission: take a slot now, or wait in a bounded queue that is FIFO per key and fair across keys.

Pure asyncio over the registry, no aiohttp. A waiter is woken with a lease already taken for it,
so a slot that frees can never be grabbed by a newcomer ahead of someone who was waiting.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rbee.deadline import Deadline
from rbee.errors import ErrorCode, RbeeError
from rbee.events import Queued, WaitNote
from rbee.protocol import Capability
from rbee.queen.registry import Affinity, Lease, Registry

OnWait = Callable[[WaitNote], Awaitable[None]]  # why a client waits, sent to it as an SSE comment


@dataclass
class _Waiter:
    key: str
    model: str | None
    exclude: frozenset[str]
    future: asyncio.Future[Lease]
    since: float
    hive: str | None = None  # pinned to this hive's workers
    affinity: Affinity | None = None  # prefers the worker that holds its prompt prefix
    deadline: Deadline | None = None  # the request's own (rbee.deadline): it stops waiting then
    capability: Capability = Capability.GENERATE  # what it wants of a worker: generation or embeddings
    patience: float = 0.0  # seconds it may wait for the busy worker holding its prefix (see cache_wait)


class AdmissionQueue:
    def __init__(self, registry: Registry, max_size: int, timeout: float,
                 clock: Callable[[], float] = time.monotonic, cache_wait: float = 0.0) -> None:
        self.registry = registry
        self.max_size = max_size
        self.timeout = timeout
        # The longest a request that may queue waits for the busy worker holding its prompt prefix while
        # a slot is free elsewhere (a slot taken there would compute the whole prefix again); 0 = never.
        # Each request's own bound (admit's ``patience``) is what recomputing its prefix would cost.
        self.cache_wait = cache_wait
        self._recheck: asyncio.TimerHandle | None = None
        self._clock = clock
        self._by_key: OrderedDict[str, deque[_Waiter]] = OrderedDict()  # rotation order = dict order
        self._freed: deque[float] = deque(maxlen=64)  # when slots came back, for Retry-After
        registry.subscribe(self.pump)  # room that frees anywhere (a lease back, a worker new or back) is handed on

    def __len__(self) -> int:
        return sum(len(q) for q in self._by_key.values())

    def position(self, waiter: _Waiter) -> int:
        """1-based place in line as the rotation will serve it: keys take turns in rotation order, so
        the i-th waiter of its key goes after the first i (or i+1, for keys ahead in the rotation) of
        every other key."""
        keys = list(self._by_key)
        mine = self._by_key.get(waiter.key)
        if mine is None or waiter not in mine:
            return 1
        turn, rank = keys.index(waiter.key), mine.index(waiter)
        ahead = rank
        for i, key in enumerate(keys):
            if key != waiter.key:
                ahead += min(len(self._by_key[key]), rank + (1 if i < turn else 0))
        return ahead + 1

    def retry_after(self) -> int:
        """Seconds until the queue would likely drain, from how fast slots have been freeing."""
        now = self._clock()
        recent = [t for t in self._freed if now - t < 60]
        if len(recent) < 2:
            return 2
        rate = len(recent) / max(now - recent[0], 1e-3)
        return max(1, min(60, math.ceil((len(self) + 1) / rate)))

    async def admit(self, model: str | None, key: str = "", exclude: frozenset[str] = frozenset(),
                    on_wait: OnWait | None = None, hive: str | None = None,
                    affinity: Affinity | None = None, deadline: Deadline | None = None,
                    capability: Capability = Capability.GENERATE, patience: float | None = None) -> tuple[Lease, float]:
        """A lease (on ``hive`` when given), and how many seconds we waited for it. Raises the right 503/404
        when it can't, and 504 ``DEADLINE_EXCEEDED`` when ``deadline`` passes while it waits. ``patience``:
        the most seconds worth waiting for the busy worker holding the prompt's prefix (what computing it
        again elsewhere would take); never more than ``cache_wait``, which is also the default."""
        patience = self.cache_wait if patience is None else max(0.0, min(patience, self.cache_wait))
        if not self._by_key and not self._waits_for_cache(model, exclude, hive, affinity, capability, 0.0, patience):
            try:
                return self.registry.acquire(model, exclude, hive, affinity, capability), 0.0
            except RbeeError as err:
                if err.code != ErrorCode.NO_IDLE_WORKERS or self.timeout <= 0:
                    raise
        elif not self.registry.knows_model(model, hive, exclude, capability):
            self.registry.acquire(model, exclude, hive, capability=capability)  # raises NO_WORKERS / MODEL_NOT_FOUND
        if self.timeout <= 0:
            raise self._busy()
        if len(self) >= self.max_size:
            raise self._busy(full=True)
        waiter = _Waiter(key, model, exclude, asyncio.get_running_loop().create_future(), self._clock(), hive,
                         affinity, deadline, capability, patience)
        self._by_key.setdefault(key, deque()).append(waiter)
        self.pump()
        try:
            lease = await self._wait(waiter, on_wait)
        except BaseException:
            # Timed out or the client left: a lease handed over in the meantime goes back at once.
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.registry.release(waiter.future.result())
            raise
        finally:
            self._forget(waiter)
        return lease, self._clock() - waiter.since

    async def _wait(self, waiter: _Waiter, on_wait: OnWait | None) -> Lease:
        deadline = waiter.since + self.timeout
        if waiter.deadline is not None:
            deadline = min(deadline, waiter.deadline.at)
        while not waiter.future.done():
            if on_wait is not None:  # each second: the place in line, and a keep-alive for proxies
                await on_wait(Queued(self.position(waiter)))
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            try:
                # Wake at least each second to tell a streaming client its place in line.
                await asyncio.wait_for(asyncio.shield(waiter.future), min(remaining, 1.0))
            except TimeoutError:
                continue
        if waiter.future.done():
            return waiter.future.result()
        if waiter.deadline is not None and waiter.deadline.expired(self._clock()):
            raise waiter.deadline.exceeded(
                f"in the queue, waiting for a worker for '{waiter.model or 'any model'}'",
                "Send it again with a later deadline (X-Request-Deadline, or 'timeout' in seconds), or add "
                "workers for this model.", self._clock())
        raise RbeeError(
            ErrorCode.QUEUE_TIMEOUT,
            f"No worker freed up within {self.timeout:g}s. Retry later, or add workers for this model.",
            {"queue_timeout_s": self.timeout},
            retry_after=self.retry_after(),
        )

    def _forget(self, waiter: _Waiter) -> None:
        q = self._by_key.get(waiter.key)
        if q is not None and waiter in q:
            q.remove(waiter)
            if not q:
                del self._by_key[waiter.key]
        if not waiter.future.done():
            waiter.future.cancel()

    def pump(self) -> None:
        """Hand free slots to waiters: keys take turns, each key's own requests in arrival order. A
        key's request that cannot be served yet (its model has no room) does not hold up the same
        key's later requests for a model that has."""
        self._fail_orphans()
        progress = True
        while progress and self._by_key:
            progress = False
            for key in list(self._by_key):
                q = self._by_key.get(key)
                while q and q[0].future.done():  # left already (timed out, client gone)
                    q.popleft()
                if not q:
                    self._by_key.pop(key, None)
                    continue
                if self._serve_first_servable(q):
                    self._by_key.move_to_end(key)  # served: to the back of the rotation
                    if not q:
                        self._by_key.pop(key, None)
                    progress = True
                    break

    def _fail_orphans(self) -> None:
        """Waiters for a model whose last worker left the registry (evicted for another model, stopped)
        hear so at once, as MODEL_NOT_FOUND, so the dispatcher can cold-start it again instead of
        letting them wait for nothing until the queue timeout."""
        for q in self._by_key.values():
            for w in q:
                if w.model is not None and not w.future.done() and not self.registry.registered(w.model, w.hive):
                    w.future.set_exception(RbeeError(
                        ErrorCode.MODEL_NOT_FOUND, f"No worker serves model '{w.model}' any more.",
                        {"model": w.model}))

    def _serve_first_servable(self, q: deque[_Waiter]) -> bool:
        # found without room: later ones for it wait too
        blocked: set[tuple[str | None, str | None, Capability]] = set()
        for waiter in q:
            wants = (waiter.model, waiter.hive, waiter.capability)
            if waiter.future.done() or wants in blocked:
                continue
            if self._waits_for_cache(waiter.model, waiter.exclude, waiter.hive, waiter.affinity, waiter.capability,
                                     self._clock() - waiter.since, waiter.patience):
                self._pump_at(waiter.since + waiter.patience)
                continue  # not blocked: a later request for the model may take the free slot meanwhile
            if self.registry.has_room(waiter.model, waiter.hive, waiter.capability):
                try:
                    lease = self.registry.acquire(waiter.model, waiter.exclude, waiter.hive, waiter.affinity,
                                                  waiter.capability)
                except RbeeError:
                    blocked.add(wants)
                    continue
                q.remove(waiter)
                waiter.future.set_result(lease)
                return True
            blocked.add(wants)
        return False

    def _waits_for_cache(self, model: str | None, exclude: frozenset[str], hive: str | None,
                         affinity: Affinity | None, capability: Capability, waited: float, patience: float) -> bool:
        """Better to wait (only where waiting is allowed, and no longer than ``patience``) for the busy
        worker that holds the request's prompt prefix than to take a free slot that holds little of it
        (delay scheduling)."""
        return (affinity is not None and self.timeout > 0 and waited < patience
                and self.registry.cache_is_busy(model, exclude, hive, affinity, capability))

    def _pump_at(self, when: float) -> None:
        """Pump again at ``when`` (a request's wait for its cache is over then), unless sooner is set."""
        loop = asyncio.get_running_loop()
        at = loop.time() + max(0.0, when - self._clock()) + 0.001
        if self._recheck is not None:
            if self._recheck.when() <= at:
                return
            self._recheck.cancel()
        self._recheck = loop.call_at(at, self._repump)

    def _repump(self) -> None:
        self._recheck = None
        self.pump()

    def slot_freed(self) -> None:
        """A request gave its slot back (the registry's release has handed it on): for Retry-After."""
        self._freed.append(self._clock())

    def _busy(self, full: bool = False) -> RbeeError:
        what = f"the queue is full ({self.max_size} waiting)" if full else "every worker is busy"
        return RbeeError(
            ErrorCode.NO_IDLE_WORKERS,
            f"No worker can take this request now: {what}. Retry after the Retry-After delay.",
            {"queued": len(self)},
            retry_after=self.retry_after(),
        )

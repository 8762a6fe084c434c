"""Liveness: the queen probes the workers no hive speaks for, spread evenly over each interval.

A hive heartbeats each of its workers once it has checked it (``POST /v2/workers/{id}/heartbeat``):
that heartbeat vouches for the worker, and the queen does not probe it too. Workers registered on
their own (no hive, or one whose heartbeats stopped) get one ``/v1/health`` probe per interval, the
probes of a round spread over the interval rather than all at once, so the work per second does not
grow in bursts with the fleet. A worker whose stream is visibly moving through the queen (blocks
relayed since the last round) is alive, however slow its health answer: a busy worker is never taken
out of routing because a probe timed out while it streamed.

A worker with no sign of life leaves routing after ``heartbeat_timeout`` and the registry after
``remove_after``. Leases of a removed worker die with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import aiohttp

from rbee.protocol import WorkerState
from rbee.queen.registry import Registry, WorkerRecord

log = logging.getLogger(__name__)


async def probe(session: aiohttp.ClientSession, url: str, timeout: float = 1.0) -> str | None:
    """The worker's state from its health answer ("" when it does not say), or None when it did not answer."""
    try:
        async with session.get(f"{url}/v1/health", timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            if r.status != 200:
                return None
            body = await r.json(content_type=None)
            return str(body.get("state", "")) if isinstance(body, dict) else ""
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None


def spread(count: int, interval: float) -> list[float]:
    """Offsets (seconds from the round's start) of ``count`` probes, evenly over ``interval``."""
    return [i * interval / count for i in range(count)]


async def probe_loop(registry: Registry, session: aiohttp.ClientSession, *,
                     interval: float, heartbeat_timeout: float, remove_after: float,
                     streaming: Callable[[], Iterable[str]] = tuple) -> None:
    """Each ``interval``: streams that moved count as signs of life, the unvouched workers are probed
    (spread), and the silent ones expire. ``streaming()``: ids of workers whose streams moved since it
    was last asked (:meth:`rbee.queen.dispatch.Dispatcher.streaming`)."""
    window = heartbeat_timeout / 2  # a hive's heartbeat older than this no longer spares the probe
    timeout = min(1.0, interval)
    while True:
        started = time.monotonic()
        for worker_id in streaming():
            registry.seen(worker_id)
        await _probe_round(registry, session, registry.unvouched(window), interval, timeout)
        _expire(registry, heartbeat_timeout, remove_after)  # after the round's answers are in
        await asyncio.sleep(max(0.0, started + interval - time.monotonic()))  # the probe period itself


async def _probe_round(registry: Registry, session: aiohttp.ClientSession, due: list[WorkerRecord],
                       interval: float, timeout: float) -> None:
    """One probe per worker in ``due``, started at even offsets over ``interval``; returns once every
    one has answered or timed out."""
    started = time.monotonic()
    tasks: list[asyncio.Future] = []
    try:
        for record, offset in zip(due, spread(len(due), interval), strict=True):
            delay = started + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(_probe_one(registry, session, record, timeout)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def _expire(registry: Registry, heartbeat_timeout: float, remove_after: float) -> None:
    offline, removed = registry.expire(heartbeat_timeout, remove_after)
    for worker_id in offline:
        log.warning("worker out of routing: no sign of life", extra={"fields": {"worker_id": worker_id}})
    for record in removed:
        log.warning("worker removed: silent too long", extra={"fields": {"worker_id": record.worker_id}})


async def _probe_one(registry: Registry, session: aiohttp.ClientSession, record: WorkerRecord,
                     timeout: float) -> None:
    state = await probe(session, record.reg.url, timeout)
    if registry.find(record.worker_id) is not record:  # removed (or replaced) while we asked
        return
    if state is not None:
        registry.seen(record.worker_id)
    if state == WorkerState.IDLE:
        registry.room_seen(record.worker_id)  # one marked full after a lost race has room again

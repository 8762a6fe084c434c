"""Liveness: the queen probes every registered worker about once a second.

A worker that stops answering leaves routing after ``heartbeat_timeout`` and the registry after
``remove_after``; hive heartbeats count as signs of life too. Leases of a removed worker die with it.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from rbee.protocol import WorkerState
from rbee.queen.registry import Registry

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


async def probe_loop(registry: Registry, session: aiohttp.ClientSession, *,
                     interval: float, heartbeat_timeout: float, remove_after: float) -> None:
    while True:
        records = registry.list()
        results = await asyncio.gather(*(probe(session, r.reg.url, min(1.0, interval)) for r in records))
        for record, state in zip(records, results, strict=True):
            if state is not None:
                registry.seen(record.worker_id)
            if state == WorkerState.IDLE:
                registry.room_seen(record.worker_id)  # one marked full after a lost race has room again
        offline, removed = registry.expire(heartbeat_timeout, remove_after)
        for worker_id in offline:
            log.warning("worker out of routing: no sign of life", extra={"fields": {"worker_id": worker_id}})
        for record in removed:
            log.warning("worker removed: silent too long", extra={"fields": {"worker_id": record.worker_id}})
        await asyncio.sleep(interval)  # the probe period itself

"""Spawning under the memory budget: plan, make room (evict), start — one spawn decision at a time.

The lock covers the plan, the evictions and the start of the process (its reservation counts from
then on), not the model's loading, so two spawns can never both take the same free memory, and a
slow load holds up nobody. A worker chosen for eviction is asked whether it is idle right before it
is stopped: one that took a request since the last health check is kept, and the spawn refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rbee.hive import memory, spawn_plan
from rbee.hive.catalog import CatalogEntry
from rbee.hive.spawn_plan import Ask, Plan
from rbee.hive.supervisor import ManagedWorker, Supervisor, WorkerSpec

log = logging.getLogger(__name__)
IsIdle = Callable[[ManagedWorker], Awaitable[bool]]
Goodbye = Callable[[ManagedWorker], Awaitable[None]]  # out of the queen's routing


class Spawner:
    def __init__(self, supervisor: Supervisor, devices: Callable[[], Awaitable[list[dict[str, Any]]]],
                 budgets: memory.Budgets, min_resident: float, *, is_idle: IsIdle, goodbye: Goodbye,
                 stop_grace: float = 10.0) -> None:
        self.supervisor = supervisor
        self.devices = devices
        self.budgets = budgets
        self.min_resident = min_resident
        self.is_idle = is_idle
        self.goodbye = goodbye
        self.stop_grace = stop_grace
        self.evictions = 0
        self._lock = asyncio.Lock()

    async def plan(self, ask: Ask, entry: CatalogEntry | None) -> Plan:
        path = entry.local_path if entry is not None else None
        need = await asyncio.to_thread(spawn_plan.footprint, ask, path, entry.size_bytes if entry else 0)
        return spawn_plan.plan(ask, need, local=entry is not None, devices=await self.devices(),
                               workers=self.supervisor.list(), budgets=self.budgets, min_resident=self.min_resident)

    async def spawn(self, ask: Ask, entry: CatalogEntry, model_arg: str | None) -> ManagedWorker:
        """Start a worker for ``ask`` (evicting first when the plan says so), or raise the refusal with
        its numbers (INSUFFICIENT_RAM / INSUFFICIENT_VRAM, ``details.later`` when waiting would help)."""
        async with self._lock:
            plan = await self.plan(ask, entry)
            if not plan.fits:
                raise plan.refusal()
            for worker_id in plan.choice.evict:
                worker = next((w for w in self.supervisor.list() if w.worker_id == worker_id), None)
                if worker is not None and not await self._evict(worker, ask.model_ref):
                    raise (await self.plan(ask, entry)).refusal()
            spec = WorkerSpec(model_ref=ask.model_ref, model_arg=model_arg, backend=ask.backend, device=plan.device,
                              slots=ask.slots, ctx_size=ask.ctx_size, ram_bytes=plan.host_bytes or 0,
                              vram_bytes=plan.device_bytes or 0, embeddings=ask.embeddings)
            return await self.supervisor.spawn(spec)

    async def _evict(self, worker: ManagedWorker, for_model: str) -> bool:
        if not await self.is_idle(worker):
            worker.busy = True
            return False
        idle_s = time.monotonic() - worker.last_active
        log.info("evicting worker", extra={"fields": {
            "worker_id": worker.worker_id, "model_ref": worker.model_ref, "for_model": for_model,
            "idle_s": round(idle_s, 1), "freed_host_bytes": worker.spec.ram_bytes}})
        worker.state = "stopping"
        await self.goodbye(worker)  # out of routing first, so no request lands on it
        await self.supervisor.stop(worker, self.stop_grace)
        self.evictions += 1
        self.supervisor.counts["evictions"] += 1
        return True

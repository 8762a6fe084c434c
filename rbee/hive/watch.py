"""The hive's watch over its workers, once per heartbeat interval: health, heartbeats, idle shutdown.

- A ready worker whose ``/v1/ready`` fails :data:`MAX_HEALTH_FAILURES` times in a row is removed from
  the queen and killed (an exit is noticed at once by the supervisor's own watch).
- Each answer becomes a heartbeat at the queen, so routing follows the worker's real state.
- With an idle timeout, a worker that served nothing for that long is removed from the queen and
  stopped gracefully. Activity is a busy slot or a change in its finished-generation count
  (``/metrics``), so short requests between two looks are not missed.
- At start, :func:`reconcile` adopts the workers an earlier run of the hive left running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp

from rbee.errors import RbeeError
from rbee.hive.queen_link import QueenLink
from rbee.hive.supervisor import ManagedWorker, Supervisor

log = logging.getLogger(__name__)
MAX_HEALTH_FAILURES = 3
CHECK_TIMEOUT_S = 1.0
# Counters that move when a worker serves something: generations, and embeddings on an --embeddings worker.
_SERVED = ("rbee_worker_generations_total", "rbee_worker_embeddings_total")


@dataclass
class Watch:
    supervisor: Supervisor
    link: QueenLink
    session: aiohttp.ClientSession
    idle_timeout: float = 0.0  # seconds; 0 = never
    stop_grace: float = 10.0

    async def check_all(self) -> None:
        ready = [w for w in self.supervisor.list() if w.state == "ready"]
        await asyncio.gather(*(self.check(w) for w in ready))

    async def check(self, worker: ManagedWorker) -> None:
        try:
            status = await self._get_json(f"{worker.url}/v1/ready")
            state, available = str(status["state"]), int(status["slots_available"])
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
            await self._failed(worker, exc)
            return
        worker.health_failures = 0
        worker.busy = state == "busy" or available < worker.spec.slots
        if worker.busy:
            worker.last_active = time.monotonic()
        await self._note_generations(worker)  # also without an idle timeout: eviction goes by last use
        idle_s = time.monotonic() - worker.last_active
        if self.idle_timeout > 0 and idle_s > self.idle_timeout and worker.state == "ready":
            await self._retire(worker)
            return
        try:
            await self.link.heartbeat_worker(worker, state, available)
        except (TimeoutError, aiohttp.ClientError, RbeeError) as exc:
            log.debug("heartbeat for %s failed: %s", worker.worker_id, exc)

    async def is_idle(self, worker: ManagedWorker) -> bool:
        """Asked now (not as of the last check): ready, every slot free, and nothing finished since the
        last look — a worker about to be evicted must not be serving anyone."""
        try:
            status = await self._get_json(f"{worker.url}/v1/ready")
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return False
        before = worker.generations
        await self._note_generations(worker)
        if worker.generations != before:
            worker.last_active = time.monotonic()
            return False
        return status.get("state") == "idle" and status.get("slots_available") == worker.spec.slots

    async def _failed(self, worker: ManagedWorker, exc: BaseException) -> None:
        worker.health_failures += 1
        self.supervisor.counts["health_check_failures"] += 1
        log.warning("health check of %s failed (%d/%d): %s", worker.worker_id, worker.health_failures,
                    MAX_HEALTH_FAILURES, exc.__class__.__name__)
        if worker.health_failures >= MAX_HEALTH_FAILURES and worker.state == "ready":
            log.error("worker %s stopped answering; removing and killing it", worker.worker_id)
            worker.state = "stopping"
            await self.link.deregister_worker(worker)
            await self.supervisor.kill(worker)

    async def _note_generations(self, worker: ManagedWorker) -> None:
        try:
            async with self.session.get(f"{worker.url}/metrics", headers=self.link.headers,
                                        timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S)) as r:
                text = await r.text() if r.status == 200 else ""
        except (TimeoutError, aiohttp.ClientError):
            return
        count = generations(text)
        if count is not None and worker.generations is not None and count != worker.generations:
            worker.last_active = time.monotonic()
        worker.generations = count

    async def _retire(self, worker: ManagedWorker) -> None:
        log.info("worker %s idle for %.0fs; stopping it", worker.worker_id, self.idle_timeout)
        worker.state = "stopping"
        await self.link.deregister_worker(worker)  # out of routing first, so no request lands on it
        await self.supervisor.stop(worker, self.stop_grace)

    async def _get_json(self, url: str) -> dict:
        async with self.session.get(url, headers=self.link.headers,
                                    timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S)) as r:
            r.raise_for_status()
            return await r.json()


def generations(metrics_text: str) -> float | None:
    """The sum of the worker's finished-generation (and embedding-request) counters in Prometheus text, or
    None if absent."""
    total, seen = 0.0, False
    for line in metrics_text.splitlines():
        if line.startswith(_SERVED):
            try:
                total += float(line.rsplit(" ", 1)[1])
                seen = True
            except (ValueError, IndexError):
                continue
    return total if seen else None


async def reconcile(watch: Watch) -> None:
    """Adopt the live, ready workers an earlier run of this hive started; stop those that are not ready."""
    supervisor = watch.supervisor
    for record in supervisor.leftovers():
        worker = supervisor.adopt(record)
        if worker is None:
            log.info("worker %s from the last run is gone", record.worker_id)
            continue
        try:
            status = await watch._get_json(f"{worker.url}/v1/ready")
            ready = bool(status.get("ready"))
        except (TimeoutError, aiohttp.ClientError, ValueError):
            ready = False
        if not ready:
            log.warning("worker %s from the last run does not answer ready; stopping it", worker.worker_id)
            await supervisor.stop(worker, watch.stop_grace)
            continue
        supervisor.mark_ready(worker.worker_id)
        try:
            await watch.link.register_worker(worker)
        except RbeeError as err:
            log.warning("could not re-register adopted worker %s: %s", worker.worker_id, err.message)
        log.info("adopted worker", extra={"fields": {"worker_id": worker.worker_id, "pid": record.pid}})
    supervisor.save_state()

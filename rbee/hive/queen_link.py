"""The hive's side of the control plane: what it tells the queen about itself and its workers.

The hive registers itself (``/v2/hives/register``) and heartbeats with the models it holds, so the
queen can ask it for a worker; it registers each worker that became ready, heartbeats it with the
worker's own state, and removes it when it exits or stops answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import aiohttp

from rbee.errors import ErrorCode, RbeeError
from rbee.hive.supervisor import ManagedWorker
from rbee.protocol import HiveHeartbeat, HiveRegistration, WorkerRegistration

log = logging.getLogger(__name__)


@dataclass
class QueenLink:
    session: aiohttp.ClientSession
    queen_url: str
    node_name: str
    hive_url: str
    cluster_key: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.cluster_key}"} if self.cluster_key else {}

    # ------------------------------------------------------------ workers

    async def register_worker(self, worker: ManagedWorker) -> None:
        s = worker.spec
        reg = WorkerRegistration(
            worker_id=worker.worker_id, url=worker.url, model_ref=s.model_ref, backend=s.backend, device=s.device,
            node_name=self.node_name, slots_total=s.slots,
        )
        try:
            async with self.session.post(f"{self.queen_url}/v2/workers/register", json=reg.model_dump(mode="json"),
                                         headers=self.headers) as r:
                if r.status >= 300:
                    detail = await r.text()
                    raise RbeeError(ErrorCode.WORKER_UNAVAILABLE,
                                    f"The queen refused worker '{worker.worker_id}' ({r.status}): {detail[:200]}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RbeeError(
                ErrorCode.WORKER_UNAVAILABLE,
                f"Could not reach the queen at {self.queen_url} ({exc.__class__.__name__}). Start queen-rbee "
                "or fix --queen-url.",
            ) from None
        log.info("registered with queen", extra={"fields": {"worker_id": worker.worker_id}})

    async def deregister_worker(self, worker: ManagedWorker) -> None:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with self.session.delete(f"{self.queen_url}/v2/workers/{worker.worker_id}", headers=self.headers):
                pass

    async def heartbeat_worker(self, worker: ManagedWorker, state: str, slots_available: int) -> None:
        beat = {"state": state, "slots_available": slots_available}
        async with self.session.post(f"{self.queen_url}/v2/workers/{worker.worker_id}/heartbeat", json=beat,
                                     headers=self.headers) as r:
            if r.status == 404:  # the queen restarted or dropped it: register again
                await self.register_worker(worker)

    # ------------------------------------------------------------ the hive itself

    @property
    def hive_id(self) -> str:
        return self.node_name

    async def register_hive(self, models: list[str], workers: int) -> None:
        reg = HiveRegistration(hive_id=self.hive_id, url=self.hive_url, node_name=self.node_name, models=models)
        async with self.session.post(f"{self.queen_url}/v2/hives/register", json=reg.model_dump(mode="json"),
                                     headers=self.headers) as r:
            if r.status >= 300:
                log.debug("the queen refused this hive (%s): %s", r.status, (await r.text())[:200])

    async def heartbeat_hive(self, models: list[str], workers: int) -> None:
        """A heartbeat; registers again when the queen does not know this hive (it restarted)."""
        beat = HiveHeartbeat(models=models, workers=workers)
        try:
            async with self.session.post(f"{self.queen_url}/v2/hives/{self.hive_id}/heartbeat",
                                         json=beat.model_dump(mode="json"), headers=self.headers) as r:
                known = r.status != 404
            if not known:
                await self.register_hive(models, workers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.debug("hive heartbeat failed: %s", exc)

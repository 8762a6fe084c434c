"""Cold starts: when a request names a model no live worker serves, a hive is asked to spawn one.

:class:`ColdStarter` asks the live hives that can provide the model (``wait``: the hive answers once
the worker is ready and registered), in the registry's order; the dispatcher then admits the request
again. Concurrent requests for one model share one spawn.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from rbee.errors import ErrorCode, RbeeError
from rbee.peer import Peers
from rbee.queen.hive_registry import HiveRecord, HiveRegistry

log = logging.getLogger(__name__)


class ColdStarter:
    """Asks a hive for a worker on ``model``; concurrent requests for one model share one spawn."""

    def __init__(self, hives: HiveRegistry, peers: Peers, *, timeout: float = 300.0) -> None:
        self.hives = hives
        self.peers = peers
        self.timeout = timeout
        self._running: dict[tuple[str, str | None], asyncio.Task[bool]] = {}

    async def provide(self, model: str, hive: str | None = None) -> bool:
        """True once some hive (``hive`` only, when given) has a ready, registered worker for ``model``; False
        when no hive can try. Raises the last hive's error when every hive that tried failed."""
        key = (model, hive)
        task = self._running.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._provide(model, hive))
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(task)  # one caller leaving does not stop the spawn others wait for

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _provide(self, model: str, pinned: str | None) -> bool:
        if pinned is not None:
            self.hives.require_live(pinned, model)
        last: RbeeError | None = None
        for hive in self.hives.candidates(model):
            if pinned is not None and hive.hive_id != pinned:
                continue
            log.info("cold start", extra={"fields": {"model": model, "hive_id": hive.hive_id}})
            try:
                await self._spawn(hive, model)
                return True
            except RbeeError as err:
                log.warning("hive %s could not start a worker for %s: %s", hive.hive_id, model, err.message)
                last = err
        if last is not None:
            raise last
        return False

    async def _spawn(self, hive: HiveRecord, model: str) -> None:
        await self.peers.call(
            "POST", f"{hive.reg.url}/v1/workers/spawn", json={"model_ref": model, "wait": True},
            peer=f"Hive '{hive.hive_id}'", ident={"hive_id": hive.hive_id}, fallback=ErrorCode.SPAWN_FAILED,
            next_step=f"It did not start a worker for '{model}'; check the hive and its log.",
            timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=5),
        )

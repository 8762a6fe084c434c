"""The hive's side of the control plane: what it tells the queen about itself and its workers.

The hive registers itself with each queen it serves (``/v2/hives/register``) and heartbeats with the models it holds, so the
queen can ask it for a worker; it registers each worker that became ready, heartbeats it with the
worker's own state, and removes it when it exits or stops answering.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rbee import __version__
from rbee.errors import ErrorCode, RbeeError
from rbee.hive.preflight import available_ram
from rbee.hive.supervisor import ManagedWorker
from rbee.peer import Peers
from rbee.protocol import DeviceMemory, HiveHeartbeat, HiveRegistration, WorkerRegistration

log = logging.getLogger(__name__)


QUEEN = "The queen"
LINK_WAIT_S = 0.5  # the longest a heartbeat round waits on any one queen (see Queens)
START_THE_QUEEN = "Start queen-rbee, or fix --queen-url."


@dataclass
class QueenLink:
    peers: Peers
    queen_url: str
    node_name: str
    hive_url: str

    @property
    def headers(self) -> dict[str, str]:
        return self.peers.headers

    # ------------------------------------------------------------ workers

    async def register_worker(self, worker: ManagedWorker) -> None:
        s = worker.spec
        reg = WorkerRegistration(
            worker_id=worker.worker_id, url=worker.url, model_ref=s.model_ref, backend=s.backend, device=s.device,
            node_name=self.node_name, slots_total=s.slots, version=__version__,  # spawned from this install
            capability=s.capability,
        )
        await self.peers.call("POST", f"{self.queen_url}/v2/workers/register", json=reg.model_dump(mode="json"),
                              peer=QUEEN, ident={"worker_id": worker.worker_id}, next_step=START_THE_QUEEN)
        log.info("registered with queen", extra={"fields": {"worker_id": worker.worker_id}})

    async def deregister_worker(self, worker: ManagedWorker) -> None:
        """Best effort: a queen that is gone has forgotten the worker anyway."""
        try:
            await self.peers.call("DELETE", f"{self.queen_url}/v2/workers/{worker.worker_id}", peer=QUEEN,
                                  ident={"worker_id": worker.worker_id}, next_step=START_THE_QUEEN)
        except RbeeError as err:
            if err.code != ErrorCode.WORKER_NOT_FOUND:
                log.debug("could not deregister %s: %s", worker.worker_id, err.message)

    async def heartbeat_worker(self, worker: ManagedWorker, state: str, slots_available: int) -> None:
        beat = {"state": state, "slots_available": slots_available}
        try:
            await self.peers.call("POST", f"{self.queen_url}/v2/workers/{worker.worker_id}/heartbeat", json=beat,
                                  peer=QUEEN, ident={"worker_id": worker.worker_id}, next_step=START_THE_QUEEN)
        except RbeeError as err:
            if err.code != ErrorCode.WORKER_NOT_FOUND:
                raise
            await self.register_worker(worker)  # the queen restarted or dropped it: register again

    # ------------------------------------------------------------ the hive itself

    @property
    def hive_id(self) -> str:
        return self.node_name

    async def register_hive(self, models: list[str], workers: int) -> None:
        reg = HiveRegistration(hive_id=self.hive_id, url=self.hive_url, node_name=self.node_name, models=models,
                               version=__version__)
        await self.peers.call("POST", f"{self.queen_url}/v2/hives/register", json=reg.model_dump(mode="json"),
                              peer=QUEEN, ident={"hive_id": self.hive_id}, next_step=START_THE_QUEEN)

    async def heartbeat_hive(self, models: list[str], workers: int, memory: list[DeviceMemory] | None = None) -> None:
        """A heartbeat (with this hive's memory per device); registers again when the queen does not know
        this hive (it restarted). A queen that refuses this hive (a wrong cluster key, say) is logged as a
        warning, with its reason."""
        beat = HiveHeartbeat(models=models, workers=workers, ram_free_bytes=available_ram(), memory=memory)
        try:
            try:
                await self.peers.call("POST", f"{self.queen_url}/v2/hives/{self.hive_id}/heartbeat",
                                      json=beat.model_dump(mode="json"), peer=QUEEN, ident={"hive_id": self.hive_id},
                                      next_step=START_THE_QUEEN)
            except RbeeError as err:
                if err.code != ErrorCode.HIVE_NOT_FOUND:
                    raise
                await self.register_hive(models, workers)
        except RbeeError as err:
            if err.code == ErrorCode.WORKER_UNAVAILABLE:  # not reachable: the worker loop says so already
                log.debug("hive heartbeat failed: %s", err.message)
            else:
                log.warning("the queen refused this hive: %s [%s]", err.message, err.code)


class Queens:
    """Every queen this hive serves (``--queen-url A,B``: active-active, no shared store): each is told
    everything, on its own, so one that is down or restarting never holds up the others.

    Heartbeats go to each queen as a task of its own, awaited for at most :data:`LINK_WAIT_S`: a queen
    whose packets vanish (its machine died, its link was cut) answers nothing until the session's
    timeout, and waiting for it would stretch every heartbeat to the others past their timeout. While
    a queen's last heartbeat is still under way, the next one to it is skipped, not piled up."""

    def __init__(self, links: list[QueenLink]) -> None:
        self.links = links
        self._inflight: dict[tuple[str, ...], asyncio.Task[None]] = {}

    @property
    def headers(self) -> dict[str, str]:
        return self.links[0].headers

    async def register_worker(self, worker: ManagedWorker) -> None:
        """Registered with every queen that answers; raises only when none took it."""
        results = await asyncio.gather(*(link.register_worker(worker) for link in self.links),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for link, err in zip(self.links, results, strict=True):
            if isinstance(err, RbeeError):
                log.warning("queen %s did not take worker %s: %s", link.queen_url, worker.worker_id, err.message)
        if len(errors) == len(self.links):
            raise errors[0]

    async def deregister_worker(self, worker: ManagedWorker) -> None:
        await asyncio.gather(*(link.deregister_worker(worker) for link in self.links))

    async def heartbeat_worker(self, worker: ManagedWorker, state: str, slots_available: int) -> None:
        await self._each(("worker", worker.worker_id),
                         lambda link: link.heartbeat_worker(worker, state, slots_available))

    async def heartbeat_hive(self, models: list[str], workers: int, memory: list[DeviceMemory] | None = None) -> None:
        await self._each(("hive",), lambda link: link.heartbeat_hive(models, workers, memory))

    async def _each(self, kind: tuple[str, ...], call: Callable[[QueenLink], Awaitable[None]]) -> None:
        started = []
        for link in self.links:
            key = (*kind, link.queen_url)
            previous = self._inflight.get(key)
            if previous is not None and not previous.done():
                continue  # that queen has not answered the last one yet
            task = asyncio.get_running_loop().create_task(call(link))
            task.add_done_callback(lambda t, url=link.queen_url, k=key: self._settled(k, url, t))
            self._inflight[key] = task
            started.append(task)
        if started:
            await asyncio.wait(started, timeout=LINK_WAIT_S)

    def _settled(self, key: tuple[str, ...], url: str, task: asyncio.Task[None]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, RbeeError):
            log.debug("heartbeat to %s failed: %s", url, exc.message)
        elif exc is not None:
            log.warning("heartbeat to %s failed: %r", url, exc)

    async def close(self) -> None:
        """Stop the heartbeats still waiting on a queen."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

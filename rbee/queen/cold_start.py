"""Cold starts: when a request names a model no live worker serves, a hive is asked to spawn one.

:class:`ColdStarter` asks every live hive that can provide the model for its spawn plan, lets the
placement policy (:mod:`rbee.queen.placement`) order them, and asks the best for a worker (``wait``:
the hive answers once the worker is ready and registered), the next on failure; the dispatcher then
admits the request again. Concurrent requests for one model share one cold start.

When the model fits only once busy or recently started workers of other models may be evicted, the
cold start waits (the dispatcher tells the client ``: provisioning``), asking again every
:data:`RETRY_S`. Past ``swap_after`` seconds of waiting, the workers in the way are *held* (no new
requests routed to them; those already queued for their model wait), so they go idle and can be
evicted: the aging bound that keeps one busy model from starving another out of the machine.
Nothing fits anywhere: 507 INSUFFICIENT_RESOURCES with each hive's figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiohttp

from rbee.deadline import Deadline
from rbee.errors import ErrorCode, RbeeError
from rbee.peer import Backoff, Peers
from rbee.protocol import SpawnPlan
from rbee.queen import placement
from rbee.queen.hive_registry import HiveRecord, HiveRegistry

log = logging.getLogger(__name__)
RETRY_S = 0.5
PLAN_TIMEOUT_S = 10.0
Hold = Callable[[set[str]], None]  # route nothing new to these workers (empty: hold none)

# A hive that refuses the connection may be restarting (its supervisor, `hives start`): 3 more tries within 3.5 s.
SPAWN_RETRY = Backoff(attempts=4, first=0.5, cap=2.0)


class ColdStarter:
    """Asks a hive for a worker on ``model``; concurrent requests for one model share one spawn."""

    def __init__(self, hives: HiveRegistry, peers: Peers, *, timeout: float = 300.0, swap_after: float = 30.0,
                 hold: Hold | None = None) -> None:
        self.hives = hives
        self.peers = peers
        self.timeout = timeout
        self.swap_after = swap_after
        self.hold = hold
        self.spawns = 0
        self._running: dict[tuple[str, str | None], asyncio.Task[bool]] = {}
        self._held: dict[tuple[str, str | None], set[str]] = {}

    async def provide(self, model: str, hive: str | None = None, deadline: Deadline | None = None) -> bool:
        """True once some hive (``hive`` only, when given) has a ready, registered worker for ``model``; False
        when no hive can try. Raises the last hive's error when every hive that tried failed. The hive is
        told the ``deadline`` of the request that began the spawn (its wait, not the spawn, ends there)."""
        key = (model, hive)
        task = self._running.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._provide(model, hive, deadline))
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(task)  # one caller leaving does not stop the spawn others wait for

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _provide(self, model: str, pinned: str | None, deadline: Deadline | None = None) -> bool:
        if pinned is not None:
            self.hives.require_live(pinned, model)
        key = (model, pinned)
        started = time.monotonic()
        try:
            while True:
                hives = [h for h in self.hives.candidates(model) if pinned is None or h.hive_id == pinned]
                if not hives:
                    return False
                offers = await asyncio.gather(*(self._plan(h, model) for h in hives))
                decision = placement.decide(list(offers))
                later = set(decision.later)
                last = None
                for hive_id in decision.order:
                    try:
                        await self._spawn(next(h for h in hives if h.hive_id == hive_id), model, deadline)
                        return True
                    except RbeeError as err:
                        log.warning("hive %s could not start a worker for %s: %s", hive_id, model, err.message)
                        if (err.details or {}).get("later"):
                            later.add(hive_id)
                            decision.blocking[hive_id] = list((err.details or {}).get("blocking", []))
                        else:
                            last = err
                waited = time.monotonic() - started
                if not later or waited >= self.timeout:
                    if last is not None:
                        raise last
                    raise placement.no_room(model, list(offers))
                if waited >= self.swap_after:
                    self._hold(key, {w for h in later for w in decision.blocking.get(h, [])})
                await asyncio.sleep(RETRY_S)
        finally:
            self._hold(key, set())

    def _hold(self, key: tuple[str, str | None], workers: set[str]) -> None:
        if self.hold is None or self._held.get(key, set()) == workers:
            return
        if workers:
            log.info("holding workers so a waiting model can load", extra={"fields": {
                "model": key[0], "workers": sorted(workers)}})
            self._held[key] = workers
        else:
            self._held.pop(key, None)
        self.hold(set().union(*self._held.values()) if self._held else set())

    async def _plan(self, hive: HiveRecord, model: str) -> placement.Offer:
        """The hive's spawn plan; None (try it as it is) when it cannot say."""
        with contextlib.suppress(RbeeError, ValueError):
            body = await self.peers.call(
                "POST", f"{hive.reg.url}/v1/workers/plan", json={"model_ref": model},
                peer=f"Hive '{hive.hive_id}'", ident={"hive_id": hive.hive_id}, next_step="",
                timeout=aiohttp.ClientTimeout(total=PLAN_TIMEOUT_S))
            return placement.Offer(hive.hive_id, SpawnPlan.model_validate(body))
        return placement.Offer(hive.hive_id, None)

    async def _spawn(self, hive: HiveRecord, model: str, deadline: Deadline | None = None) -> None:
        log.info("cold start", extra={"fields": {"model": model, "hive_id": hive.hive_id}})
        try:
            await self.peers.call(
                "POST", f"{hive.reg.url}/v1/workers/spawn", json={"model_ref": model, "wait": True},
                peer=f"Hive '{hive.hive_id}'", ident={"hive_id": hive.hive_id}, fallback=ErrorCode.SPAWN_FAILED,
                next_step=f"It did not start a worker for '{model}'; check the hive and its log.",
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=5), retry=SPAWN_RETRY,
                headers=deadline.header() if deadline is not None else None,
            )
        except RbeeError as err:
            worker_id = (err.details or {}).get("worker_id")
            if err.code != ErrorCode.DEADLINE_EXCEEDED or not isinstance(worker_id, str):
                raise
            # The hive stopped waiting at the first request's deadline; its worker goes on starting, and
            # the others waiting for this model (sharing this spawn) still want it.
            log.info("the hive's wait ended at the request's deadline; waiting on for its worker",
                     extra={"fields": {"model": model, "hive_id": hive.hive_id, "worker_id": worker_id}})
            await self._until_ready(hive, worker_id, model)
        self.spawns += 1

    async def _until_ready(self, hive: HiveRecord, worker_id: str, model: str) -> None:
        """Polls the hive's worker list until ``worker_id`` is ready (registered here); SPAWN_FAILED when it
        is gone, or not ready within the cold-start timeout."""
        until = time.monotonic() + self.timeout
        while time.monotonic() < until:
            with contextlib.suppress(RbeeError):
                body = await self.peers.call("GET", f"{hive.reg.url}/v1/workers/list", peer=f"Hive '{hive.hive_id}'",
                                             ident={"hive_id": hive.hive_id}, next_step="",
                                             timeout=aiohttp.ClientTimeout(total=PLAN_TIMEOUT_S))
                state = next((w.get("state") for w in body.get("workers", []) if w.get("worker_id") == worker_id),
                             "exited")
                if state == "ready":
                    return
                if state != "starting":
                    break
            await asyncio.sleep(RETRY_S)
        raise RbeeError(ErrorCode.SPAWN_FAILED, f"Worker '{worker_id}' on hive '{hive.hive_id}' for '{model}' did "
                        "not become ready. Check the hive's log, then retry.",
                        {"hive_id": hive.hive_id, "worker_id": worker_id})

"""The queen's hive registry, its control routes, and cold starts: a worker spawned on demand.

Hives register (``POST /v2/hives/register``) and heartbeat (``POST /v2/hives/{id}/heartbeat``) with
the models they hold; ``GET /v2/hives/list`` shows them. When a request names a model no live worker
serves, :class:`ColdStarter` asks a live hive to spawn one (``wait``: it answers once the worker is
ready and registered), and the dispatcher admits the request again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from rbee.errors import ErrorCode, RbeeError
from rbee.models import aliases
from rbee.protocol import HiveHeartbeat, HiveInfo, HiveList, HiveRegistration
from rbee.web import json_model, read_model

log = logging.getLogger(__name__)
DOWNLOADABLE = ("hf:", "https://", "http://")


# ---------------------------------------------------------------- domain


@dataclass
class HiveRecord:
    reg: HiveRegistration
    registered_at: float
    last_seen: float
    models: list[str] = field(default_factory=list)
    workers: int = 0

    @property
    def hive_id(self) -> str:
        return self.reg.hive_id

    def holds(self, model: str) -> bool:
        return any(model in aliases(m) for m in self.models)

    def info(self, live: bool) -> HiveInfo:
        return HiveInfo(hive_id=self.hive_id, url=self.reg.url, node_name=self.reg.node_name or self.hive_id,
                        models=self.models, workers=self.workers, registered_at=self.registered_at,
                        last_seen=self.last_seen, live=live)


class HiveRegistry:
    """Pure bookkeeping: no I/O. A hive is live while its heartbeats keep coming within ``timeout``."""

    def __init__(self, timeout: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.timeout = timeout
        self._clock = clock
        self._hives: dict[str, HiveRecord] = {}

    def register(self, reg: HiveRegistration) -> HiveRecord:
        now = self._clock()
        old = self._hives.get(reg.hive_id)
        record = HiveRecord(reg, old.registered_at if old else now, now, list(reg.models), old.workers if old else 0)
        self._hives[reg.hive_id] = record
        return record

    def heartbeat(self, hive_id: str, beat: HiveHeartbeat) -> HiveRecord:
        record = self._hives.get(hive_id)
        if record is None:
            raise RbeeError(ErrorCode.HIVE_NOT_FOUND, f"No hive '{hive_id}' is registered. Register it first "
                            "(POST /v2/hives/register).", {"hive_id": hive_id})
        record.last_seen = self._clock()
        if beat.models is not None:
            record.models = list(beat.models)
        if beat.workers is not None:
            record.workers = beat.workers
        return record

    def is_live(self, record: HiveRecord) -> bool:
        return self._clock() - record.last_seen <= self.timeout

    def list(self) -> list[HiveRecord]:
        return list(self._hives.values())

    def candidates(self, model: str) -> list[HiveRecord]:
        """Live hives that can provide ``model``: those holding it first (fewest workers first), then,
        for a ref a hive can download, every other live hive."""
        live = [h for h in self._hives.values() if self.is_live(h)]
        holding = sorted((h for h in live if h.holds(model)), key=lambda h: h.workers)
        if not model.startswith(DOWNLOADABLE):
            return holding
        others = sorted((h for h in live if not h.holds(model)), key=lambda h: h.workers)
        return holding + others


# ---------------------------------------------------------------- cold start


class ColdStarter:
    """Asks a hive for a worker on ``model``; concurrent requests for one model share one spawn."""

    def __init__(self, hives: HiveRegistry, session: aiohttp.ClientSession, *, timeout: float = 300.0,
                 cluster_key: str | None = None) -> None:
        self.hives = hives
        self.session = session
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {cluster_key}"} if cluster_key else {}
        self._running: dict[str, asyncio.Task[bool]] = {}

    async def provide(self, model: str) -> bool:
        """True once some hive has a ready, registered worker for ``model``; False when no hive can try.
        Raises the last hive's error when every hive that tried failed."""
        task = self._running.get(model)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._provide(model))
            self._running[model] = task
            task.add_done_callback(lambda _: self._running.pop(model, None))
        return await asyncio.shield(task)  # one caller leaving does not stop the spawn others wait for

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _provide(self, model: str) -> bool:
        last: RbeeError | None = None
        for hive in self.hives.candidates(model):
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
        url = f"{hive.reg.url}/v1/workers/spawn"
        try:
            async with self.session.post(url, json={"model_ref": model, "wait": True}, headers=self.headers,
                                         timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=5)) as r:
                if r.status < 300:
                    return
                try:
                    err = (await r.json(content_type=None))["error"]
                    raise RbeeError(err["code"], err["message"], {**err.get("details", {}), "hive_id": hive.hive_id})
                except (ValueError, KeyError, TypeError):
                    raise RbeeError(ErrorCode.SPAWN_FAILED, f"Hive '{hive.hive_id}' answered HTTP {r.status} to a "
                                    "spawn. Check its log.", {"hive_id": hive.hive_id}) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RbeeError(ErrorCode.SPAWN_FAILED, f"Hive '{hive.hive_id}' did not start a worker for '{model}' "
                            f"({exc.__class__.__name__}). Check the hive and its log.",
                            {"hive_id": hive.hive_id}) from None


# ---------------------------------------------------------------- routes

HIVES = web.AppKey("hives", HiveRegistry)
routes = web.RouteTableDef()


@routes.post("/v2/hives/register")
async def register_hive(request: web.Request) -> web.Response:
    reg = await read_model(request, HiveRegistration)
    hives = request.app[HIVES]
    record = hives.register(reg)
    log.info("hive registered", extra={"fields": {"hive_id": reg.hive_id, "url": reg.url}})
    return json_model(record.info(hives.is_live(record)))


@routes.post("/v2/hives/{hive_id}/heartbeat")
async def heartbeat_hive(request: web.Request) -> web.Response:
    beat = await read_model(request, HiveHeartbeat)
    hives = request.app[HIVES]
    record = hives.heartbeat(request.match_info["hive_id"], beat)
    return json_model(record.info(hives.is_live(record)))


@routes.get("/v2/hives/list")
async def list_hives(request: web.Request) -> web.Response:
    hives = request.app[HIVES]
    return json_model(HiveList(hives=[h.info(hives.is_live(h)) for h in hives.list()]))


def setup(app: web.Application, heartbeat_timeout: float) -> None:
    app[HIVES] = HiveRegistry(timeout=max(heartbeat_timeout, 3.0))
    app.add_routes(routes)

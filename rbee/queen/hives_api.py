"""The queen's hive routes: register, heartbeat, list."""

from __future__ import annotations

import logging

from aiohttp import web

from rbee.protocol import HiveHeartbeat, HiveList, HiveRegistration
from rbee.queen.appkeys import HIVES
from rbee.queen.hive_registry import HiveRegistry
from rbee.web import json_model, read_model

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- routes

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

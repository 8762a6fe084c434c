"""The queen's control routes (/v2/workers/...): thin handlers over the registry."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import (
    RegisterResponse,
    WorkerHeartbeat,
    WorkerList,
    WorkerPatch,
    WorkerRegistration,
    WorkerShutdownRequest,
    is_identifier,
)
from rbee.queen.appkeys import PEERS, REGISTRY
from rbee.queen.health import probe
from rbee.web import json_model, json_response, read_model

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


@routes.post("/v2/workers/register")
async def register_worker(request: web.Request) -> web.Response:
    reg = await read_model(request, WorkerRegistration)
    created = request.app[REGISTRY].register(reg)
    log.info("worker %s", "registered" if created else "re-registered",
             extra={"fields": {"worker_id": reg.worker_id, "url": reg.url, "model": reg.model_ref}})
    return json_model(
        RegisterResponse(
            success=True,
            message=f"Worker '{reg.worker_id}' registered successfully",
            worker_id=reg.worker_id,
        )
    )


@routes.get("/v2/workers/list")
async def list_workers(request: web.Request) -> web.Response:
    q = request.query
    records = request.app[REGISTRY].list(model=q.get("model"), state=q.get("state"), backend=q.get("backend"))
    return json_model(WorkerList(workers=[r.info() for r in records]))


@routes.get("/v2/workers/health")
async def workers_health(request: web.Request) -> web.Response:
    """Probe every worker now and report what answered."""
    registry, session = request.app[REGISTRY], request.app[PEERS].session
    records = registry.list()

    alive = await asyncio.gather(*(probe(session, r.reg.url, 2.0) for r in records))
    return json_response(
        {"workers": [{"worker_id": r.worker_id, "url": r.reg.url, "state": r.state, "healthy": ok is not None}
                     for r, ok in zip(records, alive, strict=True)]}
    )


def _worker_id(request: web.Request) -> str:
    worker_id = request.match_info["worker_id"]
    if not is_identifier(worker_id):
        raise RbeeError(ErrorCode.INVALID_REQUEST, "Worker ids match [A-Za-z0-9._-]{1,64}.", {"field": "worker_id"})
    return worker_id


@routes.patch("/v2/workers/{worker_id}")
async def patch_worker(request: web.Request) -> web.Response:
    worker_id = _worker_id(request)
    patch = await read_model(request, WorkerPatch)
    record = request.app[REGISTRY].set_state(worker_id, patch.state)
    return json_model(record.info())


@routes.post("/v2/workers/{worker_id}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    worker_id = _worker_id(request)
    beat = await read_model(request, WorkerHeartbeat)
    record = request.app[REGISTRY].heartbeat(worker_id, beat.state, beat.slots_available)
    return json_model(record.info())


@routes.delete("/v2/workers/{worker_id}")
async def remove_worker(request: web.Request) -> web.Response:
    request.app[REGISTRY].remove(_worker_id(request))
    return web.Response(status=204)


@routes.post("/v2/workers/shutdown")
async def shutdown_worker(request: web.Request) -> web.Response:
    body = await read_model(request, WorkerShutdownRequest)
    registry = request.app[REGISTRY]
    record = registry.get(body.worker_id)
    try:
        await request.app[PEERS].call("POST", f"{record.reg.url}/v1/admin/shutdown",
                                      peer=f"Worker '{record.worker_id}'", ident={"worker_id": record.worker_id},
                                      next_step="It is removed from routing anyway.",
                                      timeout=aiohttp.ClientTimeout(total=5))
        accepted = True
    except RbeeError:
        accepted = False
    registry.remove(body.worker_id)
    return json_response({"worker_id": body.worker_id, "shutdown_requested": accepted, "removed": True})

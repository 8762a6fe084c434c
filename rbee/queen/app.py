"""queen-rbee's HTTP routes: thin handlers over the registry and the relay."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import uuid
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from rbee import __version__
from rbee.errors import ErrorCode, RbeeError
from rbee.logs import request_id_var
from rbee.protocol import (
    ID_PATTERN,
    InferenceRequest,
    RegisterResponse,
    WorkerHeartbeat,
    WorkerList,
    WorkerPatch,
    WorkerRegistration,
    WorkerShutdownRequest,
)
from rbee.queen.registry import Registry
from rbee.queen.relay import cancel_at_worker, open_upstream, relay_stream
from rbee.queen.settings import QueenSettings
from rbee.web import json_model, json_response, make_app, read_model

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", QueenSettings)
REGISTRY = web.AppKey("registry", Registry)
HTTP = web.AppKey("http", aiohttp.ClientSession)

routes = web.RouteTableDef()


# ---------------------------------------------------------------- health


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "version": __version__})


# ---------------------------------------------------------------- registry


@routes.post("/v2/workers/register")
async def register_worker(request: web.Request) -> web.Response:
    reg = await read_model(request, WorkerRegistration)
    created = request.app[REGISTRY].register(reg)
    log.info("worker %s", "registered" if created else "re-registered",
             extra={"fields": {"worker_id": reg.worker_id, "url": reg.base_url, "model": reg.model_ref}})
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
    registry, session = request.app[REGISTRY], request.app[HTTP]
    records = registry.list()

    async def probe(url: str) -> bool:
        try:
            async with session.get(f"{url}/v1/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    alive = await asyncio.gather(*(probe(r.reg.base_url) for r in records))
    return json_response(
        {"workers": [{"worker_id": r.worker_id, "url": r.reg.base_url, "state": r.state, "healthy": ok}
                     for r, ok in zip(records, alive, strict=True)]}
    )


def _worker_id(request: web.Request) -> str:
    worker_id = request.match_info["worker_id"]
    if not re.fullmatch(ID_PATTERN.strip("^$"), worker_id):
        raise RbeeError(ErrorCode.INVALID_REQUEST, "Worker ids match [A-Za-z0-9._-]{1,64}.", {"field": "worker_id"})
    return worker_id


@routes.patch("/v2/workers/{worker_id}")
async def patch_worker(request: web.Request) -> web.Response:
    worker_id = _worker_id(request)
    patch = await read_model(request, WorkerPatch)
    return json_model(request.app[REGISTRY].set_state(worker_id, patch.state).info())


@routes.post("/v2/workers/{worker_id}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    worker_id = _worker_id(request)
    beat = await read_model(request, WorkerHeartbeat)
    return json_model(request.app[REGISTRY].heartbeat(worker_id, beat.state, beat.slots_available).info())


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
        async with request.app[HTTP].post(
            f"{record.reg.base_url}/v1/admin/shutdown", timeout=aiohttp.ClientTimeout(total=5)
        ) as r:
            accepted = r.status < 300
    except (aiohttp.ClientError, asyncio.TimeoutError):
        accepted = False
    registry.remove(body.worker_id)
    return json_response({"worker_id": body.worker_id, "shutdown_requested": accepted, "removed": True})


# ---------------------------------------------------------------- inference


@routes.post("/v1/inference")
async def inference(request: web.Request) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    request_id_var.set(request_id)
    job = await read_model(request, InferenceRequest)
    registry, session = request.app[REGISTRY], request.app[HTTP]
    lease = registry.acquire(job.model)
    headers = {"X-Rbee-Worker": lease.worker_id, "X-Request-Id": request_id}
    log.info("dispatch", extra={"fields": {"worker_id": lease.worker_id, "model": job.model}})
    finished = False
    try:
        upstream = await open_upstream(session, lease, job.model_dump(mode="json", exclude_none=True), request_id)
        if not job.stream:
            async with upstream:
                payload = await upstream.json(content_type=None)
            finished = True
            return json_response(payload, headers=headers)
        response = await relay_stream(request, upstream, headers)
        finished = True
        return response
    except RbeeError as err:
        finished = True
        err.details.setdefault("worker_id", lease.worker_id)
        raise
    finally:
        registry.release(lease)
        if not finished:
            # The client went away (or we were cancelled) mid-stream: free the worker's slot too.
            await asyncio.shield(cancel_at_worker(session, lease, request_id))


# ---------------------------------------------------------------- app


@web.middleware
async def auth_middleware(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    if not settings.api_keys or request.path == "/health":
        return await handler(request)
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise RbeeError(ErrorCode.MISSING_API_KEY, "Missing API key. Send 'Authorization: Bearer <key>'.")
    given = header.removeprefix("Bearer ").strip().encode()
    keys = list(settings.api_keys)
    if request.path.startswith("/v2/") and settings.cluster_key:
        keys.append(settings.cluster_key)
    if not any(hmac.compare_digest(given, k.encode()) for k in keys):
        raise RbeeError(ErrorCode.INVALID_API_KEY, "Invalid API key. Check the key you were given.")
    return await handler(request)


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=None, connect=app[SETTINGS].connect_timeout, sock_read=None)
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        app[HTTP] = session
        yield


def create_app(settings: QueenSettings) -> web.Application:
    app = make_app()
    app.middlewares.append(auth_middleware)
    app[SETTINGS] = settings
    app[REGISTRY] = Registry()
    app.cleanup_ctx.append(_http_client)
    app.add_routes(routes)
    return app

"""rbee-hive's HTTP routes: spawn and list workers, take their ready callbacks, keep the queen informed."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field

from rbee import __version__, models
from rbee.errors import ErrorCode, RbeeError
from rbee.hive.models_api import PROVISIONER, setup_models
from rbee.hive.supervisor import ManagedWorker, Supervisor
from rbee.protocol import SpawnRequest, WorkerReady, WorkerRegistration
from rbee.web import json_response, make_app, read_model

log = logging.getLogger(__name__)


class HiveSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(9200, ge=0, le=65535)
    queen_url: str = Field(description="Where workers are registered.")
    node_name: str = "local"
    models_dir: Path = Field(description="Where downloaded models and the catalog live.")
    log_dir: Path = Field(description="One log file per spawned worker.")
    hf_base_url: str = "https://huggingface.co"
    cluster_key: str | None = None
    heartbeat_interval: float = Field(1.0, gt=0)
    stop_grace: float = Field(10.0, ge=0, description="Seconds a worker gets to drain before SIGKILL.")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


SETTINGS = web.AppKey("settings", HiveSettings)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
HTTP = web.AppKey("http", aiohttp.ClientSession)

routes = web.RouteTableDef()


def _queen_headers(settings: HiveSettings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.cluster_key}"} if settings.cluster_key else {}


@routes.get("/v1/health")
async def health(request: web.Request) -> web.Response:
    return json_response({"status": "alive", "version": __version__, "api_version": "v1"})


@routes.get("/v1/workers/list")
async def list_workers(request: web.Request) -> web.Response:
    workers = request.app[SUPERVISOR].list()
    return json_response({"workers": [w.view().model_dump(mode="json") for w in workers]})


@routes.post("/v1/workers/spawn")
async def spawn(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    body = await read_model(request, SpawnRequest)
    if body.backend != "cpu":
        raise RbeeError(
            ErrorCode.INVALID_REQUEST,
            f"Backend '{body.backend}' is not available on this hive. Available: cpu.",
            {"field": "backend", "available": ["cpu"]},
        )
    # The default model, file:// refs and catalogued models are local at once; others download first.
    entry = await app[PROVISIONER].ensure_local(body.model_ref or models.DEFAULT_MODEL_REF)
    worker = await app[SUPERVISOR].spawn(
        node_name=settings.node_name,
        model_arg=None if entry.provider == "builtin" else str(entry.local_path),
        model_ref=body.model_ref or models.DEFAULT_MODEL_REF,
        backend=body.backend, device=body.device, slots=body.slots, ctx_size=body.ctx_size,
        callback_url=f"{settings.url}/v1/workers/ready", cluster_key=settings.cluster_key,
    )
    return json_response(worker.view().model_dump(mode="json"), status=202)


@routes.post("/v1/workers/ready")
async def worker_ready(request: web.Request) -> web.Response:
    """The worker's callback: the model is loaded. Register it with the queen, then heartbeat it."""
    app = request.app
    _check_cluster_key(request)
    body = await read_model(request, WorkerReady)
    worker = app[SUPERVISOR].mark_ready(body.worker_id)
    await _register_with_queen(app, worker)
    return json_response({"worker_id": worker.worker_id, "registered": True})


@routes.post("/v1/workers/{worker_id}/shutdown")
async def shutdown_worker(request: web.Request) -> web.Response:
    app = request.app
    worker = app[SUPERVISOR].get(request.match_info["worker_id"])
    await app[SUPERVISOR].stop(worker, app[SETTINGS].stop_grace)
    return json_response({"worker_id": worker.worker_id, "state": "exited"})


def _check_cluster_key(request: web.Request) -> None:
    key = request.app[SETTINGS].cluster_key
    if not key:
        return
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not given:
        raise RbeeError(ErrorCode.MISSING_API_KEY, "This hive needs the cluster key: 'Authorization: Bearer <key>'.")
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise RbeeError(ErrorCode.INVALID_API_KEY, "Wrong cluster key. Use the key the hive was started with.")


# ---------------------------------------------------------------- talking to the queen


async def _register_with_queen(app: web.Application, worker: ManagedWorker) -> None:
    settings = app[SETTINGS]
    reg = WorkerRegistration(
        worker_id=worker.worker_id, url=worker.url, model_ref=worker.model_ref, backend=worker.backend,
        device=worker.device, node_name=settings.node_name, slots_total=worker.slots,
    )
    try:
        async with app[HTTP].post(f"{settings.queen_url}/v2/workers/register", json=reg.model_dump(mode="json"),
                                  headers=_queen_headers(settings)) as r:
            if r.status >= 300:
                detail = await r.text()
                raise RbeeError(ErrorCode.WORKER_UNAVAILABLE,
                                f"The queen refused worker '{worker.worker_id}' ({r.status}): {detail[:200]}")
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise RbeeError(
            ErrorCode.WORKER_UNAVAILABLE,
            f"Could not reach the queen at {settings.queen_url} ({exc.__class__.__name__}). Start queen-rbee "
            "or fix --queen-url.",
        ) from None
    log.info("registered with queen", extra={"fields": {"worker_id": worker.worker_id}})


async def _deregister(app: web.Application, worker: ManagedWorker) -> None:
    settings = app[SETTINGS]
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        async with app[HTTP].delete(f"{settings.queen_url}/v2/workers/{worker.worker_id}",
                                    headers=_queen_headers(settings)):
            pass


async def _heartbeat_once(app: web.Application, worker: ManagedWorker) -> None:
    settings, session = app[SETTINGS], app[HTTP]
    try:
        async with session.get(f"{worker.url}/v1/ready") as r:
            status = await r.json()
        beat = {"state": status["state"], "slots_available": status["slots_available"]}
        async with session.post(f"{settings.queen_url}/v2/workers/{worker.worker_id}/heartbeat", json=beat,
                                headers=_queen_headers(settings)) as r:
            if r.status == 404:  # the queen restarted or dropped it: register again
                await _register_with_queen(app, worker)
    except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, RbeeError) as exc:
        log.debug("heartbeat for %s failed: %s", worker.worker_id, exc)


async def _heartbeats(app: web.Application) -> None:
    interval = app[SETTINGS].heartbeat_interval
    while True:
        ready = [w for w in app[SUPERVISOR].list() if w.state == "ready"]
        await asyncio.gather(*(_heartbeat_once(app, w) for w in ready))
        await asyncio.sleep(interval)  # the heartbeat period itself


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    supervisor = app[SUPERVISOR]
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        app[HTTP] = session
        pending: set[asyncio.Task] = set()

        def on_exit(worker: ManagedWorker) -> None:
            task = asyncio.get_running_loop().create_task(_deregister(app, worker))
            pending.add(task)
            task.add_done_callback(pending.discard)

        supervisor.on_exit = on_exit
        beats = asyncio.get_running_loop().create_task(_heartbeats(app))
        yield
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats
        # SIGTERM cascade: every worker drains and exits (or is killed) before the hive does.
        await supervisor.stop_all(settings.stop_grace)
        await asyncio.gather(*(_deregister(app, w) for w in supervisor.list()), *pending, return_exceptions=True)


def create_app(settings: HiveSettings) -> web.Application:
    app = make_app()
    app[SETTINGS] = settings
    app[SUPERVISOR] = Supervisor(settings.log_dir, host=settings.host)
    app.cleanup_ctx.append(_lifecycle)
    app.add_routes(routes)
    setup_models(app, settings.models_dir, settings.hf_base_url)
    return app

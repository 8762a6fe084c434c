"""rbee-hive's HTTP routes: spawn and list workers, take their ready callbacks, keep the queen informed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from rbee import __version__, audit_web, models, reload
from rbee import deadline as rbee_deadline
from rbee.audit_web import open_log
from rbee.auth import cluster_key_middleware, control_or_metrics
from rbee.errors import RbeeError
from rbee.hive import memory, preflight, spawn_plan
from rbee.hive import metrics as hive_metrics
from rbee.hive.address import advertised_host, http_url
from rbee.hive.models_api import CATALOG, PROVISIONER, setup_models
from rbee.hive.queen_link import QueenLink, Queens
from rbee.hive.settings import HiveSettings
from rbee.hive.spawn_plan import Ask
from rbee.hive.spawner import Spawner
from rbee.hive.supervisor import ManagedWorker, Supervisor
from rbee.hive.watch import Watch, reconcile
from rbee.keyring import KeyRing, KeySource
from rbee.peer import Peers
from rbee.protocol import DeviceMemory, SpawnRequest, WorkerReady
from rbee.web import json_model, json_response, make_app, read_model

log = logging.getLogger(__name__)


SETTINGS = web.AppKey("settings", HiveSettings)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
HTTP = web.AppKey("http", aiohttp.ClientSession)
LINK = web.AppKey("queens", Queens)
PUBLIC_URL = web.AppKey("public_url", str)  # how the queen and other machines reach this hive
DEVICES = web.AppKey("devices", asyncio.Task)  # preflight.detect_devices, asked once at start
SPAWNER = web.AppKey("spawner", Spawner)

routes = web.RouteTableDef()


@routes.get("/v1/health")
async def health(request: web.Request) -> web.Response:
    return json_response({"status": "alive", "version": __version__, "api_version": "v1",
                          **request.app[SETTINGS].health_warning()})


@routes.get("/v1/workers/list")
async def list_workers(request: web.Request) -> web.Response:
    workers = request.app[SUPERVISOR].list()
    return json_response({"workers": [w.view().model_dump(mode="json") for w in workers],
                          "evictions": request.app[SPAWNER].evictions})


@routes.get("/v1/devices")
async def devices(request: web.Request) -> web.Response:
    """The compute devices workers here can use, as llama.cpp reports them."""
    return json_response({"devices": await request.app[DEVICES]})


@routes.post("/v1/workers/spawn")
async def spawn(request: web.Request) -> web.Response:
    """202 at once with the starting worker; with ``wait`` (body or ``?wait=true``), 200 once it is ready
    and registered, or 502 SPAWN_FAILED with its last log lines. 507 with the numbers when it would not
    fit in this hive's memory (after evicting idle workers of other models, when that is allowed). The
    request's deadline (``X-Request-Timeout-Ms``, from the queen) bounds the wait: 504 DEADLINE_EXCEEDED
    then, and the worker goes on starting."""
    app = request.app
    deadline = rbee_deadline.of_request(request.headers)
    body = await read_model(request, SpawnRequest)
    wait = body.wait or request.query.get("wait", "").lower() in ("1", "true", "yes")
    await _check_backend(app, body)  # before any download
    ask = _ask(body)
    # The default model, file:// refs and catalogued models are local at once; others download first.
    entry = await app[PROVISIONER].ensure_local(ask.model_ref)
    model_arg = None if entry.provider == "builtin" else str(entry.local_path)
    worker = await app[SPAWNER].spawn(ask, entry, model_arg)
    if not wait:
        return json_response(worker.view().model_dump(mode="json"), status=202)
    if deadline is not None:  # logged once the worker is listed: what it waits for exists
        log.info("spawn: waiting for the worker within the request's deadline", extra={"fields": {
            "model_ref": body.model_ref, "deadline_ms": max(0, int(deadline.remaining() * 1000))}})
    await app[SUPERVISOR].wait_ready(worker, app[SETTINGS].spawn_timeout, deadline)
    return json_response(worker.view().model_dump(mode="json"), status=200)


@routes.post("/v1/workers/plan")
async def plan_spawn(request: web.Request) -> web.Response:
    """What a spawn of this body would do now (device, estimate, evictions, or why it would not fit),
    without downloading or starting anything: the queen's placement asks each hive."""
    app = request.app
    body = await read_model(request, SpawnRequest)
    await _check_backend(app, body)
    ask = _ask(body)
    entry = await asyncio.to_thread(app[CATALOG].get, ask.model_ref)
    plan = await app[SPAWNER].plan(ask, entry)
    return json_model(plan.wire())


async def _check_backend(app: web.Application, body: SpawnRequest) -> None:
    backends = preflight.backends_of(await app[DEVICES])
    if body.device is None:
        preflight.check_backend(body.backend, backends.get(body.backend, (0,))[0], backends)
    else:
        preflight.check_backend(body.backend, body.device, backends)


def _ask(body: SpawnRequest) -> Ask:
    return Ask(model_ref=body.model_ref or models.DEFAULT_MODEL_REF, backend=body.backend, device=body.device,
               slots=body.slots, ctx_size=body.ctx_size, embeddings=body.embeddings)


def budgets_of(settings: HiveSettings) -> memory.Budgets:
    mib = 1024 * 1024
    return memory.Budgets(ram_bytes=settings.ram_budget_mb * mib or None,
                          vram_bytes=settings.vram_budget_mb * mib or None)


@routes.post("/v1/workers/ready")
async def worker_ready(request: web.Request) -> web.Response:
    """The worker's callback: the model is loaded. Register it with the queen, then it counts as ready."""
    app = request.app
    body = await read_model(request, WorkerReady)
    worker = app[SUPERVISOR].get(body.worker_id)
    await app[LINK].register_worker(worker)  # first, so a spawn that waits answers with a routable worker
    app[SUPERVISOR].mark_ready(body.worker_id)
    return json_response({"worker_id": worker.worker_id, "registered": True})


@routes.post("/v1/workers/{worker_id}/shutdown")
async def shutdown_worker(request: web.Request) -> web.Response:
    app = request.app
    worker = app[SUPERVISOR].get(request.match_info["worker_id"])
    await app[SUPERVISOR].stop(worker, app[SETTINGS].stop_grace)
    return json_response({"worker_id": worker.worker_id, "state": "exited"})


# ---------------------------------------------------------------- lifecycle


async def _model_refs(app: web.Application) -> list[str]:
    entries = await asyncio.to_thread(app[CATALOG].list)
    return [e.reference for e in entries]


async def _watch_loop(app: web.Application, watch: Watch) -> None:
    settings, supervisor, link = app[SETTINGS], app[SUPERVISOR], app[LINK]
    while True:
        started = time.monotonic()
        await watch.check_all()
        with contextlib.suppress(OSError, RbeeError):
            await link.heartbeat_hive(await _model_refs(app), len(supervisor.list()), _memory(app))
        # A fixed period, so slow (failing) checks do not stretch the time to notice a silent worker.
        await asyncio.sleep(max(0.0, settings.heartbeat_interval - (time.monotonic() - started)))


def _memory(app: web.Application) -> list[DeviceMemory] | None:
    """Per device, for the heartbeat; None until the devices are known."""
    devices = app[DEVICES]
    if not devices.done() or devices.cancelled() or devices.exception() is not None:
        return None
    settings = app[SETTINGS]
    return spawn_plan.ledger(devices.result(), app[SUPERVISOR].list(), budgets_of(settings), settings.min_resident)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    supervisor = app[SUPERVISOR]
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        app[HTTP] = session
        peers = Peers(session, settings.cluster_key)
        public_url = app[PUBLIC_URL]
        log.info("advertising this hive as %s", public_url)
        link = app[LINK] = Queens([QueenLink(peers, url, settings.node_name, public_url)
                                   for url in settings.queen_urls])
        watch = Watch(supervisor, link, session, idle_timeout=settings.idle_timeout, stop_grace=settings.stop_grace)
        pending: set[asyncio.Task] = set()

        def on_exit(worker: ManagedWorker) -> None:
            task = asyncio.get_running_loop().create_task(link.deregister_worker(worker))
            pending.add(task)
            task.add_done_callback(pending.discard)

        supervisor.on_exit = on_exit
        app[DEVICES] = asyncio.get_running_loop().create_task(preflight.detect_devices(supervisor.worker_command))

        async def devices() -> list[dict]:
            return await asyncio.shield(app[DEVICES])

        app[SPAWNER] = Spawner(supervisor, devices, budgets_of(settings), settings.min_resident,
                               is_idle=watch.is_idle, goodbye=link.deregister_worker, stop_grace=settings.stop_grace)
        await reconcile(watch)
        loop = asyncio.get_running_loop().create_task(_watch_loop(app, watch))
        yield
        app[DEVICES].cancel()  # still asking, at a quick shutdown: its child is killed
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        # SIGTERM cascade: every worker drains and exits (or is killed) before the hive does.
        await supervisor.stop_all(settings.stop_grace)
        await asyncio.gather(*(link.deregister_worker(w) for w in supervisor.list()), *pending,
                             return_exceptions=True)
        await link.close()


# What the hive's audit log records (rbee.audit_web): its admin actions.
AUDITED = {("POST", "/v1/workers/spawn"): "worker.spawn", ("POST", "/v1/workers/ready"): "worker.register",
           ("POST", "/v1/workers/{worker_id}/shutdown"): "worker.shutdown",
           ("POST", "/v1/models/download"): "model.download"}


def key_ring(settings: HiveSettings) -> KeyRing:
    """The cluster keys this hive accepts: every key of --cluster-key-file (re-read on SIGHUP), or the
    --cluster-key given instead."""
    path = settings.reloadable_key_file
    fixed = (settings.cluster_key,) if settings.cluster_key and path is None else ()
    return KeyRing(KeySource("cluster", "--cluster-key-file", fixed, path))


def create_app(settings: HiveSettings) -> web.Application:
    app = make_app()
    app[SETTINGS] = settings
    ring = key_ring(settings)
    reload.setup(app, ring)  # SIGHUP
    advertised = advertised_host(settings.host, settings.advertise_host, settings.queen_urls)
    app[PUBLIC_URL] = http_url(advertised, settings.port)
    ports = range(settings.worker_ports[0], settings.worker_ports[1] + 1) if settings.worker_ports else None
    app[SUPERVISOR] = Supervisor(
        settings.log_dir, host=settings.host, node_name=settings.node_name,
        advertise_host=advertised,
        callback_url=f"{settings.local_url}/v1/workers/ready", cluster_key=settings.cluster_key,
        state_path=settings.state_path, ports=ports, restart=settings.restart, max_restarts=settings.max_restarts,
        keep_on_crash=settings.keep_workers_on_crash, insecure_no_auth=settings.insecure_no_auth,
    )
    setup_models(app, settings.models_dir, settings.hf_base_url)  # first: the catalog opens before reconcile
    app.cleanup_ctx.append(_lifecycle)
    app.add_routes(routes)
    hive_metrics.setup(app, {"downloads": app[PROVISIONER].counts, "workers": app[SUPERVISOR].counts},
                       lambda: app.get(DEVICES))
    # Every state-changing route (spawn, ready callback, shutdown, model download) and /metrics need the
    # cluster key.
    app.middlewares.append(key_check := cluster_key_middleware(lambda: ring.keys("cluster"), control_or_metrics))
    if settings.audit_log is not None:
        audit = open_log(settings.audit_log, "hive", settings.audit_max_mb)
        audit_web.setup(app, audit, AUDITED, key_check=key_check)
        app[hive_metrics.REGISTRY].register(audit_web.AuditCollector(audit))
    return app

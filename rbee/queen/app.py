"""queen-rbee's application: wiring of settings, registry, admission queue, dispatcher and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from rbee import __version__, reload
from rbee.audit_web import open_log
from rbee.peer import Peers
from rbee.queen import audit_hooks, events_api, hives_api, metrics, nodes_api, openai, workers_api
from rbee.queen.admission import AdmissionQueue
from rbee.queen.appkeys import DISPATCHER, HIVES, PEERS, QUEUE, REGISTRY, SETTINGS
from rbee.queen.auth import RATE_LIMITER, auth_middleware, key_ring, rate_limit_middleware
from rbee.queen.cold_start import ColdStarter
from rbee.queen.dispatch import Dispatcher
from rbee.queen.health import probe_loop
from rbee.queen.inference import inference
from rbee.queen.metrics import METRICS
from rbee.queen.ratelimit import RateLimiter
from rbee.queen.registry import Registry
from rbee.queen.settings import QueenSettings
from rbee.web import json_response, make_app

log = logging.getLogger(__name__)


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "version": __version__, **request.app[SETTINGS].health_warning()})


async def _services(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client to workers, the dispatcher on top of it, and the health prober."""
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        peers = app[PEERS] = Peers(session, settings.cluster_key)
        app[DISPATCHER] = Dispatcher(
            app[REGISTRY], peers, app[QUEUE], stall_timeout=settings.stall_timeout,
            max_attempts=settings.max_attempts, max_resumes=settings.max_resumes, hooks=app[METRICS],
            cache_routing=settings.cache_routing, max_streams=settings.max_streams,
        )
        starter = ColdStarter(app[HIVES], peers, swap_after=settings.swap_after,
                              hold=app[REGISTRY].hold)
        app[DISPATCHER].cold_start = starter.provide
        app[DISPATCHER].require_live_hive = app[HIVES].require_live
        prober = asyncio.get_running_loop().create_task(probe_loop(
            app[REGISTRY], session, interval=settings.probe_interval,
            heartbeat_timeout=settings.heartbeat_timeout, remove_after=settings.remove_after,
            streaming=app[DISPATCHER].streaming,
        ))
        yield
        prober.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prober
        await starter.close()


def create_app(settings: QueenSettings) -> web.Application:
    app = make_app()
    app.middlewares.append(auth_middleware)
    app.middlewares.append(rate_limit_middleware)
    app[SETTINGS] = settings
    reload.setup(app, key_ring(settings), route="/v2/admin/reload")  # SIGHUP too
    app[RATE_LIMITER] = RateLimiter(settings.rate_limit_rpm, settings.rate_limit_concurrent)
    app[REGISTRY] = Registry(max_load_gap=settings.max_load_gap)
    app[QUEUE] = AdmissionQueue(app[REGISTRY], settings.queue_size, settings.queue_timeout,
                                cache_wait=settings.cache_wait)
    app.cleanup_ctx.append(_services)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/inference", inference)
    app.add_routes(workers_api.routes)
    hives_api.setup(app, settings.heartbeat_timeout)
    nodes_api.setup(app)  # after the services: it wires the dispatcher's hive pin
    openai.setup(app)
    metrics.setup(app)
    events_api.setup(app)  # after metrics and the services: it listens to the dispatcher beside them
    if settings.audit_log is not None:  # last: its hooks go first, its middlewares around the key check
        audit_hooks.setup(app, open_log(settings.audit_log, "queen", settings.audit_max_mb))
    return app

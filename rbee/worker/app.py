"""llm-worker-rbee's HTTP routes: thin handlers over the slot pool and the engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field

from rbee import __version__
from rbee.errors import ErrorCode, RbeeError
from rbee.logs import request_id_var
from rbee.protocol import InferenceRequest, ReadyStatus, WorkerReady, WorkerState
from rbee.sse import SSE_HEADERS, SSEWriter
from rbee.web import json_response, make_app, read_model
from rbee.worker.engine import ContextOverflow, Engine, EngineConfig, Job, Sampling
from rbee.worker.slots import SlotPool

log = logging.getLogger(__name__)


class WorkerSettings(BaseModel):
    worker_id: str = Field(description="Id this worker registers under.")
    model_ref: str = Field(description="The ref the model was asked for by (reported to the hive/queen).")
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    backend: str = "cpu"
    device: int = 0
    callback_url: str | None = Field(None, description="Hive endpoint told when the model is loaded.")
    cluster_key: str | None = None
    drain_timeout: float = Field(30.0, ge=0, description="Seconds running requests get to finish on shutdown.")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class Lifecycle:
    """Loading progress and state, watched by /v1/ready and the progress stream."""

    state: WorkerState = WorkerState.LOADING
    progress: float = 0.0
    error: str | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def update(self, *, state: WorkerState | None = None, progress: float | None = None) -> None:
        async with self.changed:
            if state is not None:
                self.state = state
            if progress is not None:
                self.progress = progress
            self.changed.notify_all()


SETTINGS = web.AppKey("settings", WorkerSettings)
ENGINE = web.AppKey("engine", Engine)
POOL = web.AppKey("pool", SlotPool)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
TASKS = web.AppKey("tasks", set)

routes = web.RouteTableDef()


def _state(app: web.Application) -> WorkerState:
    life, pool = app[LIFECYCLE], app[POOL]
    if life.state != WorkerState.IDLE:
        return life.state
    return WorkerState.BUSY if pool.table.available == 0 else WorkerState.IDLE


@routes.get("/v1/health")
async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "version": __version__, "state": _state(request.app)})


@routes.get("/v1/ready")
async def ready(request: web.Request) -> web.Response:
    app = request.app
    state, table = _state(app), app[POOL].table
    loaded = app[LIFECYCLE].state != WorkerState.LOADING
    status = ReadyStatus(
        ready=state in (WorkerState.IDLE, WorkerState.BUSY),
        state=state,
        model_loaded=loaded,
        progress_url=None if loaded else "/v1/loading/progress",
        slots_total=table.total,
        slots_available=table.available,
    )
    return json_response(status.model_dump(mode="json", exclude_none=True))


@routes.get("/v1/loading/progress")
async def loading_progress(request: web.Request) -> web.StreamResponse:
    life = request.app[LIFECYCLE]
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    sse = SSEWriter(response)
    async with life.changed:
        while life.state == WorkerState.LOADING:
            await sse.send({"stage": "loading", "progress": round(life.progress, 4)})
            await life.changed.wait()
    if life.error:
        await sse.send(RbeeError(ErrorCode.INTERNAL, life.error).envelope())
    else:
        await sse.send({"stage": "ready", "progress": 1.0})
    await sse.done()
    return response


@routes.get("/v1/info")
async def info(request: web.Request) -> web.Response:
    app = request.app
    engine, settings = app[ENGINE], app[SETTINGS]
    cfg = engine.config
    return json_response(
        {
            "worker_id": settings.worker_id,
            "model_ref": settings.model_ref,
            "model_path": str(cfg.model_path),
            "model": engine.metadata,
            "settings": {"slots": cfg.slots, "ctx_size": cfg.ctx_size, "threads": engine.threads,
                         "batch_size": cfg.batch_size, "backend": settings.backend, "device": settings.device},
        }
    )


@routes.post("/v1/inference")
async def inference(request: web.Request) -> web.StreamResponse:
    app = request.app
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    request_id_var.set(request_id)
    job = await read_model(request, InferenceRequest)
    state = app[LIFECYCLE].state
    if state == WorkerState.LOADING:
        raise RbeeError(ErrorCode.MODEL_LOADING, "The model is still loading. Retry after the Retry-After delay.")
    if state == WorkerState.DRAINING:
        raise RbeeError(ErrorCode.DRAINING, "This worker is shutting down. Send the request to another worker.")
    engine, pool = app[ENGINE], app[POOL]
    prompt_tokens = engine.tokenize(job.prompt)
    ctx_size = engine.config.ctx_size
    if len(prompt_tokens) >= ctx_size:
        raise RbeeError(
            ErrorCode.CONTEXT_OVERFLOW,
            f"The prompt is {len(prompt_tokens)} tokens but the context holds {ctx_size}. "
            "Shorten the prompt or start the worker with a larger --ctx-size.",
            {"prompt_tokens": len(prompt_tokens), "ctx_size": ctx_size},
        )
    max_tokens = min(job.max_tokens, ctx_size - len(prompt_tokens))

    def make_job(slot: int, emit: Any, on_finish: Any) -> Job:
        return Job(
            request_id=request_id, slot=slot, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
            sampling=Sampling(temperature=job.temperature, top_p=job.top_p, top_k=job.top_k, min_p=job.min_p,
                              repeat_penalty=job.repeat_penalty, seed=job.seed),
            stop=job.stop, emit=emit, on_finish=on_finish,
            max_tokens_clipped=max_tokens if max_tokens < job.max_tokens else None,
        )

    try:
        gen = pool.start(request_id, make_job)
    except ContextOverflow as exc:  # pragma: no cover - checked above, kept as a guard
        raise RbeeError(ErrorCode.CONTEXT_OVERFLOW, str(exc)) from None
    headers = {"X-Request-Id": request_id}
    if not job.stream:
        return await _collect(pool, request_id, gen, headers)

    response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
    finished = False
    try:
        await response.prepare(request)
        sse = SSEWriter(response)
        async for event in gen.events():
            await sse.send(event)
        finished = True
        await sse.done()
    except ConnectionResetError:
        log.info("client disconnected; request cancelled")
    finally:
        if not finished:  # the client went away: stop generating and free the slot
            await asyncio.shield(pool.cancel(request_id))
    return response


async def _collect(pool: SlotPool, request_id: str, gen: Any, headers: dict[str, str]) -> web.Response:
    parts: list[str] = []
    try:
        async for event in gen.events():
            if "error" in event:
                raise RbeeError(ErrorCode.INTERNAL, event["error"]["message"])
            if event.get("done"):
                body = {"text": "".join(parts), **{k: v for k, v in event.items() if k != "done"}}
                return json_response(body, headers=headers)
            parts.append(event["token"])
    finally:
        if pool.table.holds(request_id):
            await asyncio.shield(pool.cancel(request_id))
    raise RbeeError(ErrorCode.INTERNAL, "The generation ended without a result. Retry.")


@routes.delete("/v1/inference/{request_id}")
async def cancel(request: web.Request) -> web.Response:
    await request.app[POOL].cancel(request.match_info["request_id"])
    return web.Response(status=204)


@routes.post("/v1/admin/shutdown")
async def admin_shutdown(request: web.Request) -> web.Response:
    app = request.app
    if app[LIFECYCLE].state != WorkerState.DRAINING:
        _spawn(app, _drain_then_exit(app))
    return json_response({"state": "draining", "running": app[POOL].running}, status=202)


# ---------------------------------------------------------------- lifecycle


def _spawn(app: web.Application, coro: Any) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(coro)
    app[TASKS].add(task)
    task.add_done_callback(app[TASKS].discard)
    return task


async def _begin_drain(app: web.Application) -> None:
    app[POOL].draining = True
    await app[LIFECYCLE].update(state=WorkerState.DRAINING)
    if not await app[POOL].wait_idle(app[SETTINGS].drain_timeout):
        log.warning("drain timeout: cancelling %d running request(s)", app[POOL].running)


async def _drain_then_exit(app: web.Application) -> None:
    await _begin_drain(app)
    os.kill(os.getpid(), signal.SIGTERM)  # aiohttp's graceful exit runs the rest of the cleanup


async def _load_and_announce(app: web.Application) -> None:
    engine, life, settings = app[ENGINE], app[LIFECYCLE], app[SETTINGS]
    loop = asyncio.get_running_loop()

    def on_progress(fraction: float) -> None:  # llama.cpp's loader thread
        loop.call_soon_threadsafe(lambda: _spawn(app, life.update(progress=fraction)))

    try:
        await loop.run_in_executor(None, engine.load, on_progress)
    except Exception as exc:
        life.error = f"Could not load the model: {exc}. Check the --model path and the file."
        log.error(life.error)
        await life.update(state=WorkerState.OFFLINE)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    engine.start()
    await life.update(state=WorkerState.IDLE, progress=1.0)
    log.info("model loaded", extra={"fields": {"model": settings.model_ref, **engine.metadata}})
    if settings.callback_url:
        await _announce(settings, engine.config.slots)


async def _announce(settings: WorkerSettings, slots: int) -> None:
    """Tell the hive we are ready; retried with backoff because the hive may be busy starting."""
    payload = WorkerReady(
        worker_id=settings.worker_id, url=settings.url, model_ref=settings.model_ref,
        backend=settings.backend, device=settings.device, slots_total=slots,
    ).model_dump(mode="json")
    headers = {"Authorization": f"Bearer {settings.cluster_key}"} if settings.cluster_key else {}
    delay = 0.2
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for attempt in range(8):
            try:
                async with session.post(settings.callback_url, json=payload, headers=headers) as r:
                    if r.status < 300:
                        return
                    log.warning("ready callback answered %s", r.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.warning("ready callback failed (attempt %d): %s", attempt + 1, exc)
            await asyncio.sleep(delay)  # backoff between retries, not a readiness wait
            delay = min(delay * 2, 5.0)
    log.error("could not reach the callback URL %s; the hive will not know this worker", settings.callback_url)


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    app[TASKS] = set()
    _spawn(app, _load_and_announce(app))
    yield
    if app[LIFECYCLE].state != WorkerState.DRAINING:
        await _begin_drain(app)
    for task in list(app[TASKS]):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await asyncio.get_running_loop().run_in_executor(None, app[ENGINE].close)


def create_app(settings: WorkerSettings, config: EngineConfig) -> web.Application:
    app = make_app()
    app[SETTINGS] = settings
    app[ENGINE] = Engine(config)
    app[POOL] = SlotPool(app[ENGINE], config.slots)
    app[LIFECYCLE] = Lifecycle()
    app.cleanup_ctx.append(_engine_ctx)
    app.on_shutdown.append(_begin_drain)
    app.add_routes(routes)
    return app

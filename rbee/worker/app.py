"""llm-worker-rbee's HTTP routes: thin handlers over the slot pool and the engine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from rbee import __version__
from rbee import deadline as deadlines
from rbee.auth import cluster_key_middleware, control_or_metrics
from rbee.errors import ErrorCode, RbeeError
from rbee.events import Done, Prefilling, Token
from rbee.prefix import REPORT_HEADER
from rbee.protocol import (
    Capability,
    EmbeddingRequest,
    InferenceRequest,
    ReadyStatus,
    WorkerReady,
    WorkerState,
)
from rbee.sse import DONE_FRAME, SSE_HEADERS, SSEWriter, frame_event
from rbee.web import json_response, make_app, read_model, request_id_of
from rbee.worker import embeddings as embedding
from rbee.worker import metrics as worker_metrics
from rbee.worker import prompting
from rbee.worker.engine import Engine, EngineConfig, EngineError
from rbee.worker.hive_callback import announce
from rbee.worker.lifecycle import Lifecycle
from rbee.worker.settings import WorkerSettings
from rbee.worker.slots import Generation, SlotPool

log = logging.getLogger(__name__)


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
    return json_response({"status": "ok", "version": __version__, "state": _state(request.app),
                          "capability": _capability(request.app), **request.app[SETTINGS].health_warning()})


def _capability(app: web.Application) -> Capability:
    return Capability.EMBEDDINGS if app[SETTINGS].embeddings else Capability.GENERATE


def _refuse_unless_capable(app: web.Application, wanted: Capability) -> None:
    """An embeddings worker does nothing else, and a generating one no embeddings: say so, and where to go."""
    have = _capability(app)
    if have == wanted:
        return
    if have == Capability.EMBEDDINGS:
        message = ("This worker serves embeddings only (started with --embeddings): send generation to a "
                   "worker started without it, or through the queen.")
    else:
        message = ("This worker generates text and serves no embeddings: send them to a worker started with "
                   "--embeddings, or through the queen.")
    raise RbeeError(ErrorCode.INVALID_REQUEST, message, {"capability": have, "wanted": wanted})


@routes.get("/v1/ready")
async def ready(request: web.Request) -> web.Response:
    app = request.app
    state, table, life = _state(app), app[POOL].table, app[LIFECYCLE]
    status = ReadyStatus(
        ready=state in (WorkerState.IDLE, WorkerState.BUSY),
        state=state,
        model_loaded=life.model_loaded,
        progress_url="/v1/loading/progress" if state == WorkerState.LOADING else None,
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
    sent = -1.0
    while life.state == WorkerState.LOADING:
        changed = life.next_change()
        if life.progress > sent:  # llama.cpp reports often; send only what moved
            sent = life.progress
            await sse.send({"stage": "loading", "progress": round(sent, 4)})
        await changed.wait()
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
                         "batch_size": cfg.batch_size, "backend": settings.backend, "device": settings.device,
                         "n_gpu_layers": cfg.n_gpu_layers, "capability": _capability(app),
                         "pooling": engine.pooling},
        }
    )


@routes.post("/v1/inference")
async def inference(request: web.Request) -> web.StreamResponse:
    app = request.app
    request_id = request_id_of(request)
    req = await read_model(request, InferenceRequest)
    _refuse_unless_capable(app, Capability.GENERATE)
    deadline = deadlines.of_request(request.headers, req.timeout)
    _refuse_unless_serving(app)
    engine, pool = app[ENGINE], app[POOL]
    work = await prompting.prepare(req, request_id, engine, engine.config.ctx_size,
                                   report_cache=request.headers.get(REPORT_HEADER) == "1")
    _refuse_unless_serving(app)  # preparing may have awaited
    if deadline is not None:
        if deadline.expired():
            raise deadline.exceeded("before the worker started it", "Send it again with a later deadline.")
        work = dataclasses.replace(work, deadline=deadline.at)  # the engine stops it then (Engine._expire)
    try:
        gen = pool.start(work)
    except EngineError:  # the decode loop has stopped: we are on the way out
        raise RbeeError(ErrorCode.DRAINING, "This worker is shutting down. Send the request to another worker.") from None
    headers = {"X-Request-Id": request_id}
    if not req.stream:
        return await _collect(pool, request_id, gen, headers, deadline)
    return await _stream(request, pool, request_id, gen, headers)


async def _stream(request: web.Request, pool: SlotPool, request_id: str, gen: Generation,
                  headers: dict[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
    finished = False
    try:
        await response.prepare(request)
        # Events that piled up while the loop was busy go out in one write.
        async for batch in gen.batches():
            await response.write(b"".join(map(frame_event, batch)))
        finished = True
        await response.write(DONE_FRAME)
    except ConnectionResetError:
        log.info("client disconnected; request cancelled")
    finally:
        # The client went away (a failed write, or aiohttp cancelling this handler when the
        # connection drops): stop generating and free the slot.
        if not finished:
            await asyncio.shield(pool.cancel(request_id))
    return response


def _refuse_unless_serving(app: web.Application) -> None:
    state = app[LIFECYCLE].state
    if state == WorkerState.LOADING:
        raise RbeeError(ErrorCode.MODEL_LOADING, "The model is still loading. Retry after the Retry-After delay.")
    if state == WorkerState.DRAINING or app[POOL].draining:
        raise RbeeError(ErrorCode.DRAINING, "This worker is shutting down. Send the request to another worker.")
    if state == WorkerState.OFFLINE:
        raise RbeeError(ErrorCode.INTERNAL, f"This worker has no model: {app[LIFECYCLE].error}")


async def _collect(pool: SlotPool, request_id: str, gen: Generation, headers: dict[str, str],
                   deadline: deadlines.Deadline | None) -> web.Response:
    parts: list[str] = []
    logprobs: list[dict] | None = None
    try:
        async for event in gen.events():
            if isinstance(event, Token):
                parts.append(event.text)
                if event.logprobs is not None:
                    logprobs = logprobs if logprobs is not None else []
                    logprobs.extend(lp.wire() for lp in event.logprobs)
            elif isinstance(event, Prefilling):
                continue
            elif isinstance(event, Done):
                if event.finish_reason == "deadline":
                    assert deadline is not None  # only a request with a deadline ends for it
                    raise deadline.cut_short(event.total_tokens)
                body = event.wire()
                del body["done"]
                if logprobs is not None:
                    body["logprobs"] = logprobs
                return json_response({"text": "".join(parts), **body}, headers=headers)
            else:
                raise RbeeError(ErrorCode.INTERNAL, event.message, event.details)
    finally:
        if pool.table.holds(request_id):
            await asyncio.shield(pool.cancel(request_id))
    raise RbeeError(ErrorCode.INTERNAL, "The generation ended without a result. Retry.")


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    """Pooled vectors of each input, in OpenAI's shape. The request holds a slot while it runs, so the
    worker reads busy and a request beyond its slots is 503 ALL_SLOTS_BUSY, as for generation."""
    app = request.app
    request_id = request_id_of(request)
    req = await read_model(request, EmbeddingRequest)
    _refuse_unless_capable(app, Capability.EMBEDDINGS)
    _refuse_unless_serving(app)
    engine, settings, table = app[ENGINE], app[SETTINGS], app[POOL].table
    embedding.check_dimensions(req.dimensions, engine.metadata["embedding_length"])
    slot = table.acquire(request_id)
    try:
        loop = asyncio.get_running_loop()
        tokens = await loop.run_in_executor(None, lambda: embedding.token_inputs(
            req.inputs(), engine.tokenize, ctx_size=engine.config.ctx_size, n_vocab=engine.metadata["vocab_size"]))
        try:
            vectors = await loop.run_in_executor(None, engine.embed, tokens)
        except EngineError as err:
            raise RbeeError(ErrorCode.INTERNAL, f"The embedding failed: {err}. Check the worker log and retry.") from None
    finally:
        table.release(slot)
    app[worker_metrics.METRICS].embeddings.inc()
    body = embedding.answer(vectors, sum(map(len, tokens)), settings.model_ref, req.encoding_format)
    return json_response(body, headers={"X-Request-Id": request_id})


@routes.delete("/v1/inference/{request_id}")
async def cancel(request: web.Request) -> web.Response:
    await request.app[POOL].cancel(request.match_info["request_id"])
    return web.Response(status=204)


@routes.post("/v1/admin/shutdown")
async def admin_shutdown(request: web.Request) -> web.Response:
    app = request.app
    if not app[POOL].draining:
        # Draining starts before this answer leaves: from here on, new requests are refused.
        app[LIFECYCLE].start_drain(app[POOL], app[SETTINGS].drain_timeout)
        _spawn(app, _drain_then_exit(app))
    return json_response({"state": "draining", "running": app[POOL].running}, status=202)


# ---------------------------------------------------------------- lifecycle


def _spawn(app: web.Application, coro: Any) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(coro)
    app[TASKS].add(task)
    task.add_done_callback(app[TASKS].discard)
    return task


async def _drain(app: web.Application) -> None:
    await app[LIFECYCLE].drain(app[POOL], app[SETTINGS].drain_timeout)


async def _on_shutdown(app: web.Application) -> None:
    """aiohttp's graceful exit has begun (SIGTERM): it has stopped listening; let running requests finish."""
    app[LIFECYCLE].exiting = True
    await _drain(app)


def exit_gracefully() -> None:
    """Ask aiohttp's runner for its graceful exit (SIGTERM): stop listening, run the cleanups, exit 0."""
    os.kill(os.getpid(), signal.SIGTERM)


def _exit(app: web.Application) -> None:
    if not app[LIFECYCLE].exiting:  # a second SIGTERM would cut aiohttp's cleanup short
        app[LIFECYCLE].exiting = True
        exit_gracefully()


async def _drain_then_exit(app: web.Application) -> None:
    await _drain(app)
    _exit(app)  # aiohttp stops listening, runs on_shutdown (drained already) and the cleanups


async def _load_and_announce(app: web.Application) -> None:
    engine, life, settings = app[ENGINE], app[LIFECYCLE], app[SETTINGS]
    if not await life.load(engine):
        _exit(app)  # __main__ turns the recorded error into a non-zero exit code
        return
    log.info("model loaded", extra={"fields": {"model": settings.model_ref, **engine.metadata}})
    if settings.callback_url:
        payload = WorkerReady(worker_id=settings.worker_id, url=settings.url, model_ref=settings.model_ref,
                              backend=settings.backend, device=settings.device, slots_total=engine.config.slots,
                              capability=_capability(app))
        await announce(payload, settings.callback_url, settings.cluster_key)


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    app[TASKS] = set()
    _spawn(app, _load_and_announce(app))
    yield
    await _drain(app)  # already done on a normal shutdown (on_shutdown); this covers a failed start
    for task in list(app[TASKS]):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await asyncio.get_running_loop().run_in_executor(None, app[ENGINE].close)
    app[POOL].close()


def create_app(settings: WorkerSettings, config: EngineConfig) -> web.Application:
    app = make_app()
    app[SETTINGS] = settings
    app[ENGINE] = Engine(config)
    app[LIFECYCLE] = Lifecycle()
    app.cleanup_ctx.append(_engine_ctx)
    app.on_shutdown.append(_on_shutdown)
    app.add_routes(routes)
    # Inference, cancel, shutdown and /metrics (the hive's watch sends the key when it reads them).
    app.middlewares.append(cluster_key_middleware(settings.cluster_key, control_or_metrics))
    metrics = worker_metrics.setup(app, lambda: (app[POOL].table.total, app[POOL].table.busy),
                                   kv_usage=app[ENGINE].kv_usage)
    app[POOL] = SlotPool(app[ENGINE], config.slots, observe=metrics.observe)
    return app

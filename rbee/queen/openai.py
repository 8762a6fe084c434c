"""The OpenAI-compatible front door: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Requests are routed and queued exactly like ``/v1/inference`` (through the Dispatcher); the worker
renders chat messages with its model's template. The worker's events are reshaped into OpenAI
objects, streamed (``chat.completion.chunk`` … ``data: [DONE]``) or whole. Errors keep rbee's
envelope and add OpenAI's ``type``, so the official clients raise the matching exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from rbee.errors import ErrorCode, RbeeError
from rbee.events import Done, Failed, Token
from rbee.protocol import WorkerState
from rbee.queen import openai_types as oa
from rbee.queen.appkeys import DISPATCHER, REGISTRY, SETTINGS
from rbee.queen.auth import caller_of
from rbee.queen.dispatch import Dispatcher, Upstream
from rbee.queen.metrics import MODEL
from rbee.sse import DONE_FRAME, SSE_HEADERS, frame
from rbee.web import error_middleware, json_response, read_model, request_id_of

log = logging.getLogger(__name__)

PATHS = ("/v1/models", "/v1/chat/completions", "/v1/completions")
routes = web.RouteTableDef()


# ---------------------------------------------------------------- errors


def is_openai_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PATHS)


@web.middleware
async def openai_errors_middleware(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    """On the OpenAI routes, errors carry OpenAI's ``type`` too (sits outside auth and rate limits)."""
    if not is_openai_path(request.path):
        return await handler(request)
    try:
        return await handler(request)
    except RbeeError as err:
        headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
        return json_response(oa.openai_envelope(err), status=err.status, headers=headers)


# ---------------------------------------------------------------- models


def _served_models(request: web.Request) -> dict[str, int]:
    """Model ref → when its first live worker registered."""
    models: dict[str, int] = {}
    for w in request.app[REGISTRY].list():
        if w.state in (WorkerState.OFFLINE, WorkerState.DRAINING):
            continue
        ref, since = w.reg.model_ref, int(w.registered_at)
        models[ref] = min(models.get(ref, since), since)
    return models


def _model_object(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "rbee"}


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    served = _served_models(request)
    return json_response({"object": "list", "data": [_model_object(m, served[m]) for m in sorted(served)]})


@routes.get("/v1/models/{model:.+}")
async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    served = _served_models(request)
    live = [w for w in request.app[REGISTRY].list(model=name) if w.reg.model_ref in served]
    if not live:
        raise RbeeError(ErrorCode.MODEL_NOT_FOUND,
                        f"No live worker serves model '{name}'. List models with GET /v1/models.",
                        {"model": name, "available": sorted(served)})
    return json_response(_model_object(name, served[live[0].reg.model_ref]))


# ---------------------------------------------------------------- completions


@dataclass(frozen=True)
class Shape:
    """How one route dresses the worker's events as OpenAI objects (one choice per request)."""

    kind: str  # the whole answer's "object"
    chunk_kind: str  # each streamed chunk's "object"
    id_prefix: str
    chunk: Callable[[str | None, str | None], dict[str, Any]]  # (text or None at the end, finish reason)
    whole: Callable[[str, str], dict[str, Any]]  # (text, finish reason)
    opening: dict[str, Any] | None = None  # a first chunk before any text


CHAT = Shape(
    "chat.completion", "chat.completion.chunk", "chatcmpl",
    chunk=lambda text, finish: {"index": 0, "delta": {} if text is None else {"content": text}, "logprobs": None,
                                "finish_reason": finish},
    whole=lambda text, finish: {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                                "finish_reason": finish},
    opening={"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None},
)
# Legacy completions stream objects of the same kind as the whole answer (no ".chunk").
TEXT = Shape(
    "text_completion", "text_completion", "cmpl",
    chunk=lambda text, finish: {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish},
    whole=lambda text, finish: {"index": 0, "text": text, "logprobs": None, "finish_reason": finish},
)


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = await read_model(request, oa.ChatCompletionRequest)
    return await _complete(request, req, CHAT)


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    req = await read_model(request, oa.CompletionRequest)
    return await _complete(request, req, TEXT)


async def _complete(request: web.Request, req: oa.GenerationRequest, shape: Shape) -> web.StreamResponse:
    request_id = request_id_of(request)
    request[MODEL] = req.model
    job = req.to_inference()
    if request.app[SETTINGS].log_prompts:
        log.info("prompt", extra={"fields": {"prompt": job.prompt, "messages": job.messages}})
    dispatcher = request.app[DISPATCHER]
    upstream = await dispatcher.open(job, request_id=request_id, api_key=caller_of(request))
    log.info("dispatched", extra={"fields": {"worker_id": upstream.worker_id, "model": req.model,
                                             "queued_ms": upstream.queued_ms, "api": shape.kind}})
    head = {"id": f"{shape.id_prefix}-{request_id}", "created": int(time.time()), "model": req.model}
    headers = {"X-Rbee-Worker": upstream.worker_id, "X-Request-Id": request_id}
    client_gone = True
    try:
        if req.stream:
            response = await _stream(request, dispatcher, upstream, req, headers, head, shape)
        else:
            response = await _whole(dispatcher, upstream, headers, head, shape)
        client_gone = False
        return response
    finally:
        await asyncio.shield(dispatcher.close(upstream, client_gone=client_gone))


async def _whole(dispatcher: Dispatcher, upstream: Upstream, headers: dict[str, str], head: dict[str, Any],
                 shape: Shape) -> web.Response:
    parts: list[str] = []
    # Closed before the upstream is, so the dispatcher stops reading a stream we are done with.
    async with contextlib.aclosing(dispatcher.events(upstream)) as events:
        async for event in events:
            if isinstance(event, Token):
                parts.append(event.text)
            elif isinstance(event, Done):
                body = {**head, "object": shape.kind, "choices": [shape.whole("".join(parts), oa.finish_reason(event))],
                        "usage": oa.usage(event), "system_fingerprint": None}
                return json_response(body, headers=headers)
            else:
                raise _in_stream_error(event)
    raise RbeeError(ErrorCode.WORKER_UNAVAILABLE, "The worker's answer ended without a result. Retry.",
                    {"worker_id": upstream.worker_id})


async def _stream(request: web.Request, dispatcher: Dispatcher, upstream: Upstream, req: oa.GenerationRequest,
                  headers: dict[str, str], head: dict[str, Any], shape: Shape) -> web.StreamResponse:
    response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
    await response.prepare(request)
    extra = {"usage": None} if req.include_usage else {}

    async def send(choices: list[dict[str, Any]], **more: Any) -> None:
        await response.write(frame({**head, "object": shape.chunk_kind, "choices": choices, **extra, **more}))

    if shape.opening is not None:
        await send([shape.opening])
    async with contextlib.aclosing(dispatcher.events(upstream)) as events:
        async for event in events:
            if isinstance(event, Token):
                await send([shape.chunk(event.text, None)])
            elif isinstance(event, Done):
                await send([shape.chunk(None, oa.finish_reason(event))])
                if req.include_usage:
                    await send([], usage=oa.usage(event))
                break
            else:
                await response.write(frame(oa.openai_envelope(_in_stream_error(event))))
                break
    await response.write(DONE_FRAME)
    return response


def _in_stream_error(event: Failed) -> RbeeError:
    """A worker's in-stream failure, with a code our envelope knows (its status picks OpenAI's type)."""
    try:
        code = ErrorCode(event.code)
    except ValueError:
        code = ErrorCode.WORKER_UNAVAILABLE
    return RbeeError(code, event.message or "The worker failed mid-answer. Retry.", event.details)


def setup(app: web.Application) -> None:
    """Serve the OpenAI routes; their errors get OpenAI's ``type`` (just inside the error middleware)."""
    app.middlewares.insert(app.middlewares.index(error_middleware) + 1, openai_errors_middleware)
    app.add_routes(routes)

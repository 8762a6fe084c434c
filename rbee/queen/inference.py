"""POST /v1/inference: admit, dispatch, relay the worker's SSE unchanged but for the queen's timeline."""

from __future__ import annotations

import asyncio
import functools
import logging

from aiohttp import web

from rbee import deadline as deadlines
from rbee.errors import ErrorCode, RbeeError
from rbee.events import Failed, WaitNote
from rbee.protocol import InferenceRequest
from rbee.queen.appkeys import DISPATCHER, SETTINGS
from rbee.queen.auth import caller_of
from rbee.queen.dispatch import Dispatcher, Upstream
from rbee.queen.metrics import MODEL
from rbee.sse import DONE_FRAME, SSE_HEADERS, frame_comment, frame_event
from rbee.web import json_response, read_model, relay_response, request_id_of

log = logging.getLogger(__name__)


async def inference(request: web.Request) -> web.StreamResponse:
    request_id = request_id_of(request)
    job = await read_model(request, InferenceRequest)
    request[MODEL] = job.model or ""
    deadline = deadlines.of_request(request.headers, job.timeout, request.app[SETTINGS].default_timeout)
    if request.app[SETTINGS].log_prompts:
        log.info("prompt", extra={"fields": {"prompt": job.prompt, "messages": job.messages}})
    dispatcher = request.app[DISPATCHER]
    response: web.StreamResponse | None = None

    async def on_wait(note: WaitNote) -> None:
        # Streaming clients hear why they wait (their place in line, a model being provisioned) as SSE comments.
        nonlocal response
        if not job.stream:
            return
        if response is None:
            response = web.StreamResponse(headers={**SSE_HEADERS, "X-Request-Id": request_id})
            await response.prepare(request)
        await response.write(frame_comment(note.comment()))

    try:
        upstream = await dispatcher.open(job, request_id=request_id, api_key=caller_of(request), on_wait=on_wait,
                                         deadline=deadline)
    except RbeeError as err:
        if response is None:
            raise
        # Already streaming queue comments: the error goes out as an event.
        await response.write(frame_event(Failed.of(err)) + DONE_FRAME)
        return response
    # Logged once the handler next yields, after the first token went out: not on its path.
    asyncio.get_running_loop().call_soon(functools.partial(
        log.info, "dispatched", extra={"fields": {"worker_id": upstream.worker_id, "model": job.model,
                                                  "queued_ms": upstream.queued_ms}}))
    headers = {"X-Rbee-Worker": upstream.worker_id, "X-Request-Id": request_id}
    if not job.stream:
        return await _answer_whole(dispatcher, upstream, headers)
    client_gone = True
    try:
        if response is None:
            response = relay_response({**SSE_HEADERS, **headers})
            await response.prepare(request)
        await dispatcher.relay(upstream, response.write, response.write_eof)
        client_gone = False
    except ConnectionResetError:
        log.info("client went away; cancelling at the worker")
    except asyncio.CancelledError:
        log.info("client went away; cancelling at the worker")
        raise
    finally:
        await asyncio.shield(dispatcher.close(upstream, client_gone=client_gone))
    return response


async def _answer_whole(dispatcher: Dispatcher, upstream: Upstream, headers: dict[str, str]) -> web.Response:
    client_gone = True
    try:
        try:
            payload = await upstream.response.json(content_type=None)
        except ValueError:  # not JSON at all
            payload = None
        if not isinstance(payload, dict):
            client_gone = False
            raise RbeeError(ErrorCode.WORKER_UNAVAILABLE,
                            f"Worker '{upstream.worker_id}' answered a whole-answer request with something other "
                            "than a JSON object. Retry; if it persists, check it with `rbee-keeper workers health`.",
                            {"worker_id": upstream.worker_id})
        dispatcher.learn_cache(upstream.worker_id, payload.pop("cache_held", None), payload.pop("cache_version", None))
        payload.update(worker_id=upstream.worker_id, queued_ms=upstream.queued_ms)
        client_gone = False
        return json_response(payload, headers=headers)
    finally:
        await asyncio.shield(dispatcher.close(upstream, client_gone=client_gone))

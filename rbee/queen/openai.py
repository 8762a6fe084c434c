"""The OpenAI-compatible front door: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Requests are routed and queued exactly like ``/v1/inference`` (through the Dispatcher); the worker
renders chat messages with its model's template. The worker's events are reshaped into OpenAI
objects, streamed (``chat.completion.chunk`` … ``data: [DONE]``) or whole, with their logprobs when
asked. With tools, the worker's answer is the tool-call JSON (``rbee.queen.tool_calls``): its calls
become ``tool_calls`` (``finish_reason: "tool_calls"``), a reply in words streams as content.
Errors keep rbee's envelope and add OpenAI's ``type``, so the official clients raise the matching
exception. ``/v1/embeddings`` goes to workers started for embeddings (rbee.queen.embeddings).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from rbee import deadline as deadlines
from rbee.errors import ErrorCode, RbeeError
from rbee.events import Done, Failed, Token, TokenLogprob
from rbee.protocol import WorkerState
from rbee.queen import embeddings as embedding
from rbee.queen import openai_types as oa
from rbee.queen import tool_calls
from rbee.queen.appkeys import DISPATCHER, REGISTRY, SETTINGS
from rbee.queen.auth import caller_of
from rbee.queen.dispatch import Dispatcher, Upstream
from rbee.queen.metrics import MODEL
from rbee.sse import DONE_FRAME, SSE_HEADERS, frame
from rbee.web import error_middleware, json_response, read_model, relay_response, request_id_of

log = logging.getLogger(__name__)

PATHS = ("/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings")
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
        headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else {}
        if err.code == ErrorCode.DEADLINE_EXCEEDED:
            headers["x-should-retry"] = "false"  # the OpenAI clients retry a 504 unless told: too late is too late
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


# ---------------------------------------------------------------- embeddings


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    request_id = request_id_of(request)
    req = await read_model(request, oa.EmbeddingsRequest)
    request[MODEL] = req.model
    body, worker_id = await embedding.embed(request.app[DISPATCHER], req, request_id=request_id,
                                            api_key=caller_of(request))
    log.info("embedded", extra={"fields": {"worker_id": worker_id, "model": req.model, "inputs": len(body["data"]),
                                           "user": req.user}})
    return json_response(body, headers={"X-Rbee-Worker": worker_id, "X-Request-Id": request_id})


# ---------------------------------------------------------------- completions


class Reply:
    """One choice, built from the worker's token events: its text, its logprobs, and in tool mode the
    calls or the reply its JSON holds (``rbee.queen.tool_calls``)."""

    def __init__(self, tool_mode: bool) -> None:
        self.tool_mode = tool_mode
        self._parts: list[str] = []
        self._words = tool_calls.ReplyStream() if tool_mode else None
        self._calls = tool_calls.CallStream() if tool_mode else None
        self.call_deltas: list[dict[str, Any]] = []  # tool-call deltas not yet in a chunk
        self.sent = ""  # the content streamed so far
        self.logprobs: list[TokenLogprob] | None = None
        self.unsent: list[TokenLogprob] = []  # logprobs not yet in a chunk

    def add(self, token: Token) -> str:
        """Take one event; returns the content a stream sends now (in tool mode, maybe nothing yet)."""
        self._parts.append(token.text)
        if token.logprobs is not None:
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(token.logprobs)
            self.unsent.extend(token.logprobs)
        if self._words is None:
            text = token.text
        else:
            text = self._words.feed(token.text)
            self.call_deltas = _merged(self.call_deltas + self._calls.feed(token.text))  # type: ignore[union-attr]
        self.sent += text
        return text

    @property
    def streamed_calls(self) -> bool:
        return bool(self._calls is not None and self._calls.calls)

    def take_call_deltas(self) -> list[dict[str, Any]]:
        out, self.call_deltas = self.call_deltas, []
        return out

    def take_unsent(self) -> list[TokenLogprob] | None:
        if self.logprobs is None:
            return None
        out, self.unsent = self.unsent, []
        return out

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def answer(self) -> tool_calls.Answer:
        return tool_calls.parse(self.text) if self.tool_mode else tool_calls.Answer(content=self.text)

    def finish_reason(self, done: Done, answer: tool_calls.Answer) -> str:
        return "tool_calls" if answer.tool_calls and done.finish_reason == "stop" else oa.finish_reason(done)


def _merged(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool-call deltas with one entry per call: a call's pieces in one chunk are joined."""
    out: list[dict[str, Any]] = []
    for d in deltas:
        if out and out[-1]["index"] == d["index"] and "id" not in d:
            fn = out[-1]["function"]
            out[-1] = {**out[-1], "function": {**fn, "arguments": fn.get("arguments", "") + d["function"]["arguments"]}}
        else:
            out.append(d)
    return out


def _chat_logprobs(entries: list[TokenLogprob] | None) -> dict[str, Any] | None:
    return None if entries is None else {"content": [e.wire() for e in entries], "refusal": None}


def _text_logprobs(entries: list[TokenLogprob] | None, offset: int = 0) -> dict[str, Any] | None:
    """The legacy completions' shape: parallel lists, and a {token: logprob} map per position."""
    if entries is None:
        return None
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.chosen.token)
    return {"tokens": [e.chosen.token for e in entries], "token_logprobs": [e.chosen.logprob for e in entries],
            "top_logprobs": [{a.token: a.logprob for a in e.top} for e in entries], "text_offset": offsets}


class ChatShape:
    kind, chunk_kind, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    @staticmethod
    def opening(reply: Reply) -> dict[str, Any] | None:
        # In tool mode the answer may be calls, which carry no content.
        return {"index": 0, "delta": {"role": "assistant", "content": None if reply.tool_mode else ""},
                "logprobs": None, "finish_reason": None}

    @staticmethod
    def delta(reply: Reply, text: str) -> dict[str, Any]:
        return {"index": 0, "delta": {"content": text}, "logprobs": _chat_logprobs(reply.take_unsent()),
                "finish_reason": None}

    @staticmethod
    def call_delta(reply: Reply, deltas: list[dict[str, Any]]) -> dict[str, Any]:
        return {"index": 0, "delta": {"tool_calls": deltas}, "logprobs": _chat_logprobs(reply.take_unsent()),
                "finish_reason": None}

    @staticmethod
    def calls(reply: Reply, answer: tool_calls.Answer) -> list[dict[str, Any]]:
        """The calls as OpenAI streams them, id and name first, then the arguments (when they did not
        stream as they were written)."""
        if reply.streamed_calls:
            return []
        out = []
        for i, call in enumerate(answer.tool_calls):
            head = {"index": i, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            out.append({"index": 0, "delta": {"tool_calls": [head]}, "logprobs": _chat_logprobs(reply.take_unsent()),
                        "finish_reason": None})
            out.append({"index": 0, "delta": {"tool_calls": [{"index": i, "function": {"arguments": call.arguments}}]},
                        "logprobs": None, "finish_reason": None})
        return out

    @staticmethod
    def ending(reply: Reply, finish: str) -> dict[str, Any]:
        return {"index": 0, "delta": {}, "logprobs": _chat_logprobs(reply.take_unsent() or None), "finish_reason": finish}

    @staticmethod
    def whole(reply: Reply, answer: tool_calls.Answer, finish: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": answer.content, "refusal": None}
        if answer.tool_calls:
            message["tool_calls"] = [c.openai() for c in answer.tool_calls]
        return {"index": 0, "message": message, "logprobs": _chat_logprobs(reply.logprobs), "finish_reason": finish}


class TextShape:
    # Legacy completions stream objects of the same kind as the whole answer (no ".chunk").
    kind, chunk_kind, id_prefix = "text_completion", "text_completion", "cmpl"

    @staticmethod
    def opening(reply: Reply) -> dict[str, Any] | None:
        return None

    @staticmethod
    def delta(reply: Reply, text: str) -> dict[str, Any]:
        start = len(reply.sent) - len(text)
        return {"index": 0, "text": text, "logprobs": _text_logprobs(reply.take_unsent(), start),
                "finish_reason": None}

    @staticmethod
    def call_delta(reply: Reply, deltas: list[dict[str, Any]]) -> dict[str, Any]:
        raise AssertionError("text completions have no tool calls")

    @staticmethod
    def calls(reply: Reply, answer: tool_calls.Answer) -> list[dict[str, Any]]:
        return []

    @staticmethod
    def ending(reply: Reply, finish: str) -> dict[str, Any]:
        return {"index": 0, "text": "", "logprobs": _text_logprobs(reply.take_unsent() or None, len(reply.sent)),
                "finish_reason": finish}

    @staticmethod
    def whole(reply: Reply, answer: tool_calls.Answer, finish: str) -> dict[str, Any]:
        return {"index": 0, "text": answer.content or "", "logprobs": _text_logprobs(reply.logprobs),
                "finish_reason": finish}


Shape = type[ChatShape] | type[TextShape]


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = await read_model(request, oa.ChatCompletionRequest)
    return await _complete(request, req, ChatShape)


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    req = await read_model(request, oa.CompletionRequest)
    return await _complete(request, req, TextShape)


async def _complete(request: web.Request, req: oa.GenerationRequest, shape: Shape) -> web.StreamResponse:
    request_id = request_id_of(request)
    request[MODEL] = req.model
    job = req.to_inference()
    deadline = deadlines.of_request(request.headers, req.timeout, request.app[SETTINGS].default_timeout)
    if request.app[SETTINGS].log_prompts:
        log.info("prompt", extra={"fields": {"prompt": job.prompt, "messages": job.messages}})
    dispatcher = request.app[DISPATCHER]
    upstream = await dispatcher.open(job, request_id=request_id, api_key=caller_of(request), deadline=deadline)
    log.info("dispatched", extra={"fields": {"worker_id": upstream.worker_id, "model": req.model,
                                             "queued_ms": upstream.queued_ms, "api": shape.kind,
                                             "user": req.safety_identifier or req.user}})
    head = {"id": f"{shape.id_prefix}-{request_id}", "created": int(time.time()), "model": req.model}
    headers = {"X-Rbee-Worker": upstream.worker_id, "X-Request-Id": request_id}
    reply = Reply(req.tool_mode)
    client_gone = True
    try:
        if req.stream:
            response = await _stream(request, dispatcher, upstream, req, headers, head, shape, reply)
        else:
            response = await _whole(dispatcher, upstream, headers, head, shape, reply, deadline)
        client_gone = False
        return response
    finally:
        await asyncio.shield(dispatcher.close(upstream, client_gone=client_gone))


async def _whole(dispatcher: Dispatcher, upstream: Upstream, headers: dict[str, str], head: dict[str, Any],
                 shape: Shape, reply: Reply, deadline: deadlines.Deadline | None = None) -> web.Response:
    # Closed before the upstream is, so the dispatcher stops reading a stream we are done with.
    async with contextlib.aclosing(dispatcher.events(upstream)) as events:
        async for event in events:
            if isinstance(event, Token):
                reply.add(event)
            elif isinstance(event, Done):
                if event.finish_reason == "deadline":
                    assert deadline is not None  # only a request with a deadline ends for it
                    raise deadline.cut_short(event.total_tokens, worker_id=upstream.worker_id)
                answer = reply.answer()
                choice = shape.whole(reply, answer, reply.finish_reason(event, answer))
                body = {**head, "object": shape.kind, "choices": [choice], "usage": oa.usage(event),
                        "system_fingerprint": None}
                return json_response(body, headers=headers)
            else:
                raise _in_stream_error(event)
    raise RbeeError(ErrorCode.WORKER_UNAVAILABLE, "The worker's answer ended without a result. Retry.",
                    {"worker_id": upstream.worker_id})


async def _stream(request: web.Request, dispatcher: Dispatcher, upstream: Upstream, req: oa.GenerationRequest,
                  headers: dict[str, str], head: dict[str, Any], shape: Shape, reply: Reply) -> web.StreamResponse:
    response = relay_response({**SSE_HEADERS, **headers})
    await response.prepare(request)
    extra = {"usage": None} if req.include_usage else {}

    async def send(choices: list[dict[str, Any]], **more: Any) -> None:
        await response.write(frame({**head, "object": shape.chunk_kind, "choices": choices, **extra, **more}))

    opening = shape.opening(reply)
    if opening is not None:
        await send([opening])
    async with contextlib.aclosing(dispatcher.events(upstream)) as events:
        async for event in events:
            if isinstance(event, Token):
                text = reply.add(event)
                if text or not reply.tool_mode:
                    await send([shape.delta(reply, text)])
                deltas = reply.take_call_deltas()
                if deltas:
                    await send([shape.call_delta(reply, deltas)])
            elif isinstance(event, Done):
                await _send_ending(send, shape, reply, event)
                if req.include_usage:
                    await send([], usage=oa.usage(event))
                break
            else:
                await response.write(frame(oa.openai_envelope(_in_stream_error(event))))
                break
    await response.write(DONE_FRAME)
    return response


async def _send_ending(send: Callable[..., Awaitable[None]], shape: Shape, reply: Reply, done: Done) -> None:
    """What the tokens so far have not said yet (tool mode: the calls, the rest of a reply), then the end."""
    answer = reply.answer()
    rest = (answer.content or "")[len(reply.sent):] if answer.content is not None else ""
    if rest and (answer.content or "").startswith(reply.sent):
        reply.sent += rest
        await send([shape.delta(reply, rest)])
    for choice in shape.calls(reply, answer):
        await send([choice])
    await send([shape.ending(reply, reply.finish_reason(done, answer))])


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

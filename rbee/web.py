"""aiohttp glue shared by the three services: the error middleware, body parsing, running an app."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from rbee.errors import TOO_LARGE, ErrorCode, RbeeError, envelope, too_large, validation_error
from rbee.listener import ListenLimits, serve
from rbee.logs import request_id_var
from rbee.protocol import is_identifier

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
MAX_BODY_BYTES = 1024 * 1024

_HTTP_CODES = {
    404: (ErrorCode.NOT_FOUND, "No such route: {method} {path}. Check the URL against the API docs."),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "{method} is not allowed on {path}. Use one of: {allowed}."),
    413: (ErrorCode.PAYLOAD_TOO_LARGE, TOO_LARGE),
}


def dumps(obj: Any) -> str:
    """Compact JSON, the form every rbee answer takes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class _HeadersWithFirstWrite(web.StreamResponse):
    _send_headers_immediately = False  # aiohttp's own switch (its Response buffers them so too)


def relay_response(headers: dict[str, str]) -> web.StreamResponse:
    """A streamed answer whose first bytes are already at hand (a relay that waited for the worker's
    first token): the headers go out with them, one socket write fewer before the first token.
    Not for a stream that may stay silent after ``prepare`` (the client would not see the headers)."""
    return _HeadersWithFirstWrite(headers=headers)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=dumps)


def error_response(err: RbeeError, request_id: str | None = None) -> web.Response:
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    if request_id:
        headers["X-Request-Id"] = request_id
    return json_response(err.envelope(), status=err.status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """The one place errors become the envelope. Never lets a 500 leave as HTML. Every answer that
    has not been sent yet carries the request id, errors included."""
    rid = request_id_of(request)
    try:
        response = await handler(request)
    except RbeeError as err:
        return error_response(err, rid)
    except web.HTTPException as exc:
        response = _http_error(request, exc)
    except ConnectionResetError:
        raise  # the client went away; nothing to answer
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        body = envelope(ErrorCode.INTERNAL, "Internal error. Check this service's log, then retry.")
        response = json_response(body, status=500)
    if not response.prepared and "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = rid
    return response


def _http_error(request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
    """aiohttp's own refusals (404, 405, 413…) in the envelope."""
    if exc.status < 400:
        raise exc
    code, template = _HTTP_CODES.get(
        exc.status, (ErrorCode.INVALID_REQUEST, "{reason}. Check the request and try again.")
    )
    allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
    message = template.format(
        method=request.method, path=request.path, allowed=allowed, limit=MAX_BODY_BYTES, reason=exc.reason
    )
    err = RbeeError(code, message, {"status": exc.status})
    resp = json_response(err.envelope(), status=exc.status)
    if allowed:
        resp.headers["Allow"] = allowed
    return resp


async def read_model(request: web.Request, model: type[M]) -> M:
    """Parse and validate a JSON body; every failure is a 400 (or 413) naming what broke."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(request.app._client_max_size) from None
    if not raw.strip():
        raise RbeeError(ErrorCode.INVALID_REQUEST, "Request body is empty. Send a JSON object.")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = {"line": getattr(exc, "lineno", None), "column": getattr(exc, "colno", None)}
        raise RbeeError(
            ErrorCode.INVALID_REQUEST,
            f"Malformed JSON ({getattr(exc, 'msg', exc)}) at line {where['line']} column {where['column']}. "
            "Send a valid JSON object.",
            where,
        ) from None
    if not isinstance(data, dict):
        raise RbeeError(ErrorCode.INVALID_REQUEST, "Request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


REQUEST_ID = web.RequestKey("request_id", str)


def request_id_of(request: web.Request) -> str:
    """The caller's X-Request-Id when it is a valid id (passed on down the parts), else a fresh one;
    the same for the whole request, and the request id of this task's log lines."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        given = request.headers.get("X-Request-Id", "")
        rid = request[REQUEST_ID] = given if is_identifier(given) else uuid.uuid4().hex
    request_id_var.set(rid)
    return rid


def make_app(**kwargs: Any) -> web.Application:
    return web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES, **kwargs)


def json_model(obj: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(obj.model_dump(mode="json"), status=status, headers=headers)


EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (``auto``), else asyncio's own loop.

    Every token of every stream passes through an event loop (the worker's, then the queen's), on the
    same cores as llama.cpp's threads; uvloop does that work with about half the CPU.
    """
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise SystemExit("--event-loop uvloop, but uvloop is not installed "
                                 "(pip install uvloop, or pass --event-loop asyncio)") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(app: web.Application, host: str, port: int, event_loop: str = "auto",
        limits: ListenLimits | None = None, **kwargs: Any) -> None:
    """Serve until SIGTERM/SIGINT, with the header and keep-alive deadlines and the per-client cap of
    ``limits`` (rbee.listener)."""
    serve(app, host, port, limits or ListenLimits(), new_event_loop(event_loop), **kwargs)

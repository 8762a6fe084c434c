"""The token path: forward one admitted request to its worker and relay the SSE bytes as they come."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import web

from rbee.errors import ErrorCode, RbeeError
from rbee.queen.registry import Lease
from rbee.sse import DONE_FRAME, SSE_HEADERS, frame

log = logging.getLogger(__name__)


async def open_upstream(
    session: aiohttp.ClientSession, lease: Lease, body: dict, request_id: str
) -> aiohttp.ClientResponse:
    """POST the request to the worker; a refused connection or an error answer raises RbeeError."""
    try:
        upstream = await session.post(
            f"{lease.url}/v1/inference", json=body, headers={"X-Request-Id": request_id}
        )
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise RbeeError(
            ErrorCode.WORKER_UNAVAILABLE,
            f"Worker '{lease.worker_id}' at {lease.url} could not be reached ({exc.__class__.__name__}). "
            "Retry; if it persists, check the worker with `rbee-keeper workers health`.",
            {"worker_id": lease.worker_id},
        ) from None
    if upstream.status != 200:
        try:
            payload = await upstream.json(content_type=None)
            err = payload["error"]
            raise RbeeError(err["code"], err["message"], {**err.get("details", {}), "worker_id": lease.worker_id})
        except (ValueError, KeyError, TypeError, aiohttp.ClientError):
            raise RbeeError(
                ErrorCode.WORKER_UNAVAILABLE,
                f"Worker '{lease.worker_id}' answered HTTP {upstream.status}. Check its log, then retry.",
                {"worker_id": lease.worker_id, "status": upstream.status},
            ) from None
        finally:
            upstream.release()
    return upstream


async def relay_stream(
    request: web.Request, upstream: aiohttp.ClientResponse, headers: dict[str, str]
) -> web.StreamResponse:
    """Copy the worker's event stream to the client chunk by chunk, never buffering the answer."""
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, asyncio.TimeoutError) as exc:
        log.warning("worker stream broke: %s", exc.__class__.__name__)

        with contextlib.suppress(ConnectionResetError):
            err = RbeeError(
                ErrorCode.WORKER_UNAVAILABLE,
                "The worker stopped mid-stream. Retry the request; the partial answer above is incomplete.",
            )
            await response.write(frame(err.envelope()))
            await response.write(DONE_FRAME)
    finally:
        upstream.release()
    return response


async def cancel_at_worker(session: aiohttp.ClientSession, lease: Lease, request_id: str) -> None:
    """Tell the worker to stop generating for a client that went away (best effort, bounded)."""
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        async with session.delete(
            f"{lease.url}/v1/inference/{request_id}", timeout=aiohttp.ClientTimeout(total=2)
        ):
            pass

"""The token path: admit, lease a slot, open the worker's stream with failover, relay, give the slot back.

Failover is transparent only before the first byte of the answer has reached us: a refused or reset
connection, a worker-side ``ALL_SLOTS_BUSY`` race or a 5xx moves the request to another worker
(bounded). After that, a dying or stalled worker becomes one ``WORKER_UNAVAILABLE`` error event and
``[DONE]`` — never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from rbee.errors import ErrorCode, RbeeError
from rbee.queen.admission import AdmissionQueue, OnWait
from rbee.queen.registry import Lease, Registry
from rbee.sse import DONE_FRAME, frame

log = logging.getLogger(__name__)

RETRYABLE = {ErrorCode.ALL_SLOTS_BUSY, ErrorCode.DRAINING, ErrorCode.MODEL_LOADING, ErrorCode.WORKER_UNAVAILABLE,
             ErrorCode.INTERNAL}
_DONE_MARK = b'"done":true'
_ERROR_MARK = b'{"error":'


@dataclass
class Upstream:
    lease: Lease
    response: aiohttp.ClientResponse
    request_id: str
    queued_ms: int
    first_chunk: bytes
    started: float = field(default_factory=time.monotonic)  # admission done, about to send the request
    model: str | None = None  # the worker's model, for metrics
    first_token_at: float | None = None
    closed: bool = False  # we let go on purpose: a read failing after this is not the worker's fault

    @property
    def worker_id(self) -> str:
        return self.lease.worker_id


class Hooks:
    """What the dispatcher reports (metrics plug in here); the defaults do nothing."""

    def queue_wait(self, seconds: float) -> None: ...
    def ttft(self, seconds: float) -> None: ...
    def tokens(self, n: int, model: str | None) -> None: ...
    def cancellation(self) -> None: ...
    def failover(self) -> None: ...


class Dispatcher:
    def __init__(self, registry: Registry, session: aiohttp.ClientSession, queue: AdmissionQueue, *,
                 stall_timeout: float = 30.0, max_attempts: int = 3, cluster_key: str | None = None,
                 hooks: Hooks | None = None) -> None:
        self.registry = registry
        self.session = session
        self.queue = queue
        self.stall_timeout = stall_timeout
        self.max_attempts = max_attempts
        self.headers = {"Authorization": f"Bearer {cluster_key}"} if cluster_key else {}
        self.hooks = hooks or Hooks()
        # Set by the app when hives can spawn workers on demand: True once a worker for the model is ready.
        self.cold_start: Callable[[str], Awaitable[bool]] | None = None

    # ------------------------------------------------------------ opening

    async def open(self, body: dict[str, Any], *, model: str | None, request_id: str, api_key: str | None = None,
                   on_wait: OnWait | None = None) -> Upstream:
        tried: set[str] = set()
        last_error: RbeeError | None = None
        queued_s = 0.0
        for attempt in range(self.max_attempts):
            try:
                lease, waited = await self._admit(model, api_key or "", frozenset(tried), on_wait)
            except RbeeError as err:
                if last_error is not None and err.code in (ErrorCode.NO_IDLE_WORKERS, ErrorCode.NO_WORKERS):
                    raise last_error from None  # say what actually went wrong with the workers we tried
                raise
            queued_s += waited
            self.hooks.queue_wait(waited)
            try:
                return await self._connect(lease, body, request_id, int(queued_s * 1000))
            except RbeeError as err:
                self._give_back(lease)
                if err.code not in RETRYABLE:
                    raise
                tried.add(lease.worker_id)
                last_error = err
                self.hooks.failover()
                log.warning("failover", extra={"fields": {"worker_id": lease.worker_id, "code": err.code,
                                                          "attempt": attempt + 1}})
        assert last_error is not None
        raise last_error

    async def _admit(self, model: str | None, key: str, tried: frozenset[str],
                     on_wait: OnWait | None) -> tuple[Lease, float]:
        """Admission; when no worker serves ``model`` yet, a cold start on a hive (if one can), then again."""
        try:
            return await self.queue.admit(model, key, tried, on_wait)
        except RbeeError as err:
            cold = err.code in (ErrorCode.MODEL_NOT_FOUND, ErrorCode.NO_WORKERS) and not tried
            if not (cold and model and self.cold_start is not None and await self._cold_start(model, on_wait)):
                raise
        return await self.queue.admit(model, key, tried, on_wait)

    async def _cold_start(self, model: str, on_wait: OnWait | None) -> bool:
        """The cold start, telling a waiting client each second that its model is being provisioned
        (a download can take minutes; a streaming client and any proxy in between hear it is alive).

        The first note comes after a second: a cold start that ends sooner (no hive can try, or a hive
        refuses at once) still answers with a plain HTTP error rather than an error event in a stream."""
        assert self.cold_start is not None
        task = asyncio.ensure_future(self.cold_start(model))
        started = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=1.0)
                if done:
                    return task.result()
                if on_wait is not None:
                    await on_wait(f"provisioning model={model} elapsed_s={int(time.monotonic() - started)}")
        finally:
            task.cancel()  # only our wait: the spawn itself is shared and shielded (ColdStarter.provide)

    async def _connect(self, lease: Lease, body: dict[str, Any], request_id: str, queued_ms: int) -> Upstream:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=self.stall_timeout)
        started = time.monotonic()
        record = self.registry.find(lease.worker_id)
        model = record.reg.model_ref if record is not None else None
        try:
            response = await self.session.post(f"{lease.url}/v1/inference", json=body, timeout=timeout,
                                               headers={**self.headers, "X-Request-Id": request_id})
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.registry.unreachable(lease.worker_id)
            raise _unavailable(lease, exc.__class__.__name__) from None
        if response.status != 200:
            raise await _worker_error(lease, response)
        if not body.get("stream", True):
            return Upstream(lease, response, request_id, queued_ms, b"", started, model)
        try:
            first = await response.content.readany()
        except (TimeoutError, aiohttp.ClientError) as exc:
            response.release()
            raise _unavailable(lease, f"{exc.__class__.__name__} before the first token") from None
        if not first:
            response.release()
            raise _unavailable(lease, "closed before the first token")
        if first.startswith(b"data: " + _ERROR_MARK):  # failed before any token: another worker may do
            response.release()
            raise _unavailable(lease, "errored before the first token")
        return Upstream(lease, response, request_id, queued_ms, first, started, model)

    # ------------------------------------------------------------ relaying

    async def relay(self, upstream: Upstream, write: Callable[[bytes], Awaitable[None]]) -> None:
        """Copy the worker's SSE bytes to ``write`` as they come, adding the queen's timeline to the done event."""
        buffer = upstream.first_chunk
        ended = False
        content = upstream.response.content
        try:
            while True:
                if buffer:
                    cut = buffer.rfind(b"\n\n") + 2
                    if cut >= 2:
                        out, buffer = buffer[:cut], buffer[cut:]
                        if upstream.first_token_at is None:
                            self._first_token(upstream)
                        if _DONE_MARK in out:
                            out = self._stamp_done(upstream, out)
                        ended = ended or out.endswith(DONE_FRAME)
                        await write(out)
                if ended:
                    return
                chunk = await content.readany()
                if not chunk:
                    break
                buffer += chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            if upstream.closed:
                return
            reason = "stopped sending tokens" if isinstance(exc, asyncio.TimeoutError) else "broke the stream"
            await self._broken(upstream, write, reason)
            return
        if not ended:
            await self._broken(upstream, write, "closed the stream early")

    async def events(self, upstream: Upstream) -> AsyncIterator[dict[str, Any]]:
        """The worker's events, parsed (for front doors that reshape them, e.g. OpenAI)."""
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                await self.relay(upstream, chunks.put)
            finally:
                chunks.put_nowait(None)

        task = asyncio.ensure_future(pump())
        try:
            while (data := await chunks.get()) is not None:
                for block in data.split(b"\n\n"):
                    if block.startswith(b"data: ") and block[6:] != b"[DONE]":
                        yield json.loads(block[6:])
            await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _first_token(self, upstream: Upstream) -> None:
        upstream.first_token_at = time.monotonic()
        self.hooks.ttft(upstream.first_token_at - upstream.started)

    def _stamp_done(self, upstream: Upstream, out: bytes) -> bytes:
        blocks = out.split(b"\n\n")
        for i, block in enumerate(blocks):
            if _DONE_MARK in block and block.startswith(b"data: "):
                event = json.loads(block[6:])
                event["queued_ms"] = upstream.queued_ms
                first = upstream.first_token_at or time.monotonic()
                event["ttft_ms"] = int((first - upstream.started) * 1000)
                event["worker_id"] = upstream.worker_id
                self.hooks.tokens(int(event.get("total_tokens", 0)), upstream.model)
                blocks[i] = frame(event)[:-2]
        return b"\n\n".join(blocks)

    async def _broken(self, upstream: Upstream, write: Callable[[bytes], Awaitable[None]], reason: str) -> None:
        self.registry.unreachable(upstream.worker_id)
        await self.cancel_at_worker(upstream)
        err = RbeeError(
            ErrorCode.WORKER_UNAVAILABLE,
            f"Worker '{upstream.worker_id}' {reason} mid-answer. The text so far is incomplete; retry the request.",
            {"worker_id": upstream.worker_id},
        )
        log.warning("worker %s %s", upstream.worker_id, reason)
        await write(frame(err.envelope()) + DONE_FRAME)

    # ------------------------------------------------------------ closing

    async def close(self, upstream: Upstream, *, client_gone: bool) -> None:
        upstream.closed = True
        upstream.response.release()
        self._give_back(upstream.lease)
        if client_gone:
            self.hooks.cancellation()
            await self.cancel_at_worker(upstream)

    async def cancel_at_worker(self, upstream: Upstream) -> None:
        """Tell the worker to stop generating (best effort, bounded)."""
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with self.session.delete(f"{upstream.lease.url}/v1/inference/{upstream.request_id}",
                                           headers=self.headers, timeout=aiohttp.ClientTimeout(total=2)):
                pass

    def _give_back(self, lease: Lease) -> None:
        self.registry.release(lease)
        self.queue.slot_freed()


def _unavailable(lease: Lease, why: str) -> RbeeError:
    return RbeeError(
        ErrorCode.WORKER_UNAVAILABLE,
        f"Worker '{lease.worker_id}' at {lease.url} could not serve the request ({why}). "
        "Retry; if it persists, check it with `rbee-keeper workers health`.",
        {"worker_id": lease.worker_id},
    )


async def _worker_error(lease: Lease, response: aiohttp.ClientResponse) -> RbeeError:
    try:
        err = (await response.json(content_type=None))["error"]
        return RbeeError(err["code"], err["message"], {**err.get("details", {}), "worker_id": lease.worker_id})
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        return RbeeError(ErrorCode.WORKER_UNAVAILABLE,
                         f"Worker '{lease.worker_id}' answered HTTP {response.status}. Check its log, then retry.",
                         {"worker_id": lease.worker_id, "status": response.status})
    finally:
        response.release()

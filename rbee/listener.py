"""How every rbee server listens: deadlines and a cap that keep slow or greedy clients from starving
the others, and an open-file limit raised to match.

A client that opens many connections and sends half a request line on each used to hold them for as
long as it liked, and at the usual limit of 1,024 open files the server then refused everyone. Now:

- **Header-read deadline** (``--header-timeout``): a request head (request line and headers) must be
  complete this long after the connection opened, or after its first byte on a kept-alive connection;
  else the client gets a 408 in the envelope and the connection is closed. aiohttp has no such
  deadline of its own (its keep-alive timer, armed at connect, only closes a connection that is idle
  at the moment it fires, with one timeout for both jobs), so :class:`GuardedHandler` — aiohttp's
  ``RequestHandler`` with hooks on connect, data and disconnect — keeps it.
- **Body-read deadline** (``--body-timeout``): once its head is in, a request's body (small JSON,
  capped in size) must be all there within this, or the client gets a 408 in the envelope and the
  connection is closed. The body is read before the app sees the request (aiohttp keeps it for the
  handler), so a client that withholds it holds no handler and no slot.
- **Idle keep-alive deadline** (``--keepalive-timeout``): aiohttp's own ``keepalive_timeout``.
- **Connections per client address** (``--max-conns-per-client``, 0 = no cap): one more than that
  from one address is answered ``503 TOO_MANY_CONNECTIONS`` once its head arrives, then closed.
  Loopback counts too (a local proxy in front of the queen is one address for all its users: raise the
  cap there); the default is far above what one part opens to another (a queen's client pool to a
  worker holds at most 100 connections, a stream per slot).
- **Open files**: raised at start from the soft limit to the hard one, logged; a warning says so when
  the hard limit is below what the cap needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from rbee.errors import ErrorCode, RbeeError, too_large

log = logging.getLogger(__name__)

# Open files a server wants at least: clients at the cap from a few addresses, plus its own files and
# outgoing connections. Below this, a warning says how to raise the hard limit.
WANTED_OPEN_FILES = 4096
OPEN_FILES_HEADROOM = 1024  # beyond what a server's own bound needs: logs, the database, peers, stray clients


@dataclass
class ListenLimits:
    """What the listener enforces (from each server's settings) and who is connected now."""

    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_conns_per_client: int = 256
    body_timeout: float = 30.0
    open_files: int = WANTED_OPEN_FILES  # the open-file limit this server needs (the queen: for --max-streams)
    open_files_why: str = ""  # the setting behind open_files, named in the warning when it cannot be had
    open: Counter[str] = field(default_factory=Counter)  # connections now open, per client address


def _raw_error(err: RbeeError) -> bytes:
    """A whole HTTP/1.1 answer in the envelope, written straight to a connection that has no request."""
    body = json.dumps(err.envelope(), separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {err.status} {_REASONS[err.status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nX-Request-Id: {uuid.uuid4().hex}\r\n\r\n")
    return head.encode() + body


_REASONS = {408: "Request Timeout", 503: "Service Unavailable"}


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol, with the header- and body-read deadlines and the per-address cap."""

    def __init__(self, manager: web.Server, limits: ListenLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._app_handler = self._request_handler
        self._request_handler = self._body_in_time
        self._client: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self._limits.open[self._client] += 1
        cap = self._limits.max_conns_per_client
        if cap and self._limits.open[self._client] > cap:
            self._request_handler = self._refuse  # answered once its head is in, then closed
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        # A kept-alive connection waiting for its next request starts that request's deadline at its
        # first byte; a head that is complete (aiohttp counts it) ends the deadline.
        waiting = self._head_timer is None and self._waiter is not None and not self._waiter.done()
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._cancel_head_timer()
        elif waiting and data:
            self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        if self._client is not None:
            self._limits.open[self._client] -= 1
            if self._limits.open[self._client] <= 0:
                del self._limits.open[self._client]
            self._client = None
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self._loop.call_later(self._limits.header_timeout, self._head_too_late)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_late(self) -> None:
        self._head_timer = None
        if self.transport is None:
            return
        secs = self._limits.header_timeout
        log.info("closed a connection from %s: no complete request head within %gs", self._client, secs)
        self.transport.write(_raw_error(RbeeError(
            ErrorCode.REQUEST_TIMEOUT,
            f"No complete request head within {secs:g} s (--header-timeout). Send the whole request "
            "line and headers at once, or raise --header-timeout on this server.",
            {"header_timeout": secs})))
        self.force_close()

    async def _body_in_time(self, request: web.BaseRequest) -> web.StreamResponse:
        """The whole body within --body-timeout of its head, then the app; else 408 and close."""
        assert self._app_handler is not None
        if request.body_exists:
            if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # (aiohttp's own may follow: allowed)
            try:
                async with asyncio.timeout(self._limits.body_timeout):
                    await request.read()  # kept: the handler's read gets it from there
            except TimeoutError:
                return self._body_too_late(request)
            except web.HTTPRequestEntityTooLarge:
                # Not read to its end: answered here (the app would find it empty) and the connection closed.
                return self._refuse_body(too_large(request._client_max_size))
        return await self._app_handler(request)

    def _body_too_late(self, request: web.BaseRequest) -> web.StreamResponse:
        secs = self._limits.body_timeout
        log.info("closed a connection from %s: no complete body for %s %s within %gs", self._client,
                 request.method, request.path, secs)
        return self._refuse_body(RbeeError(
            ErrorCode.REQUEST_TIMEOUT,
            f"The request body did not arrive within {secs:g} s of its head (--body-timeout). Send the whole "
            "body at once (its Content-Length must match), or raise --body-timeout on this server.",
            {"body_timeout": secs}))

    def _refuse_body(self, err: RbeeError) -> web.StreamResponse:
        """``err`` in the envelope, and the connection closed after it: the rest of the body is never read."""
        resp = web.json_response(err.envelope(), status=err.status, headers={"X-Request-Id": uuid.uuid4().hex})
        resp.force_close()
        self._lingering_time = 0.0  # aiohttp would otherwise wait up to 10 s more for the rest of the body
        return resp

    async def _refuse(self, request: web.BaseRequest) -> web.StreamResponse:
        cap = self._limits.max_conns_per_client
        err = RbeeError(ErrorCode.TOO_MANY_CONNECTIONS,
                        f"Too many connections from {self._client} (this server takes {cap} per client "
                        "address, --max-conns-per-client). Close idle connections or reuse them, then retry.",
                        {"max_conns_per_client": cap})
        resp = web.json_response(err.envelope(), status=err.status,
                                 headers={"Retry-After": str(err.retry_after), "X-Request-Id": uuid.uuid4().hex})
        resp.force_close()
        return resp


class _GuardedSite(web.TCPSite):
    """aiohttp's TCP site, whose connections are GuardedHandlers."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, limits: ListenLimits) -> None:
        super().__init__(runner, host, port)
        self._limits = limits

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        # Server._kwargs: what aiohttp's own factory (Server.__call__) hands each RequestHandler.
        kwargs = server._kwargs

        def protocol() -> GuardedHandler:
            return GuardedHandler(server, self._limits, loop=loop, **kwargs)

        self._server = await loop.create_server(protocol, self._host, self._port, backlog=1024)


def raise_open_file_limit(wanted: int = WANTED_OPEN_FILES, why: str = "") -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (each connection is a file). Returns the limit in force;
    logs what it did, and warns when it stays below ``wanted`` (``why``: the setting that wants it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted * 16)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open-file limit raised from %d to %d", soft, target)
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d (%s)", soft, target, exc)
    if soft < wanted:
        needs = f"the {wanted} {why} needs" if why else f"the {wanted} this server wants"
        log.warning("open-file limit is %d (hard limit %s), below %s: a few clients holding many connections "
                    "can exhaust it. Raise it (ulimit -Hn, or LimitNOFILE= in the systemd unit) and restart%s.",
                    soft, hard, needs, f", or lower {why.split()[0]}" if why else "")
    return soft


async def _serve(app: web.Application, host: str, port: int, limits: ListenLimits, **kwargs: Any) -> None:
    runner = web.AppRunner(app, handle_signals=True, shutdown_timeout=5.0,
                           keepalive_timeout=limits.keepalive_timeout, **kwargs)
    await runner.setup()
    try:
        await _GuardedSite(runner, host, port, limits).start()
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()


def serve(app: web.Application, host: str, port: int, limits: ListenLimits, loop: asyncio.AbstractEventLoop,
          **kwargs: Any) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, as ``aiohttp.web.run_app`` does, through GuardedHandlers."""
    raise_open_file_limit(limits.open_files, limits.open_files_why)
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, host, port, limits, **kwargs))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError, web.GracefulExit):
                loop.run_until_complete(main)
        _cancel_all(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

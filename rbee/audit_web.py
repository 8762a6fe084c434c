"""The audit log on a server (queen and hive): who was let in or refused, and what they did.

- An audited route (an admin action, or inference) records its caller — route, client address, key
  fingerprint, request id — before it runs; when that cannot be written it answers 503
  ``AUDIT_UNAVAILABLE`` and does nothing. An admin action then records its outcome (status).
- A refused key, on any route, is recorded too; the request is refused anyway, so an entry lost
  there only counts as a failure.
- Reads (GET), heartbeats, ``/health`` and ``/metrics`` are not audited: monitoring keeps working
  while the audit log is down, and says so (``rbee_audit_available``).
- SIGHUP reopens the file (after it was moved away or removed) and records the key reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rbee import __version__
from rbee.audit import AuditLog, AuditStartError, AuditUnavailable, fsync_and_close
from rbee.auth import KEY_FINGERPRINT, bearer_of, fingerprint
from rbee.errors import ErrorCode, RbeeError
from rbee.keyring import Reloaded
from rbee.reload import ON_RELOAD
from rbee.web import request_id_of

log = logging.getLogger("rbee.audit")

AUDIT = web.AppKey("audit", AuditLog)
GATED = web.RequestKey("audit_gated", bool)  # its caller was recorded (so a refusal after is the handler's)
REFUSALS = frozenset({ErrorCode.MISSING_API_KEY, ErrorCode.INVALID_API_KEY, ErrorCode.ADMIN_NOT_CONFIGURED})
Actions = Mapping[tuple[str, str], str]  # (method, route pattern) -> the action's name; "inference" for generation


def open_log(path: Path, part: str, max_mb: float) -> AuditLog:
    """The audit log at ``path``, going on from its last entry; AuditStartError when it cannot."""
    audit = AuditLog(path, part=part, max_bytes=int(max_mb * 1024 * 1024))
    try:
        audit.record("audit.opened", pid=os.getpid(), version=__version__)
    except AuditUnavailable as err:
        audit.close()
        raise AuditStartError(f"cannot write to {path} ({err.message})") from None
    return audit


def start_or_exit(prog: str, make: Callable[[], web.Application]) -> web.Application:
    """``make()``, or exit 2 naming --audit-log when the audit log cannot be continued (fail closed)."""
    try:
        return make()
    except AuditStartError as err:
        print(f"{prog}: error: argument --audit-log: {err}", file=sys.stderr)
        sys.exit(2)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def _who(request: web.Request) -> dict:
    return {"route": _route(request), "method": request.method, "client": request.remote,
            "key": request.get(KEY_FINGERPRINT), "request_id": request_id_of(request)}


def middlewares(audit: AuditLog, actions: Actions) -> tuple[web.Middleware, web.Middleware]:
    """(outside the key check: records refusals, inside it: records audited actions)."""

    @web.middleware
    async def audit_refusals(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except RbeeError as err:
            if err.code in REFUSALS and not request.get(GATED):
                given = bearer_of(request)
                audit.try_record("auth.refused", **_who(request), code=str(err.code),
                                 offered=fingerprint(given) if given else None)
            raise

    @web.middleware
    async def audit_actions(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        action = actions.get((request.method, _route(request)))
        if action is None:
            return await handler(request)
        who = _who(request)
        audit.record("auth.ok", **who, action=action)  # AuditUnavailable: 503, before anything is done
        request[GATED] = True
        if action == "inference":  # its life is recorded by the dispatcher's hooks, with the request id
            return await handler(request)
        status, code = 499, None
        try:
            response = await handler(request)
            status = response.status
            return response
        except RbeeError as err:
            status, code = err.status, str(err.code)
            raise
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            audit.try_record("admin", **who, action=action, status=status, code=code)

    return audit_refusals, audit_actions


def setup(app: web.Application, audit: AuditLog, actions: Actions, *, key_check: web.Middleware) -> None:
    """Audit ``app``: refusals around ``key_check`` (already in its middlewares), actions inside it; the
    file reopened and the reload recorded on SIGHUP; fsync once a second; closed at shutdown."""
    app[AUDIT] = audit
    outer, inner = middlewares(audit, actions)
    at = app.middlewares.index(key_check)
    app.middlewares.insert(at + 1, inner)
    app.middlewares.insert(at, outer)
    app[ON_RELOAD].append(lambda via, result: _on_reload(audit, via, result))
    app.cleanup_ctx.append(_syncing(audit))


def _on_reload(audit: AuditLog, via: str, result: Reloaded) -> None:
    try:
        audit.reopen()
    except OSError as err:
        log.error("cannot reopen the audit log %s: %s", audit.path, err.strerror)
    fields = {"via": via, "ok": result.ok, "keys": result.counts}
    fields.update({"added": result.added, "removed": result.removed} if result.ok else {"error": result.error})
    if not audit.try_record("keys.reload", **fields):
        log.error("the key reload could not be written to the audit log %s", audit.path)


def _syncing(audit: AuditLog):
    async def sync_each_second(app: web.Application):
        async def loop() -> None:
            while True:
                await asyncio.sleep(1.0)
                fd = audit.sync_fd()
                if fd is not None:
                    with contextlib.suppress(OSError):
                        await asyncio.to_thread(fsync_and_close, fd)

        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        audit.try_record("audit.closed", pid=os.getpid())
        audit.close()

    return sync_each_second


class AuditCollector(Collector):
    """``rbee_audit_available`` (0 while entries cannot be written), entries written, entries lost."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    def collect(self) -> Iterator[Metric]:
        a = self._audit
        yield GaugeMetricFamily("rbee_audit_available", "1 while the audit log takes entries; 0 after one could "
                                "not be written (audited requests are refused with 503 AUDIT_UNAVAILABLE).",
                                value=1 if a.available else 0)
        yield CounterMetricFamily("rbee_audit_entries", "Audit entries written by this process.", value=a.entries)
        yield CounterMetricFamily("rbee_audit_write_failures", "Audit entries that could not be written.",
                                  value=a.failures)

    def describe(self) -> Iterator[Metric]:
        return iter(())

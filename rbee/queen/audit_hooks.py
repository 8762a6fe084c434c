"""What the queen's audit log records (rbee.audit_web): its audited routes, and each inference's life
from the dispatcher's hooks — admitted (raises when it cannot be written: the request does not
run), worker assigned, finished — all with the request id."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from rbee import audit_web
from rbee.audit import AuditLog
from rbee.queen.appkeys import DISPATCHER
from rbee.queen.auth import auth_middleware
from rbee.queen.dispatch import Hooks, Upstream
from rbee.queen.live import FanOut
from rbee.queen.metrics import METRICS

ACTIONS: dict[tuple[str, str], str] = {
    ("POST", "/v1/inference"): "inference",
    ("POST", "/v1/chat/completions"): "inference",
    ("POST", "/v1/completions"): "inference",
    ("POST", "/v2/workers/register"): "worker.register",
    ("DELETE", "/v2/workers/{worker_id}"): "worker.deregister",
    ("POST", "/v2/workers/shutdown"): "worker.shutdown",
    ("POST", "/v2/hives/register"): "hive.register",
    ("POST", "/v2/nodes"): "hive.add",
    ("DELETE", "/v2/nodes/{name}"): "hive.remove",
    ("POST", "/v2/nodes/{name}/install"): "hive.install",
    ("POST", "/v2/nodes/{name}/start"): "hive.start",
    ("POST", "/v2/nodes/{name}/stop"): "hive.stop",
    ("POST", "/v2/admin/reload"): "keys.reload",
}


class AuditHooks(Hooks):
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def opened(self, request_id: str, model: str | None, caller: str) -> None:
        self.audit.record("inference.admitted", request_id=request_id, model=model, caller=caller)

    def dispatched(self, upstream: Upstream) -> None:
        self.audit.try_record("inference.assigned", request_id=upstream.request_id, worker_id=upstream.worker_id,
                              model=upstream.model, route=str(upstream.lease.route), queued_ms=upstream.queued_ms)

    def ended(self, request_id: str, upstream: Upstream | None, outcome: str, error: str | None = None) -> None:
        self.audit.try_record("inference.finished", request_id=request_id,
                              worker_id=upstream.worker_id if upstream else None, outcome=outcome, error=error)


def setup(app: web.Application, audit: AuditLog) -> None:
    """After the metrics and the live view: audited routes, the audit metrics, the dispatcher's hooks
    (audit first, so a request it cannot admit is seen by no one else)."""
    audit_web.setup(app, audit, ACTIONS, key_check=auth_middleware)
    app[METRICS].registry.register(audit_web.AuditCollector(audit))

    async def listen(app: web.Application) -> AsyncIterator[None]:
        dispatcher = app[DISPATCHER]
        dispatcher.hooks = FanOut([AuditHooks(audit), dispatcher.hooks])
        yield

    app.cleanup_ctx.append(listen)

"""Error codes, their HTTP status, and the one error envelope every part answers with.

Domain code raises :class:`RbeeError`; one middleware (``rbee.web``) turns it into
``{"error": {"code", "message", "details"}}``. Nothing here imports aiohttp.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    INVALID_REQUEST = "INVALID_REQUEST"
    MISSING_API_KEY = "MISSING_API_KEY"
    INVALID_API_KEY = "INVALID_API_KEY"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    WORKER_NOT_FOUND = "WORKER_NOT_FOUND"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    WORKER_ALREADY_REGISTERED = "WORKER_ALREADY_REGISTERED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"
    NO_WORKERS = "NO_WORKERS"
    NO_IDLE_WORKERS = "NO_IDLE_WORKERS"
    ALL_SLOTS_BUSY = "ALL_SLOTS_BUSY"
    WORKER_UNAVAILABLE = "WORKER_UNAVAILABLE"
    QUEUE_TIMEOUT = "QUEUE_TIMEOUT"
    DRAINING = "DRAINING"
    MODEL_LOADING = "MODEL_LOADING"
    SPAWN_FAILED = "SPAWN_FAILED"
    INSUFFICIENT_RAM = "INSUFFICIENT_RAM"
    INSUFFICIENT_VRAM = "INSUFFICIENT_VRAM"  # the GPU a spawn would use lacks room (or its --vram-budget-mb)
    INSUFFICIENT_RESOURCES = "INSUFFICIENT_RESOURCES"  # the queen: no hive has room for the model
    INVALID_BACKEND = "INVALID_BACKEND"
    DEVICE_NOT_FOUND = "DEVICE_NOT_FOUND"
    DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
    INSUFFICIENT_STORAGE = "INSUFFICIENT_STORAGE"
    MODEL_ACCESS_DENIED = "MODEL_ACCESS_DENIED"
    HIVE_NOT_FOUND = "HIVE_NOT_FOUND"
    HIVE_OFFLINE = "HIVE_OFFLINE"
    CONTEXT_OVERFLOW = "CONTEXT_OVERFLOW"
    HIVE_ALREADY_EXISTS = "HIVE_ALREADY_EXISTS"
    HIVE_RUNNING = "HIVE_RUNNING"
    VERSION_MISMATCH = "VERSION_MISMATCH"
    HIVE_NOT_INSTALLED = "HIVE_NOT_INSTALLED"
    REMOTE_UNSUPPORTED = "REMOTE_UNSUPPORTED"
    INSTALL_FAILED = "INSTALL_FAILED"
    HIVE_START_FAILED = "HIVE_START_FAILED"
    SSH_UNREACHABLE = "SSH_UNREACHABLE"
    SSH_AUTH_FAILED = "SSH_AUTH_FAILED"
    SSH_HOST_KEY_CHANGED = "SSH_HOST_KEY_CHANGED"
    SSH_HOST_KEY_UNKNOWN = "SSH_HOST_KEY_UNKNOWN"
    SSH_FAILED = "SSH_FAILED"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    TOO_MANY_STREAMS = "TOO_MANY_STREAMS"  # the queen relays its --max-streams already
    KEY_RELOAD_FAILED = "KEY_RELOAD_FAILED"
    ADMIN_NOT_CONFIGURED = "ADMIN_NOT_CONFIGURED"
    AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.CONTEXT_OVERFLOW: 400,
    ErrorCode.INVALID_BACKEND: 400,
    ErrorCode.DEVICE_NOT_FOUND: 400,
    ErrorCode.MODEL_ACCESS_DENIED: 403,
    ErrorCode.HIVE_NOT_FOUND: 404,
    ErrorCode.MISSING_API_KEY: 401,
    ErrorCode.INVALID_API_KEY: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.WORKER_NOT_FOUND: 404,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.WORKER_ALREADY_REGISTERED: 409,
    ErrorCode.HIVE_ALREADY_EXISTS: 409,
    ErrorCode.HIVE_RUNNING: 409,
    ErrorCode.VERSION_MISMATCH: 409,
    ErrorCode.HIVE_NOT_INSTALLED: 424,
    ErrorCode.REMOTE_UNSUPPORTED: 424,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.WORKER_UNAVAILABLE: 502,
    ErrorCode.SPAWN_FAILED: 502,
    ErrorCode.DOWNLOAD_FAILED: 502,
    ErrorCode.INSTALL_FAILED: 502,
    ErrorCode.HIVE_START_FAILED: 502,
    ErrorCode.SSH_AUTH_FAILED: 502,
    ErrorCode.SSH_HOST_KEY_CHANGED: 502,
    ErrorCode.SSH_HOST_KEY_UNKNOWN: 502,
    ErrorCode.SSH_FAILED: 502,
    ErrorCode.SSH_UNREACHABLE: 504,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.INSUFFICIENT_RAM: 507,
    ErrorCode.INSUFFICIENT_VRAM: 507,
    ErrorCode.INSUFFICIENT_RESOURCES: 507,
    ErrorCode.INSUFFICIENT_STORAGE: 507,
    ErrorCode.NO_WORKERS: 503,
    ErrorCode.HIVE_OFFLINE: 503,
    ErrorCode.NO_IDLE_WORKERS: 503,
    ErrorCode.ALL_SLOTS_BUSY: 503,
    ErrorCode.QUEUE_TIMEOUT: 503,
    ErrorCode.DRAINING: 503,
    ErrorCode.MODEL_LOADING: 503,
    ErrorCode.TOO_MANY_CONNECTIONS: 503,
    ErrorCode.TOO_MANY_STREAMS: 503,
    ErrorCode.KEY_RELOAD_FAILED: 409,
    ErrorCode.ADMIN_NOT_CONFIGURED: 403,
    ErrorCode.AUDIT_UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}

# Codes whose answer carries Retry-After (seconds) unless the raiser gives its own.
DEFAULT_RETRY_AFTER: dict[ErrorCode, int] = {
    ErrorCode.RATE_LIMITED: 1,
    ErrorCode.NO_WORKERS: 5,
    ErrorCode.HIVE_OFFLINE: 5,
    ErrorCode.NO_IDLE_WORKERS: 1,
    ErrorCode.ALL_SLOTS_BUSY: 1,
    ErrorCode.QUEUE_TIMEOUT: 1,
    ErrorCode.DRAINING: 5,
    ErrorCode.MODEL_LOADING: 1,
    ErrorCode.TOO_MANY_CONNECTIONS: 1,
    ErrorCode.TOO_MANY_STREAMS: 1,
    ErrorCode.AUDIT_UNAVAILABLE: 5,
}


class RbeeError(Exception):
    """A failure with a code from the contract, a message that says what to do next, and details."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after if retry_after is not None else DEFAULT_RETRY_AFTER.get(self.code)

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    def envelope(self) -> dict[str, Any]:
        return envelope(self.code, self.message, self.details)


TOO_LARGE = "Request body too large (limit {limit} bytes). Send a smaller body."


def too_large(limit: int) -> RbeeError:
    """413: a request body over the server's limit (aiohttp's ``client_max_size``)."""
    return RbeeError(ErrorCode.PAYLOAD_TOO_LARGE, TOO_LARGE.format(limit=limit), {"limit_bytes": limit})


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": str(code), "message": message, "details": details or {}}}


def validation_error(exc: Any) -> RbeeError:
    """Turn a pydantic ValidationError into INVALID_REQUEST naming each bad field."""
    problems = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err.get("loc", ())) or "(body)"
        problems.append({"field": field, "problem": err.get("msg", "invalid")})
    names = ", ".join(p["field"] for p in problems)
    first = problems[0] if problems else {"field": "(body)", "problem": "invalid"}
    return RbeeError(
        ErrorCode.INVALID_REQUEST,
        f"Invalid field '{first['field']}': {first['problem']}. Fix {names} and send the request again.",
        {"fields": problems},
    )

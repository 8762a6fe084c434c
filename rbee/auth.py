"""Bearer keys, checked the same way by every program: constant time, never logged.

The queen checks client API keys (``rbee.queen.auth``); hives and workers check the shared
cluster key with :func:`cluster_key_middleware`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable

from aiohttp import web

from rbee.errors import ErrorCode, RbeeError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def bearer_of(request: web.Request) -> str | None:
    """The key in ``Authorization: Bearer <key>``, or None when the header is missing or of another kind."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def matches(given: str, keys: Iterable[str]) -> bool:
    """True if ``given`` is one of ``keys``. Compares against every key, each in constant time."""
    given_b = given.encode("utf-8", "surrogateescape")
    found = False
    for key in keys:
        found |= hmac.compare_digest(given_b, key.encode("utf-8", "surrogateescape"))
    return found


def fingerprint(key: str) -> str:
    """A short, stable, non-reversible name for a key: safe for logs, metrics and rate-limit buckets."""
    return "key-" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def require(request: web.Request, keys: Iterable[str], *, whose: str) -> str:
    """The caller's key when it is one of ``keys``; else 401 MISSING_API_KEY or INVALID_API_KEY."""
    given = bearer_of(request)
    if given is None:
        raise RbeeError(ErrorCode.MISSING_API_KEY,
                        f"Missing {whose}. Send the header 'Authorization: Bearer <key>'.")
    if not matches(given, keys):
        raise RbeeError(ErrorCode.INVALID_API_KEY, f"Invalid {whose}. Check the key you were given.")
    return given


def state_changing(request: web.Request) -> bool:
    return request.method not in SAFE_METHODS


def cluster_key_middleware(key: str | None, protect: Callable[[web.Request], bool] = state_changing):
    """Routes for which ``protect`` holds need the cluster key (when one is set); the rest stay open."""

    @web.middleware
    async def check_cluster_key(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        if key and protect(request):
            require(request, (key,), whose="cluster key")
        return await handler(request)

    return check_cluster_key

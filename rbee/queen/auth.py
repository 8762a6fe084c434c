"""Who may call the queen, and how much: API keys, the cluster key on control routes, per-key rate limits.

- With ``--api-key`` set, every route but ``/health`` and the dashboard's static files (``/ui``) needs
  ``Authorization: Bearer <key>``.
- The control routes (``/v2/...``) and ``/metrics`` also take the cluster key; with a cluster key
  set, the control routes need one of the keys even when no API key is configured.
- Keys are compared in constant time and never logged: the rest of the queen knows a caller by
  :func:`rbee.auth.fingerprint` only (rate-limit buckets, admission fairness).
"""

from __future__ import annotations

from aiohttp import web

from rbee import auth
from rbee.queen.appkeys import SETTINGS
from rbee.queen.ratelimit import RateLimiter

OPEN_PATHS = frozenset({"/health"})
OPEN_PREFIXES = ("/ui/",)  # the dashboard's static files: no data; it asks for the key itself
GENERATING_PATHS = frozenset({"/v1/inference", "/v1/chat/completions", "/v1/completions"})

CALLER = web.RequestKey("caller", str)  # fingerprint of the caller's key, or "addr-<ip>" on an open queen
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)


def caller_of(request: web.Request) -> str:
    """The identity rate limits and fair queueing use for this request (never the key itself)."""
    return request.get(CALLER) or _anonymous(request)


def _anonymous(request: web.Request) -> str:
    return f"addr-{request.remote or 'unknown'}"


def _accepted_keys(request: web.Request) -> list[str] | None:
    """The keys that may call this route, or None when it is open."""
    settings = request.app[SETTINGS]
    path = request.path
    if path in OPEN_PATHS or path == "/ui" or path.startswith(OPEN_PREFIXES):
        return None
    keys = list(settings.api_keys)
    cluster_route = path.startswith("/v2/") or path == "/metrics"
    if settings.cluster_key and cluster_route:
        keys.append(settings.cluster_key)
        if path.startswith("/v2/"):
            return keys  # the control plane is closed whenever a cluster key exists
    return keys or None


@web.middleware
async def auth_middleware(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    keys = _accepted_keys(request)
    if keys is None:
        request[CALLER] = _anonymous(request)
    else:
        request[CALLER] = auth.fingerprint(auth.require(request, keys, whose="API key"))
    return await handler(request)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    """Client routes (``/v1/...``) count against the caller's requests per minute; generating ones
    also hold one of its concurrent streams until the answer is complete."""
    limiter = request.app[RATE_LIMITER]
    if not limiter.enabled or not request.path.startswith("/v1/"):
        return await handler(request)
    generating = request.method == "POST" and request.path in GENERATING_PATHS
    ticket = limiter.admit(caller_of(request), stream=generating)
    try:
        return await handler(request)
    finally:
        if ticket is not None:
            ticket.release()

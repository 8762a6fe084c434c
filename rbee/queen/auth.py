"""Who may call the queen, and how much: API keys, the cluster key on control routes, per-key rate limits.

- With ``--api-key`` set, every route but ``/health`` and the dashboard's static files (``/ui``) needs
  ``Authorization: Bearer <key>``.
- The control routes (``/v2/...``) and ``/metrics`` also take the cluster key; with a cluster key
  set, the control routes need one of the keys even when no API key is configured.
- ``/v2/admin/...`` (the key reload) takes only the keys of ``--admin-key-file``; with none it is
  403 ``ADMIN_NOT_CONFIGURED``.
- Keys are compared in constant time and never logged: the rest of the queen knows a caller by
  :func:`rbee.auth.fingerprint` only (rate-limit buckets, admission fairness).
- The keys come from the app's :class:`rbee.keyring.KeyRing`, re-read on reload (``rbee.reload``).
"""

from __future__ import annotations

from aiohttp import web

from rbee import auth
from rbee.errors import ErrorCode, RbeeError
from rbee.keyring import KeyRing, KeySource
from rbee.queen.ratelimit import RateLimiter
from rbee.queen.settings import QueenSettings
from rbee.reload import KEYRING

OPEN_PATHS = frozenset({"/health"})
OPEN_PREFIXES = ("/ui/",)  # the dashboard's static files: no data; it asks for the key itself
ADMIN_PREFIX = "/v2/admin/"
GENERATING_PATHS = frozenset({"/v1/inference", "/v1/chat/completions", "/v1/completions"})

CALLER = web.RequestKey("caller", str)  # fingerprint of the caller's key, or "addr-<ip>" on an open queen
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)


def caller_of(request: web.Request) -> str:
    """The identity rate limits and fair queueing use for this request (never the key itself)."""
    return request.get(CALLER) or _anonymous(request)


def _anonymous(request: web.Request) -> str:
    return f"addr-{request.remote or 'unknown'}"


def key_ring(settings: QueenSettings) -> KeyRing:
    """The queen's key sets: API keys (flags and file), the cluster key (fixed), admin keys (file)."""
    cluster = (settings.cluster_key,) if settings.cluster_key else ()
    return KeyRing(KeySource("api", "--api-key-file", tuple(settings.api_keys), settings.api_key_file),
                   KeySource("cluster", "--cluster-key", cluster),
                   KeySource("admin", "--admin-key-file", (), settings.admin_key_file))


def _accepted_keys(request: web.Request) -> list[str] | None:
    """The keys that may call this route, or None when it is open."""
    ring = request.app[KEYRING]
    path = request.path
    if path in OPEN_PATHS or path == "/ui" or path.startswith(OPEN_PREFIXES):
        return None
    if path.startswith(ADMIN_PREFIX):
        if not ring.has("admin"):
            raise RbeeError(ErrorCode.ADMIN_NOT_CONFIGURED,
                            f"{path} needs an admin key and this queen has none. Start it with --admin-key-file "
                            "FILE, or send it SIGHUP to reload its key files.")
        return list(ring.keys("admin"))
    keys = list(ring.keys("api"))
    cluster_route = path.startswith("/v2/") or path == "/metrics"
    if ring.has("cluster") and cluster_route:
        keys += ring.keys("cluster")
        if path.startswith("/v2/"):
            return keys  # the control plane is closed whenever a cluster key exists
    return keys or None


@web.middleware
async def auth_middleware(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    keys = _accepted_keys(request)
    if keys is None:
        request[CALLER] = _anonymous(request)
    else:
        whose = "admin key" if request.path.startswith(ADMIN_PREFIX) else "API key"
        request[CALLER] = request[auth.KEY_FINGERPRINT] = auth.fingerprint(auth.require(request, keys, whose=whose))
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

"""Bearer keys, checked the same way by every program: constant time, never logged.

The queen checks client API keys (``rbee.queen.auth``); hives and workers check the shared
cluster key with :func:`cluster_key_middleware`.
"""

from __future__ import annotations

import hashlib
import hmac
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from aiohttp import web

from rbee.errors import ErrorCode, RbeeError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MIN_KEY_CHARS = 16
LOOPBACK = frozenset({"localhost", "::1"})
MAKE_ONE = "make one with `openssl rand -hex 16`"


def strong_key(key: str) -> str:
    """A key long enough to be worth checking (a validator for every key setting)."""
    if len(key.strip()) < MIN_KEY_CHARS:
        raise ValueError(f"a key of {len(key.strip())} characters is too short to be safe; use at least "
                         f"{MIN_KEY_CHARS} ({MAKE_ONE})")
    return key.strip()


def read_key_file(path: Path) -> list[str]:
    """The keys in ``path`` (one a line). Fails closed, saying how to fix it: a file others can read,
    an empty one, or a key too short is refused, never run with."""
    path = path.expanduser()
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read {path} ({err.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"other users can read {path}; run `chmod 600 {path}`")
    keys = [line.strip() for line in text.splitlines() if line.strip()]
    if not keys:
        raise ValueError(f"{path} holds no key; put one key per line ({MAKE_ONE})")
    for key in keys:
        strong_key(key)
    return keys


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def open_to_network(host: str, keyed: bool, insecure: bool, flag: str) -> str | None:
    """Why a server must not start: listening beyond this machine with no key, unless asked to."""
    if keyed or insecure or is_loopback(host):
        return None
    return (f"--host {host} listens beyond this machine but no {flag} is set, so anyone who can reach it "
            f"could use it. Set {flag}, or pass --insecure-no-auth to run it open on purpose.")


# The fingerprint of the key a request was let in with (set by the middlewares that check one).
KEY_FINGERPRINT = web.RequestKey("key_fingerprint", str)

INSECURE_WARNING = "running WITHOUT authentication on a non-loopback address (--insecure-no-auth)"


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


def control_or_metrics(request: web.Request) -> bool:
    """What the cluster key guards on a hive and a worker: every state-changing route, and ``/metrics``
    (what a part serves and how busy it is is for the cluster, not for anyone who can reach the port)."""
    return state_changing(request) or request.path == "/metrics"


def cluster_key_middleware(key: str | None | Callable[[], Sequence[str]],
                           protect: Callable[[web.Request], bool] = state_changing):
    """Routes for which ``protect`` holds need the cluster key (when one is set); the rest stay open.
    ``key`` is the key, or what gives the keys accepted right now (a hive's reloadable key ring)."""
    keys: Callable[[], Sequence[str]] = key if callable(key) else (lambda: (key,) if key else ())

    @web.middleware
    async def check_cluster_key(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        accepted = keys()
        if accepted and protect(request):
            request[KEY_FINGERPRINT] = fingerprint(require(request, accepted, whose="cluster key"))
        return await handler(request)

    return check_cluster_key

"""Calling another part of rbee: the cluster key on the request, a refusal back as the typed error.

Every part talks to the others through here — the queen to workers and hives, a hive to the queen,
a worker to its hive, rbee-keeper to all of them — so a call is authenticated one way, and a remote
error envelope comes back as the same :class:`RbeeError` it was on the other side, with the peer
named in its details.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from rbee.errors import ErrorCode, RbeeError


def auth_headers(key: str | None) -> dict[str, str]:
    """``Authorization: Bearer <key>``, or nothing when no key is set."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def envelope(body: Any) -> dict[str, Any] | None:
    """The ``{"code", "message", "details"}`` of an rbee error answer, or None for anything else."""
    err = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str)):
        return None
    details = err.get("details")
    return {"code": err["code"], "message": err["message"], "details": details if isinstance(details, dict) else {}}


def remote_error(body: Any, status: int, *, peer: str, ident: dict[str, Any],
                 fallback: ErrorCode = ErrorCode.WORKER_UNAVAILABLE) -> RbeeError:
    """The error a peer answered with, as it was raised there, ``ident`` (e.g. ``{"worker_id": …}``)
    added to its details; ``fallback`` when the answer is not an rbee envelope (a proxy, a crash)."""
    env = envelope(body)
    if env is not None:
        return RbeeError(env["code"], env["message"], {**env["details"], **ident})
    return RbeeError(fallback, f"{peer} answered HTTP {status}. Check its log, then retry.",
                     {**ident, "status": status})


async def error_of(response: aiohttp.ClientResponse, *, peer: str, ident: dict[str, Any],
                   fallback: ErrorCode = ErrorCode.WORKER_UNAVAILABLE) -> RbeeError:
    """:func:`remote_error` of an aiohttp answer; the response is released."""
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        body = None
    finally:
        response.release()
    return remote_error(body, response.status, peer=peer, ident=ident, fallback=fallback)


def unreachable(peer: str, url: str, exc: BaseException, next_step: str, *, ident: dict[str, Any],
                code: ErrorCode = ErrorCode.WORKER_UNAVAILABLE) -> RbeeError:
    return RbeeError(code, f"{peer} did not answer at {url} ({exc.__class__.__name__}). {next_step}", ident)


class Peers:
    """An aiohttp session and the cluster key: how one part calls the others' control routes."""

    def __init__(self, session: aiohttp.ClientSession, cluster_key: str | None) -> None:
        self.session = session
        self.headers = auth_headers(cluster_key)

    async def call(self, method: str, url: str, *, peer: str, ident: dict[str, Any], next_step: str,
                   json: Any = None, timeout: aiohttp.ClientTimeout | None = None,
                   fallback: ErrorCode = ErrorCode.WORKER_UNAVAILABLE) -> Any:
        """The JSON answer (None for an empty one); the peer's own error, or ``fallback`` when it could
        not be reached (``next_step`` says what to do about that)."""
        extra = {"timeout": timeout} if timeout is not None else {}
        try:
            async with self.session.request(method, url, json=json, headers=self.headers, **extra) as r:
                if r.status >= 300:
                    raise await error_of(r, peer=peer, ident=ident, fallback=fallback)
                if r.status == 204 or r.content_length == 0:
                    return None
                return await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise unreachable(peer, url, exc, next_step, ident=ident, code=fallback) from None

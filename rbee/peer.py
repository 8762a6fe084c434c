"""Calling another part of rbee: the cluster key on the request, a refusal back as the typed error.

Every part talks to the others through here — the queen to workers and hives, a hive to the queen,
a worker to its hive, rbee-keeper to all of them — so a call is authenticated one way, and a remote
error envelope comes back as the same :class:`RbeeError` it was on the other side, with the peer
named in its details. A call that cannot even connect (refused: the peer is starting or restarting)
may be tried again on a :class:`Backoff`, bounded, with one log line; a request that reached the
peer is never sent twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from rbee.errors import ErrorCode, RbeeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """How a call that could not connect is tried again: ``attempts`` tries in all, the waits between
    them doubling from ``first`` up to ``cap`` seconds (so the whole wait is bounded: :attr:`total`)."""

    attempts: int = 4
    first: float = 0.25
    cap: float = 2.0

    def delays(self) -> list[float]:
        return [min(self.cap, self.first * 2**i) for i in range(max(0, self.attempts - 1))]

    @property
    def total(self) -> float:
        return sum(self.delays())

    def describe(self) -> str:
        return f"{self.attempts - 1} more times within {self.total:.1f} s"


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
                code: ErrorCode = ErrorCode.WORKER_UNAVAILABLE, tries: int = 1) -> RbeeError:
    how = f", {tries} tries" if tries > 1 else ""
    return RbeeError(code, f"{peer} did not answer at {url} ({exc.__class__.__name__}{how}). {next_step}",
                     {**ident, "tries": tries} if tries > 1 else ident)


class Peers:
    """An aiohttp session and the cluster key: how one part calls the others' control routes."""

    def __init__(self, session: aiohttp.ClientSession, cluster_key: str | None) -> None:
        self.session = session
        self.headers = auth_headers(cluster_key)

    async def call(self, method: str, url: str, *, peer: str, ident: dict[str, Any], next_step: str,
                   json: Any = None, timeout: aiohttp.ClientTimeout | None = None,
                   fallback: ErrorCode = ErrorCode.WORKER_UNAVAILABLE, retry: Backoff | None = None,
                   headers: dict[str, str] | None = None) -> Any:
        """The JSON answer (None for an empty one); the peer's own error, or ``fallback`` when it could
        not be reached (``next_step`` says what to do about that). With ``retry``, a connection that fails
        (nothing was sent) is tried again on that schedule, logged once."""
        delays = retry.delays() if retry is not None else []
        tries = 0
        while True:
            tries += 1
            try:
                return await self._call_once(method, url, json, timeout, headers, peer, ident, fallback)
            except aiohttp.ClientConnectorError as exc:  # never connected: safe to send again
                if not delays:
                    raise unreachable(peer, url, exc, next_step, ident=ident, code=fallback,
                                      tries=tries) from None
                if tries == 1:
                    assert retry is not None
                    log.warning("%s refused the connection at %s (%s); trying %s", peer, url,
                                exc.__class__.__name__, retry.describe(), extra={"fields": ident})
                await asyncio.sleep(delays.pop(0))  # the backoff schedule itself
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise unreachable(peer, url, exc, next_step, ident=ident, code=fallback, tries=tries) from None

    async def _call_once(self, method: str, url: str, json: Any, timeout: aiohttp.ClientTimeout | None,
                         headers: dict[str, str] | None, peer: str, ident: dict[str, Any],
                         fallback: ErrorCode) -> Any:
        extra = {"timeout": timeout} if timeout is not None else {}
        async with self.session.request(method, url, json=json, headers={**self.headers, **(headers or {})},
                                        **extra) as r:
            if r.status >= 300:
                raise await error_of(r, peer=peer, ident=ident, fallback=fallback)
            if r.status == 204 or r.content_length == 0:
                return None
            return await r.json(content_type=None)

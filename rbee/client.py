"""Typed HTTP clients for the three services: rbee-keeper talks to the fleet through them, and so
do the behave steps.

Streams are read with sseclient-py, a parser independent of ``rbee.sse``, so the tests also check
that what rbee frames is plain SSE to anyone."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
import sseclient

from rbee.peer import Backoff, auth_headers
from rbee.protocol import WorkerInfo, WorkerList

DEFAULT_TIMEOUT = 10.0
T = TypeVar("T")


@dataclass
class StreamResult:
    """A finished SSE exchange: status, headers, every event in order, and when each arrived."""

    status: int
    headers: dict[str, str]
    events: list[dict[str, Any]] = field(default_factory=list)
    arrival: list[float] = field(default_factory=list)
    terminated: bool = False  # saw data: [DONE]
    error_body: dict[str, Any] | None = None
    started: float = 0.0
    ended: float = 0.0

    @property
    def tokens(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "token" in e]

    @property
    def text(self) -> str:
        return "".join(e["token"] for e in self.tokens)

    @property
    def done(self) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("done")), None)

    @property
    def error(self) -> dict[str, Any] | None:
        if self.error_body is not None:
            return self.error_body.get("error")
        return next((e["error"] for e in self.events if "error" in e), None)


def iter_events(response: requests.Response) -> Iterator[str]:
    """Each event's data from a streamed ``requests`` response (sseclient-py does the parsing)."""
    # chunk_size=None yields each HTTP chunk as it arrives; a fixed size would wait to fill it.
    for event in sseclient.SSEClient(response.iter_content(chunk_size=None)).events():
        yield event.data


def read_stream(response: requests.Response, started: float | None = None) -> StreamResult:
    result = StreamResult(status=response.status_code, headers=dict(response.headers), started=started or 0.0)
    if response.status_code != 200 or not response.headers.get("Content-Type", "").startswith("text/event-stream"):
        try:
            result.error_body = response.json()
        except ValueError:
            result.error_body = {"error": {"code": "?", "message": response.text[:500]}}
        return result
    for data in iter_events(response):
        if data == "[DONE]":
            result.terminated = True
            break
        result.events.append(json.loads(data))
        result.arrival.append(time.monotonic())
    result.ended = time.monotonic()
    return result


def refused(exc: BaseException) -> bool:
    """The connection was refused (nothing listens yet: a part still starting), so the request was never
    sent and may be sent again."""
    reason = getattr(exc.args[0], "reason", None) if isinstance(exc, requests.ConnectionError) and exc.args else None
    cause = reason.__cause__ or reason.__context__ if reason is not None else None
    return isinstance(cause, ConnectionRefusedError)


def while_refused(call: Callable[[], T], backoff: Backoff, note: Callable[[], None],
                  sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, made again on ``backoff`` while its connection is :func:`refused`; ``note()`` once, before
    the first retry. Any other failure, or the last refusal, is raised."""
    delays = backoff.delays()
    while True:
        try:
            return call()
        except requests.ConnectionError as exc:
            if not (refused(exc) and delays):
                raise
            if len(delays) == backoff.attempts - 1:
                note()
            sleep(delays.pop(0))  # the backoff schedule itself


class Client:
    """requests with a base URL, a bearer key and default timeouts; ``stream`` reads SSE whole."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update(auth_headers(api_key))

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self._url(path), timeout=kw.pop("timeout", self.timeout), **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.session.post(self._url(path), timeout=kw.pop("timeout", self.timeout), **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.session.delete(self._url(path), timeout=kw.pop("timeout", self.timeout), **kw)

    def patch(self, path: str, **kw: Any) -> requests.Response:
        return self.session.patch(self._url(path), timeout=kw.pop("timeout", self.timeout), **kw)

    def stream(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None,
               read_timeout: float = 120.0) -> StreamResult:
        started = time.monotonic()
        with self.session.post(self._url(path), json=body, headers=headers, stream=True,
                               timeout=(self.timeout, read_timeout)) as r:
            return read_stream(r, started)

    def open_stream(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> requests.Response:
        """Start a stream and hand back the live response (the caller reads or abandons it)."""
        return self.session.post(self._url(path), json=body, headers=headers, stream=True,
                                 timeout=(self.timeout, 120.0))


class QueenClient(Client):
    def register(self, payload: dict[str, Any]) -> requests.Response:
        return self.post("/v2/workers/register", json=payload)

    def workers(self, **filters: str) -> list[WorkerInfo]:
        r = self.get("/v2/workers/list", params=filters)
        r.raise_for_status()
        return WorkerList.model_validate(r.json()).workers

    def worker(self, worker_id: str) -> WorkerInfo | None:
        return next((w for w in self.workers() if w.worker_id == worker_id), None)

    def infer(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> StreamResult:
        return self.stream("/v1/inference", body, headers)


class WorkerClient(Client):
    def ready(self) -> dict[str, Any]:
        return self.get("/v1/ready").json()

    def infer(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> StreamResult:
        return self.stream("/v1/inference", body, headers)


class HiveClient(Client):
    def spawn(self, **body: Any) -> requests.Response:
        return self.post("/v1/workers/spawn", json=body)

    def workers(self) -> list[dict[str, Any]]:
        r = self.get("/v1/workers/list")
        r.raise_for_status()
        return r.json()["workers"]

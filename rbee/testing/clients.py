"""Typed HTTP clients for the three services, used by the behave steps and rbee-keeper."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
import sseclient

from rbee.protocol import WorkerInfo, WorkerList

DEFAULT_TIMEOUT = 10.0


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


class _Client:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

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


class QueenClient(_Client):
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


class WorkerClient(_Client):
    def ready(self) -> dict[str, Any]:
        return self.get("/v1/ready").json()

    def infer(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> StreamResult:
        return self.stream("/v1/inference", body, headers)


class HiveClient(_Client):
    def spawn(self, **body: Any) -> requests.Response:
        return self.post("/v1/workers/spawn", json=body)

    def workers(self) -> list[dict[str, Any]]:
        r = self.get("/v1/workers/list")
        r.raise_for_status()
        return r.json()["workers"]


def wait_until(predicate: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (requests.RequestException, ValueError, KeyError) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}"
                                 + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval)  # poll interval


class BackgroundStream:
    """A stream read on a thread, so a scenario can hold a slot busy, watch queue comments, let go later."""

    def __init__(self, client: _Client, path: str, body: dict[str, Any],
                 headers: dict[str, str] | None = None) -> None:
        import threading

        self.response = client.open_stream(path, body, headers)
        self.first_event = threading.Event()
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.first_token_at: float | None = None
        self.terminated = False
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @property
    def worker_id(self) -> str | None:
        return self.response.headers.get("X-Rbee-Worker")

    @property
    def request_id(self) -> str | None:
        return self.response.headers.get("X-Request-Id")

    def _read(self) -> None:
        try:
            if self.response.status_code != 200:
                return
            for line in self.response.iter_lines(chunk_size=None, decode_unicode=True):
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line.startswith("data:"):
                    data = line[5:].strip()
                    if data == "[DONE]":
                        self.terminated = True
                        break
                    event = json.loads(data)
                    if "token" in event and self.first_token_at is None:
                        self.first_token_at = time.monotonic()
                    self.events.append(event)
                    self.first_event.set()
                if self._abandon.is_set():
                    break
        except requests.RequestException:
            pass
        finally:
            # Closing from the reading thread drops the TCP connection mid-stream.
            self.response.close()
            self.first_event.set()

    def wait_first_event(self, timeout: float) -> None:
        if not self.first_event.wait(timeout):
            raise AssertionError(f"no event within {timeout}s")

    def wait_finished(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"stream still open after {timeout}s")

    def abandon(self) -> None:
        """Drop the connection mid-stream, as a client that goes away does."""
        self._abandon.set()
        self._thread.join(10)
        if self._thread.is_alive():
            raise AssertionError("the stream did not yield another line within 10 s, so it could not be dropped")


# ---------------------------------------------------------------- worker-level helpers


def at_once(*calls: Any, timeout: float = 60.0) -> list[Any]:
    """Run each call on its own thread, all released by one barrier at the same instant.

    Results (or the exception each raised) come back in call order.
    """
    import threading

    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait(timeout)
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - handed back to the caller, who asserts on it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if any(t.is_alive() for t in threads):
        raise AssertionError(f"simultaneous calls still running after {timeout}s")
    return results


def follow_events(url: str, timeout: float) -> StreamResult:
    """GET an SSE stream (e.g. a worker's loading progress) and read it to its end."""
    started = time.monotonic()
    with requests.get(url, stream=True, timeout=(DEFAULT_TIMEOUT, timeout)) as r:
        return read_stream(r, started)


class HangingRequest:
    """A request sent over a bare socket by a client that will hang up before reading the answer."""

    def __init__(self, base_url: str, path: str, body: dict[str, Any]) -> None:
        import socket
        from urllib.parse import urlparse

        where = urlparse(base_url)
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        self.sock = socket.create_connection((where.hostname, where.port), timeout=DEFAULT_TIMEOUT)
        self.sock.sendall(head + payload)

    def hang_up(self) -> None:
        self.sock.close()

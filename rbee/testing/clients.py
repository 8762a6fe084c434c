"""Test helpers over rbee.client: polling with a deadline, streams read in the background, calls at once."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlparse

import requests

from rbee import sse
from rbee.client import DEFAULT_TIMEOUT, Client, StreamResult, read_stream


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

    def __init__(self, client: Client, path: str, body: dict[str, Any],
                 headers: dict[str, str] | None = None) -> None:

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
            for kind, data in sse.iter_messages(self.response.iter_content(chunk_size=None)):
                if kind == "comment":
                    self.comments.append(data)
                elif data == sse.DONE:
                    self.terminated = True
                    break
                else:
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


def ask_queen_timed(context: Any, body: dict[str, Any]) -> None:
    """POST ``body`` to the scenario's queen for a whole answer: when it was sent in ``context.sent_at``,
    the answer in ``context.response`` (the steps that check how soon it came read both)."""
    context.sent_at = time.monotonic()
    context.response = context.cluster.queen.post("/v1/inference", json=body, timeout=60 * context.cluster.k)


def at_once(*calls: Any, timeout: float = 60.0) -> list[Any]:
    """Run each call on its own thread, all released by one barrier at the same instant.

    Results (or the exception each raised) come back in call order.
    """

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

        where = urlparse(base_url)
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        self.sock = socket.create_connection((where.hostname, where.port), timeout=DEFAULT_TIMEOUT)
        self.sock.sendall(head + payload)

    def hang_up(self) -> None:
        self.sock.close()

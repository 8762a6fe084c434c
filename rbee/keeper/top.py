"""``rbee-keeper top``: the queen's live view (GET /v2/events) in the terminal.

On a terminal: a rich Live screen of workers (slots as bars, tokens/s), the queue, requests in flight
and the last few done, redrawn as events come; ``q`` or Ctrl+C quits (exit 0). Not on a terminal
(piped, in a script): the first snapshot, printed once as plain tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import requests
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rbee import sse
from rbee.client import QueenClient
from rbee.keeper.failures import EXIT_OK, from_response, unreachable
from rbee.keeper.output import Output

START_A_QUEEN = "start one with `rbee-keeper up`, or pass --queen-url (env RBEE_QUEEN_URL)"
RECENT_SHOWN = 8
ENDED = ("done", "error", "cancelled")


class LiveState:
    """The view built from the stream's events: a snapshot, then changes."""

    def __init__(self) -> None:
        self.workers: list[dict[str, Any]] = []
        self.hives: list[dict[str, Any]] = []
        self.queue: dict[str, int] = {}
        self.in_flight: dict[str, dict[str, Any]] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_SHOWN)
        self.tokens_per_s = 0.0
        self.status = "connecting"

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "snapshot":
            self.in_flight = {r["request_id"]: r for r in event["in_flight"]}
            self.recent.clear()
            self.recent.extend(reversed(event["recent"][-RECENT_SHOWN:]))
            if event["series"]:
                self.tokens_per_s = event["series"][-1]["tokens_per_s"]
        if kind in ("snapshot", "fleet"):
            self.workers, self.hives, self.queue = event["workers"], event["hives"], event["queue"]
        elif kind == "request":
            r = event["request"]
            if r["state"] in ENDED:
                self.in_flight.pop(r["request_id"], None)
                self.recent.appendleft(r)
            else:
                self.in_flight[r["request_id"]] = r
        elif kind == "tick":
            self.tokens_per_s = event["point"]["tokens_per_s"]
        elif kind == "dropped":
            self.status = "fell behind; reconnecting"


def _bar(busy: int, total: int) -> str:
    return "■" * busy + "□" * max(0, total - busy) + f" {busy}/{total}"


def _n(value: Any) -> str:
    return "—" if value is None else str(value)


def tables(state: LiveState, now_ms: int | None = None) -> list[Table]:
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    workers = Table(title=f"workers · {state.tokens_per_s:g} tokens/s · queue {sum(state.queue.values())}",
                    title_justify="left", expand=False)
    for col in ("worker", "state", "slots", "model", "hive", "tok/s"):
        workers.add_column(col, no_wrap=True)
    for w in state.workers:
        workers.add_row(w["worker_id"], w["state"], _bar(w["slots_busy"], w["slots_total"]), w["model"],
                        w["hive"], _n(w["tokens_per_s"]))
    flight = Table(title="in flight", title_justify="left")
    for col in ("request", "state", "worker", "age ms", "queued ms", "ttft ms"):
        flight.add_column(col, no_wrap=True)
    for r in state.in_flight.values():
        flight.add_row(r["request_id"], r["state"], _n(r["worker_id"]), str(now_ms - r["opened_at"]),
                       _n(r["queued_ms"]), _n(r["ttft_ms"]))
    recent = Table(title="recent", title_justify="left")
    for col in ("request", "outcome", "worker", "ttft ms", "tokens", "tok/s"):
        recent.add_column(col, no_wrap=True)
    for r in state.recent:
        recent.add_row(r["request_id"], r["state"] if not r.get("error") else f"{r['state']} {r['error']}",
                       _n(r["worker_id"]), _n(r["ttft_ms"]), _n(r["tokens"]), _n(r["tokens_per_s"]))
    return [workers, flight, recent]


def _open(client: QueenClient) -> requests.Response:
    try:
        r = client.session.get(client._url("/v2/events"), stream=True, timeout=(5, 30))
    except requests.RequestException as exc:
        raise unreachable("queen", client.base_url, exc, START_A_QUEEN) from None
    if r.status_code != 200:
        raise from_response(r)
    return r


def _events(response: requests.Response) -> Iterator[dict[str, Any]]:
    with contextlib.closing(response):
        for kind, data in sse.iter_messages(response.iter_content(chunk_size=None)):
            if kind == "data":
                yield json.loads(data)


def run(client: QueenClient, out: Output) -> int:
    if not (out.out.is_terminal and sys.stdin.isatty()):
        state = LiveState()
        state.apply(next(_events(_open(client))))
        for table in tables(state):
            out.out.print(table)
        return EXIT_OK
    return _live(client, out)


def _follow(client: QueenClient, inbox: queue.Queue, stop: threading.Event) -> None:
    """On a thread: the stream's events into ``inbox``, reconnecting after a drop or a queen restart."""
    while not stop.is_set():
        try:
            for event in _events(_open(client)):
                inbox.put(event)
                if stop.is_set():
                    return
        except Exception as exc:  # noqa: BLE001 - shown on screen, then tried again
            inbox.put({"type": "status", "status": f"disconnected ({exc}); retrying"})
        stop.wait(1.0)


def _live(client: QueenClient, out: Output) -> int:
    import termios
    import tty

    _open(client).close()  # a wrong key or no queen: the usual one-line error, before the screen
    state, inbox, stop = LiveState(), queue.Queue(), threading.Event()
    threading.Thread(target=_follow, args=(client, inbox, stop), daemon=True).start()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        with Live(console=out.out, refresh_per_second=4, screen=False, auto_refresh=False) as live:
            while True:
                readable, _, _ = select.select([fd], [], [], 0.25)
                if readable and os.read(fd, 32).lower().startswith(b"q"):
                    return EXIT_OK
                while not inbox.empty():
                    event = inbox.get_nowait()
                    if event.get("type") == "status":
                        state.status = event["status"]
                    else:
                        state.status = "live"
                        state.apply(event)
                header = Text(f"rbee top · {client.base_url} · {state.status} · q quits", style="bold")
                live.update(Group(header, *tables(state)), refresh=True)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        stop.set()
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)

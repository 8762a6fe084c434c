"""The queen's live view: what the fleet and its requests are doing now, as a snapshot and its changes.

The dispatcher reports each request's life through :class:`LiveHub` (a dispatcher ``Hooks``): opened,
dispatched to a worker, first token, ended (done, error or cancelled). Workers, hives and the queue are
read from their registries when they change (the registry's ``subscribe``) and on a one-second tick,
which also measures tokens per second, per worker and overall, from the blocks the relay counted.

Subscribers (``GET /v2/events``, the dashboard, ``rbee-keeper top``) each get a bounded queue of framed
events. Publishing never awaits: an event is framed once and appended to every queue (a request's changes
are gathered for 0.1 s and sent in their latest state, so nothing is framed on the request's path); a subscriber
whose queue is full is dropped on the spot (counted), so a slow reader can never slow the token path.
Pure asyncio over the registries, no aiohttp.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rbee import sse
from rbee.queen.admission import AdmissionQueue
from rbee.queen.dispatch import Hooks, Upstream
from rbee.queen.hive_registry import HiveRegistry
from rbee.queen.registry import Registry

RECENT = 300  # requests kept in the recent list
SERIES_SECONDS = 15 * 60  # one chart point per tick, for the last 15 minutes
TICK_S = 1.0
# Changes within this window go out together: the fleet once, each changed request once in its latest state.
REQUEST_DELAY_S = 0.1


def _ms(t: float) -> int:
    return int(t * 1000)


@dataclass
class RequestView:
    """One request's timeline, as the dashboard shows it. Times are wall-clock milliseconds."""

    request_id: str
    model: str | None
    caller: str
    opened_at: int
    state: str = "queued"  # queued → dispatched → streaming → done | error | cancelled
    worker_id: str | None = None
    queued_ms: int | None = None
    ttft_ms: int | None = None
    tokens: int | None = None
    duration_ms: int | None = None
    tokens_per_s: float | None = None
    error: str | None = None
    upstream: Upstream | None = field(default=None, repr=False)
    counted: int = field(default=0, repr=False)  # relay blocks already counted in throughput

    def wire(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("upstream", "counted")}


class Subscriber:
    """One reader's bounded backlog of framed events. ``dropped``: it fell too far behind."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.backlog: deque[bytes] = deque()
        self.dropped = False
        self.closed = False
        self._ready = asyncio.Event()

    def offer(self, frame: bytes) -> bool:
        """Queue ``frame``; False (and dropped) when the backlog is full."""
        if len(self.backlog) >= self.limit:
            self.dropped = True
            self.backlog.clear()
            self._ready.set()
            return False
        self.backlog.append(frame)
        self._ready.set()
        return True

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next_frames(self) -> list[bytes]:
        """Whatever is queued (waiting for some); empty once dropped or closed."""
        while not self.backlog and not (self.dropped or self.closed):
            self._ready.clear()
            await self._ready.wait()
        if self.dropped or self.closed:
            return []
        out = list(self.backlog)
        self.backlog.clear()
        return out


class LiveHub(Hooks):
    def __init__(self, registry: Registry, hives: HiveRegistry | None, queue: AdmissionQueue, *,
                 limit: int = 256, on_drop: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry, self.hives, self.queue = registry, hives, queue
        self.limit = limit
        self.on_drop = on_drop
        self._clock = clock
        self.subscribers: set[Subscriber] = set()
        self.in_flight: dict[str, RequestView] = {}
        self.recent: deque[RequestView] = deque(maxlen=RECENT)
        self.series: deque[dict[str, Any]] = deque(maxlen=int(SERIES_SECONDS / TICK_S))
        self.dropped = 0
        self._tick_tokens: dict[str, int] = {}  # worker -> blocks relayed since the last tick
        self._tick_ttfts: list[int] = []
        self._tick_errors = 0
        self._worker_rate: dict[str, float] = {}
        self._last_fleet: dict[str, Any] | None = None
        self._fleet_changed_since = False  # the registry changed since the last flush
        self._changed: dict[str, RequestView] = {}  # requests changed since the last flush, by id
        self._flush_pending = False
        registry.subscribe(self._fleet_changed)

    # ------------------------------------------------------------ subscribers

    def subscribe(self) -> tuple[Subscriber, bytes]:
        """A new subscriber, and the snapshot frame to send it first."""
        sub = Subscriber(self.limit)
        self.subscribers.add(sub)
        return sub, sse.frame(self.snapshot())

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def close(self) -> None:
        """The queen is stopping: every subscriber's stream ends."""
        for sub in list(self.subscribers):
            sub.close()
        self.subscribers.clear()

    def publish(self, event: dict[str, Any]) -> None:
        """Frame once, queue for everyone; drop whoever is full. Never awaits."""
        if not self.subscribers:
            return
        frame = sse.frame(event)
        for sub in list(self.subscribers):
            if not sub.offer(frame):
                self.subscribers.discard(sub)
                self.dropped += 1
                if self.on_drop is not None:
                    self.on_drop()

    # ------------------------------------------------------------ views

    def fleet(self) -> dict[str, Any]:
        workers = [self._worker_view(w) for w in self.registry.list()]
        hives = []
        if self.hives is not None:
            hives = [h.info(self.hives.is_live(h)).model_dump(mode="json") for h in self.hives.list()]
        queue = {key: len(q) for key, q in self.queue._by_key.items()}
        return {"workers": workers, "hives": hives, "queue": queue, "queued": sum(queue.values())}

    def _worker_view(self, w: Any) -> dict[str, Any]:
        return {"worker_id": w.worker_id, "state": str(w.state.value), "model": w.reg.model_ref,
                "hive": w.reg.node_name, "url": w.reg.url, "backend": w.reg.backend,
                "slots_total": w.reg.slots_total, "slots_busy": w.reg.slots_total - w.slots_available,
                "tokens_per_s": round(self._worker_rate.get(w.worker_id, 0.0), 1)}

    def snapshot(self) -> dict[str, Any]:
        return {"type": "snapshot", "now": _ms(self._clock()), **self.fleet(),
                "in_flight": [r.wire() for r in self.in_flight.values()],
                "recent": [r.wire() for r in self.recent], "series": list(self.series),
                "dropped_subscribers": self.dropped}

    def _fleet_changed(self) -> None:
        """A registry change (a lease taken or back, a worker new): one fleet event soon, not one each."""
        if not self.subscribers:
            return
        self._fleet_changed_since = True
        self._flush_soon()

    def _send_fleet(self) -> None:
        fleet = self.fleet()
        if fleet != self._last_fleet:
            self._last_fleet = fleet
            self.publish({"type": "fleet", **fleet})

    # ------------------------------------------------------------ the dispatcher's hooks

    def opened(self, request_id: str, model: str | None, caller: str) -> None:
        view = RequestView(request_id, model, caller, _ms(self._clock()))
        self.in_flight[request_id] = view
        self._send(view)

    def dispatched(self, upstream: Upstream) -> None:
        view = self.in_flight.get(upstream.request_id)
        if view is None:
            return
        view.state, view.worker_id, view.queued_ms, view.upstream = (
            "dispatched", upstream.worker_id, upstream.queued_ms, upstream)
        view.model = view.model or upstream.model  # the worker's model, when the request named none
        self._send(view)

    def first_token(self, upstream: Upstream) -> None:
        view = self.in_flight.get(upstream.request_id)
        if view is None or upstream.first_token_at is None:
            return
        view.state, view.ttft_ms = "streaming", _ms(upstream.first_token_at - upstream.started)
        self._tick_ttfts.append(view.ttft_ms)
        self._send(view)

    def ended(self, request_id: str, upstream: Upstream | None, outcome: str, error: str | None = None) -> None:
        view = self.in_flight.pop(request_id, None)
        if view is None:
            return
        view.state, view.error = outcome, error
        view.duration_ms = _ms(self._clock()) - view.opened_at
        if upstream is not None:
            self._count(view)
            done = upstream.done
            view.tokens = done.total_tokens if done is not None else None
            if view.tokens and upstream.first_token_at is not None:
                gen_s = time.monotonic() - upstream.first_token_at
                view.tokens_per_s = round(view.tokens / gen_s, 1) if gen_s > 0 else None
        if outcome == "error":
            self._tick_errors += 1
        view.upstream = None
        self.recent.append(view)
        self._send(view)

    def _send(self, view: RequestView) -> None:
        """Note a request's change; it goes out with the others of the next ``REQUEST_DELAY_S``, in
        its state then (a request that opens and ends within the window is sent once, ended). Nothing
        is framed or written on the request's own path."""
        if not self.subscribers:  # no one watching: nothing kept
            return
        self._changed[view.request_id] = view
        self._flush_soon()

    def _flush_soon(self) -> None:
        """One flush ``REQUEST_DELAY_S`` from the first change since the last (at once without a loop)."""
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a direct call): at once
            self.flush()
            return
        self._flush_pending = True
        loop.call_later(REQUEST_DELAY_S, self.flush)

    def flush(self) -> None:
        """Publish what changed since the last flush: the fleet if it did, each changed request in its
        latest state."""
        self._flush_pending = False
        if self._fleet_changed_since:
            self._fleet_changed_since = False
            self._send_fleet()
        changed, self._changed = self._changed, {}
        for view in changed.values():
            self.publish({"type": "request", "request": view.wire()})

    # ------------------------------------------------------------ the tick

    def _count(self, view: RequestView) -> None:
        """Move the blocks relayed for ``view`` since last counted into this tick's throughput."""
        if view.upstream is None or view.worker_id is None:
            return
        n = view.upstream.blocks - view.counted
        if n > 0:
            view.counted += n
            self._tick_tokens[view.worker_id] = self._tick_tokens.get(view.worker_id, 0) + n

    def tick(self, seconds: float = TICK_S) -> dict[str, Any]:
        """One chart point (tokens/s, mean TTFT, errors over the last ``seconds``), and the fleet if it changed."""
        for view in self.in_flight.values():
            self._count(view)
        self._worker_rate = {w: n / seconds for w, n in self._tick_tokens.items()}
        ttfts = self._tick_ttfts
        point = {"t": _ms(self._clock()), "tokens_per_s": round(sum(self._tick_tokens.values()) / seconds, 1),
                 "ttft_ms": round(sum(ttfts) / len(ttfts)) if ttfts else None, "errors": self._tick_errors,
                 "in_flight": len(self.in_flight)}
        self._tick_tokens, self._tick_ttfts, self._tick_errors = {}, [], 0
        self.series.append(point)
        self.publish({"type": "tick", "point": point})
        self._send_fleet()
        return point

    async def run(self) -> None:
        """Tick each second until cancelled (silent offline transitions, hive liveness, throughput)."""
        while True:
            await asyncio.sleep(TICK_S)
            self.tick()


class FanOut(Hooks):
    """Several ``Hooks`` as one (metrics and the live view both listen to the dispatcher)."""

    def __init__(self, hooks: Iterable[Hooks]) -> None:
        self.hooks = list(hooks)


def _fan(name: str) -> Callable[..., None]:
    def call(self: FanOut, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, name)(*args)
    call.__name__ = name
    return call


for _name in [n for n, v in vars(Hooks).items() if callable(v) and not n.startswith("_")]:
    setattr(FanOut, _name, _fan(_name))

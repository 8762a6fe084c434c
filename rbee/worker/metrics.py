"""The worker's Prometheus metrics (``GET /metrics``): tokens generated, generations by outcome, slots.

One registry per app. Token counts come from each generation's done event, which the decode thread
emits; prometheus-client's counters are thread-safe, so they are counted right there, and the same
event becomes the one log line per generation (with the request id the queen passed down).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)
Emit = Callable[[dict[str, Any]], None]
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class WorkerMetrics:
    def __init__(self, slots: Callable[[], tuple[int, int]]) -> None:
        """``slots`` answers (total, busy) at scrape time."""
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.tokens_generated = Counter("rbee_worker_tokens_generated", "Tokens generated.", registry=r)
        self.prompt_tokens = Counter("rbee_worker_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generations = Counter("rbee_worker_generations", "Generations finished, by finish reason.",
                                   ["finish_reason"], registry=r)
        self.generation_seconds = Histogram("rbee_worker_generation_duration_seconds",
                                            "Time from admission to the last token.", buckets=_SECONDS, registry=r)
        self.tokens_per_second = Gauge("rbee_worker_tokens_per_second",
                                       "Decode speed of the last finished generation.", registry=r)
        Gauge("rbee_worker_slots_total", "Slots (concurrent sequences).", registry=r).set_function(
            lambda: slots()[0])
        Gauge("rbee_worker_slots_busy", "Slots running a generation.", registry=r).set_function(
            lambda: slots()[1])

    def observe(self, emit: Emit, request_id: str) -> Emit:
        """Wrap a job's ``emit`` so its done event is counted and logged (called on the decode thread)."""

        def counted(event: dict[str, Any]) -> None:
            if event.get("done"):
                self._finished(event)
                # The decode thread doesn't see the handler's context, so the request id goes in explicitly.
                log.info("generation finished", extra={"fields": {
                    "request_id": request_id, "finish_reason": event.get("finish_reason"),
                    "tokens": event.get("total_tokens"), "prompt_tokens": event.get("prompt_tokens"),
                    "duration_ms": event.get("duration_ms")}})
            emit(event)

        return counted

    def _finished(self, done: dict[str, Any]) -> None:
        tokens = int(done.get("total_tokens") or 0)
        seconds = max(0.0, float(done.get("duration_ms") or 0) / 1000)
        self.tokens_generated.inc(tokens)
        self.prompt_tokens.inc(int(done.get("prompt_tokens") or 0))
        self.generations.labels(finish_reason=str(done.get("finish_reason", "unknown"))).inc()
        self.generation_seconds.observe(seconds)
        if tokens and seconds:
            self.tokens_per_second.set(tokens / seconds)


METRICS = web.AppKey("metrics", WorkerMetrics)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[METRICS].registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application, slots: Callable[[], tuple[int, int]]) -> WorkerMetrics:
    """Create the app's metrics and serve ``GET /metrics``."""
    metrics = app[METRICS] = WorkerMetrics(slots)
    app.router.add_get("/metrics", metrics_handler)
    return metrics

"""The worker's Prometheus metrics (``GET /metrics``): tokens generated, generations by outcome, slots.

Besides rbee's own, the gauges the Kubernetes Gateway API Inference Extension's model-server protocol
asks of a model server, under the names its endpoint picker scrapes by default (vLLM's): queued
requests, running requests and KV-cache utilisation, so a worker can stand behind that picker.

One registry per app. Token counts come from each generation's done event, which the decode thread
emits; prometheus-client's counters are thread-safe, so they are counted right there, and the same
event becomes the one log line per generation (with the request id the queen passed down).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from rbee.events import Done, EngineEvent
from rbee.worker.engine_api import Emit

log = logging.getLogger(__name__)
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class WorkerMetrics:
    def __init__(self, slots: Callable[[], tuple[int, int]], kv_usage: Callable[[], float] | None = None) -> None:
        """``slots`` answers (total, busy) at scrape time; ``kv_usage`` the share of KV cells in use (0-1)."""
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.tokens_generated = Counter("rbee_worker_tokens_generated", "Tokens generated.", registry=r)
        self.prompt_tokens = Counter("rbee_worker_prompt_tokens", "Prompt tokens of finished generations, "
                                     "cached or decoded.", registry=r)
        self.prompt_cache_hits = Counter("rbee_worker_prompt_cache_hit_tokens", "Prompt tokens whose KV a slot "
                                         "already held (the prompt cache), so they were not decoded.", registry=r)
        self.generations = Counter("rbee_worker_generations", "Generations finished, by finish reason.",
                                   ["finish_reason"], registry=r)
        self.embeddings = Counter("rbee_worker_embeddings", "Embedding requests answered (an --embeddings "
                                  "worker).", registry=r)
        self.generation_seconds = Histogram("rbee_worker_generation_duration_seconds",
                                            "Time from admission to the last token.", buckets=_SECONDS, registry=r)
        self.tokens_per_second = Gauge("rbee_worker_tokens_per_second",
                                       "Decode speed of the last finished generation.", registry=r)
        Gauge("rbee_worker_slots_total", "Slots (concurrent sequences).", registry=r).set_function(
            lambda: slots()[0])
        Gauge("rbee_worker_slots_busy", "Slots running a generation.", registry=r).set_function(
            lambda: slots()[1])
        # The model-server protocol's TotalQueuedRequests: a worker queues nothing (a request finding
        # every slot busy is refused with ALL_SLOTS_BUSY; the queen does the queueing), so this reads 0.
        Gauge("vllm:num_requests_waiting", "Requests waiting for a slot (always 0: the worker does not queue).",
              registry=r).set(0)
        Gauge("vllm:num_requests_running", "Requests being generated.", registry=r).set_function(
            lambda: slots()[1])
        if kv_usage is not None:
            Gauge("vllm:kv_cache_usage_perc", "Share of KV cells held by running generations (0-1); cells "
                  "kept only for the prompt cache are free for the taking.", registry=r).set_function(kv_usage)

    def observe(self, emit: Emit, request_id: str) -> Emit:
        """Wrap a job's ``emit`` so its done event is counted and logged (called on the decode thread)."""

        def counted(event: EngineEvent) -> None:
            if isinstance(event, Done):
                self._finished(event)
                # The decode thread doesn't see the handler's context, so the request id goes in explicitly.
                log.info("generation finished", extra={"fields": {
                    "request_id": request_id, "finish_reason": event.finish_reason,
                    "tokens": event.total_tokens, "prompt_tokens": event.prompt_tokens,
                    "cached_tokens": event.cached_tokens, "duration_ms": event.duration_ms}})
            emit(event)

        return counted

    def _finished(self, done: Done) -> None:
        tokens = done.total_tokens
        seconds = max(0.0, done.duration_ms / 1000)
        self.tokens_generated.inc(tokens)
        self.prompt_tokens.inc(done.prompt_tokens or 0)
        self.prompt_cache_hits.inc(done.cached_tokens or 0)
        self.generations.labels(finish_reason=done.finish_reason).inc()
        self.generation_seconds.observe(seconds)
        if tokens and seconds:
            self.tokens_per_second.set(tokens / seconds)


METRICS = web.AppKey("metrics", WorkerMetrics)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[METRICS].registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application, slots: Callable[[], tuple[int, int]],
          kv_usage: Callable[[], float] | None = None) -> WorkerMetrics:
    """Create the app's metrics and serve ``GET /metrics``."""
    metrics = app[METRICS] = WorkerMetrics(slots, kv_usage)
    app.router.add_get("/metrics", metrics_handler)
    return metrics

"""The hive's Prometheus metrics (``GET /metrics``): downloads, worker spawns, crashes, restarts, failed
health checks, and memory per device.

One registry per app, as the queen's and the worker's. The figures are counted where they happen, as
plain counts on the domain objects (``Provisioner.counts``, ``Supervisor.counts``, which know nothing of
Prometheus), and read at scrape time by one collector; memory is read then too: host RAM from
/proc/meminfo, a GPU's from the devices the worker program reported at start. With a cluster key,
``/metrics`` needs it (as the queen's does): it tells what runs here and how much memory is free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rbee.procfs import meminfo_bytes

# (metric name without _total, help, where it is counted, its key there)
_COUNTERS = (
    ("rbee_hive_download_bytes", "Bytes of model files downloaded.", "downloads", "bytes"),
    ("rbee_hive_downloads_completed", "Model downloads (and file:// registrations) that completed.",
     "downloads", "completed"),
    ("rbee_hive_download_failures", "Model downloads that failed (after their retries).", "downloads", "failures"),
    ("rbee_hive_download_resumes", "Download requests that went on from a partial file (HTTP 206).",
     "downloads", "resumes"),
    ("rbee_hive_worker_spawns", "Workers started on request (restarts not included).", "workers", "spawns"),
    ("rbee_hive_worker_crashes", "Workers that exited with an error the hive had not asked for.",
     "workers", "crashes"),
    ("rbee_hive_worker_restarts", "Workers restarted after a crash (--restart on-failure).", "workers", "restarts"),
    ("rbee_hive_health_check_failures", "Health checks of a ready worker that failed.",
     "workers", "health_check_failures"),
    ("rbee_hive_worker_evictions", "Idle workers stopped to make room for another model.", "workers", "evictions"),
)


class HiveCollector:
    """Reads the counts and memory figures at each scrape."""

    def __init__(self, counts: Mapping[str, Mapping[str, int]], devices: Callable[[], list[dict[str, Any]]]) -> None:
        self.counts = counts  # "downloads" / "workers" -> the domain object's Counter
        self.devices = devices

    def collect(self) -> Iterator[Metric]:
        for name, help_text, where, key in _COUNTERS:
            yield CounterMetricFamily(name, help_text, value=self.counts[where].get(key, 0))
        total = GaugeMetricFamily("rbee_hive_memory_total_bytes", "Memory per device: host RAM (device "
                                  "\"host\") and each GPU's.", labels=["device"])
        free = GaugeMetricFamily("rbee_hive_memory_free_bytes", "Memory free per device (host: MemAvailable).",
                                 labels=["device"])
        host_total, host_free = meminfo_bytes("MemTotal"), meminfo_bytes("MemAvailable")
        if host_total is not None and host_free is not None:
            total.add_metric(["host"], host_total)
            free.add_metric(["host"], host_free)
        for device in self.devices():
            if device.get("backend") != "cpu" and device.get("memory_total"):
                label = f"{device['backend']}:{device.get('index', 0)}"
                total.add_metric([label], device["memory_total"])
                free.add_metric([label], device.get("memory_free") or 0)
        yield total
        yield free


REGISTRY = web.AppKey("hive_metrics", CollectorRegistry)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[REGISTRY]), headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application, counts: Mapping[str, Mapping[str, int]],
          devices: Callable[[], asyncio.Task | None]) -> None:
    """Serve ``GET /metrics`` from the app's own registry. ``devices`` gives the device-detection task (its
    result once done: GPUs appear when the worker program has reported them)."""

    def known_devices() -> list[dict[str, Any]]:
        task = devices()
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return []
        return task.result()

    registry = app[REGISTRY] = CollectorRegistry(auto_describe=True)
    registry.register(HiveCollector(counts, known_devices))
    app.router.add_get("/metrics", metrics_handler)

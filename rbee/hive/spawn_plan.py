"""What a spawn will cost and where it goes, decided before any process starts.

The footprint estimate of the model at the spawn's settings (:mod:`rbee.hive.footprint`), the device
(with none asked for: the one of its backend with the most free memory), the memory ledger of this
hive (:mod:`rbee.hive.memory`), and, when it does not fit, which idle workers of other models to evict
(:mod:`rbee.hive.eviction`). The same plan answers ``POST /v1/workers/plan`` (the queen's placement
asks every hive) and guards ``POST /v1/workers/spawn``. No aiohttp here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rbee.errors import RbeeError
from rbee.hive import eviction, memory, preflight
from rbee.hive.footprint import Footprint, LoadSettings, estimate_file
from rbee.hive.gguf_info import GGUFError
from rbee.hive.supervisor import ManagedWorker
from rbee.procfs import meminfo_bytes
from rbee.protocol import DeviceMemory, SpawnPlan

log = logging.getLogger(__name__)
DEFAULT_CTX = 2048  # the worker's own default --ctx-size
ALL_LAYERS = 999  # a GPU backend offloads every layer (the worker's default)


@dataclass(frozen=True)
class Ask:
    """A spawn as asked: model, backend, device (None: pick one), slots, context."""

    model_ref: str
    backend: str = "cpu"
    device: int | None = None
    slots: int = 1
    ctx_size: int | None = None
    embeddings: bool = False  # the worker is started with --embeddings


@dataclass(frozen=True)
class Plan:
    ask: Ask
    local: bool
    device: int
    host_bytes: int | None
    device_bytes: int | None
    rows: list[DeviceMemory]
    missing: dict[str, int] = field(default_factory=dict)
    choice: eviction.Choice = field(default_factory=eviction.Choice)

    @property
    def fits(self) -> bool:
        return not self.missing or bool(self.choice.evict)

    def refusal(self) -> RbeeError:
        return memory.refusal(self.ask.model_ref, self.rows, self.ask.backend, self.device, self.host_bytes or 0,
                              self.device_bytes or 0, self.missing, later=self.choice.later,
                              blocking=list(self.choice.blocking))

    def wire(self) -> SpawnPlan:
        place = memory.row(self.rows, *(memory.HOST if self.ask.backend == "cpu" else (self.ask.backend, self.device)))
        return SpawnPlan(
            model_ref=self.ask.model_ref, local=self.local, backend=self.ask.backend, device=self.device,
            needed_host_bytes=self.host_bytes, needed_device_bytes=self.device_bytes, fits=self.fits,
            later=self.choice.later, evict=list(self.choice.evict), blocking=list(self.choice.blocking),
            free_bytes=place.headroom_bytes if place is not None else None, memory=self.rows,
            reason=None if self.fits else self.refusal().message,
        )


def footprint(ask: Ask, model_path: Path | None, size_bytes: int) -> Footprint | None:
    """The estimate from the GGUF header; a header without the model's shape (a test fixture, a format
    llama.cpp may still load) falls back to the file-size rule of thumb; no file yet: None."""
    if model_path is None:
        return None
    load = LoadSettings(ctx_size=ask.ctx_size or DEFAULT_CTX, slots=ask.slots,
                        n_gpu_layers=0 if ask.backend == "cpu" else ALL_LAYERS)
    try:
        return estimate_file(model_path, load)
    except (GGUFError, OSError, ValueError) as exc:
        log.info("no footprint estimate for %s (%s); using the file-size rule", model_path, exc)
        rough, on_gpu = preflight.ram_needed(size_bytes), ask.backend != "cpu"
        return Footprint(weights_host=0 if on_gpu else rough, weights_device=rough if on_gpu else 0, kv_host=0,
                         kv_device=0, compute_host=0, compute_device=0, tokenizer_host=0, runtime_host=0)


def candidates(workers: list[ManagedWorker]) -> list[eviction.Candidate]:
    return [eviction.Candidate(worker_id=w.worker_id, model_ref=w.model_ref, busy=w.busy or w.state != "ready",
                               started_at=w.started_at, last_active=w.last_active, host_bytes=w.spec.ram_bytes,
                               device_bytes=w.spec.vram_bytes, device=(w.spec.backend, w.spec.device),
                               leaving=w.state == "stopping")
            for w in workers if w.state != "exited"]


def held(workers: list[ManagedWorker]) -> list[memory.Held]:
    return [memory.Held(w.spec.backend, w.spec.device, w.spec.ram_bytes, w.spec.vram_bytes)
            for w in workers if w.state != "exited"]


def ledger(devices: list[dict[str, Any]], workers: list[ManagedWorker], budgets: memory.Budgets,
           min_resident: float, now: float | None = None) -> list[DeviceMemory]:
    """This hive's memory now (the heartbeat's figures)."""
    now = time.monotonic() if now is None else now
    return memory.ledger(devices, held(workers), ram_total=meminfo_bytes("MemTotal"),
                         ram_available=preflight.available_ram(), budgets=budgets,
                         reclaimable=eviction.reclaimable(candidates(workers), now, min_resident))


def plan(ask: Ask, need: Footprint | None, *, local: bool, devices: list[dict[str, Any]],
         workers: list[ManagedWorker], budgets: memory.Budgets, min_resident: float,
         now: float | None = None) -> Plan:
    now = time.monotonic() if now is None else now
    rows = ledger(devices, workers, budgets, min_resident, now)
    host_bytes = need.host_bytes if need is not None else None
    device_bytes = need.device_bytes if need is not None else None
    device = ask.device if ask.device is not None else memory.pick_device(rows, ask.backend, device_bytes or 0)
    device = 0 if device is None else device
    if need is None:
        return Plan(ask, local, device, None, None, rows)
    missing = memory.shortfall(rows, ask.backend, device, need.host_bytes, need.device_bytes)
    if not missing:
        return Plan(ask, local, device, host_bytes, device_bytes, rows)
    choice = eviction.choose(candidates(workers), ask.model_ref, missing, (ask.backend, device), now, min_resident)
    return Plan(ask, local, device, host_bytes, device_bytes, rows, missing, choice)

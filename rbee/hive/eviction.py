"""Which idle workers a hive stops to make room for a model it lacks room for: the eviction policy.

Least recently used first; never a busy worker, never one of the model being asked for, never one
younger than ``--min-resident`` seconds (so two models sharing one machine take turns in runs, not
a swap per request). A worker being stopped already only makes a spawn wait for it (``later``), as
a busy one does. Pure: candidates in, a choice out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    worker_id: str
    model_ref: str
    busy: bool
    started_at: float  # monotonic seconds
    last_active: float  # monotonic seconds: when it last served anything
    host_bytes: int
    device_bytes: int
    device: tuple[str, int]  # (backend, index) its device part is on
    leaving: bool = False  # being stopped already: its memory comes back soon, whatever its model


@dataclass(frozen=True)
class Choice:
    """``evict``: stop these, in order, and the spawn fits. Else ``later``: it would fit once ``blocking``
    (busy or too young) may go; neither: no eviction can ever make it fit."""

    evict: tuple[str, ...] = ()
    later: bool = False
    blocking: tuple[str, ...] = ()


def evictable(c: Candidate, model_ref: str, now: float, min_resident: float) -> bool:
    return not c.busy and not c.leaving and c.model_ref != model_ref and now - c.started_at >= min_resident


def reclaimable(candidates: Iterable[Candidate], now: float, min_resident: float) -> dict[tuple[str, int], int]:
    """Bytes evicting every idle worker past ``min_resident`` would give back, per device (the host is
    ``("cpu", 0)``), for the heartbeat."""
    out: dict[tuple[str, int], int] = {}
    for c in candidates:
        if not c.busy and not c.leaving and now - c.started_at >= min_resident:
            out[("cpu", 0)] = out.get(("cpu", 0), 0) + c.host_bytes
            if c.device != ("cpu", 0):
                out[c.device] = out.get(c.device, 0) + c.device_bytes
    return out


def choose(candidates: Iterable[Candidate], model_ref: str, missing: dict[str, int], device: tuple[str, int],
           now: float, min_resident: float) -> Choice:
    """The fewest least-recently-used evictable workers that free ``missing`` (bytes per ``"host"`` and
    ``"device"``, as :func:`rbee.hive.memory.shortfall` says); see :class:`Choice`."""
    others = [c for c in candidates if c.model_ref != model_ref or c.leaving]
    ready = sorted((c for c in others if evictable(c, model_ref, now, min_resident)), key=lambda c: c.last_active)
    picked = _cover(ready, missing, device)
    if picked is not None:
        return Choice(evict=tuple(c.worker_id for c in picked))
    waiting = sorted((c for c in others if not evictable(c, model_ref, now, min_resident)),
                     key=lambda c: c.last_active)
    blockers = _cover(ready + waiting, missing, device)
    if blockers is None:
        return Choice()  # even with every other model's worker gone it would not fit
    return Choice(later=True, blocking=tuple(c.worker_id for c in blockers if c in waiting))


def _cover(ordered: list[Candidate], missing: dict[str, int], device: tuple[str, int]) -> list[Candidate] | None:
    need_host, need_device = missing.get("host", 0), missing.get("device", 0)
    picked: list[Candidate] = []
    for c in ordered:
        if need_host <= 0 and need_device <= 0:
            break
        gives_device = c.device_bytes if c.device == device else 0
        if (need_host > 0 and c.host_bytes > 0) or (need_device > 0 and gives_device > 0):
            picked.append(c)
            need_host -= c.host_bytes
            need_device -= gives_device
    return picked if need_host <= 0 and need_device <= 0 else None

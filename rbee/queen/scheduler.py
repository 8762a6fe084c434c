"""Routing policy: the worker most likely to hold the request's prompt prefix in its cache, unless it
carries clearly more load than the least loaded one; else the least loaded (most free slots, ties
rotate)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol, TypeVar


class HasSlots(Protocol):
    @property
    def slots_available(self) -> int: ...


W = TypeVar("W", bound=HasSlots)


class Route(StrEnum):
    CACHE = "cache"  # sent where its prefix most likely is
    LOAD = "load"  # sent to the least loaded worker


def pick_least_loaded(candidates: Sequence[W], turn: int) -> W:
    """Most free slots wins; among equals, ``turn`` rotates so load spreads evenly."""
    if not candidates:
        raise ValueError("no candidates")
    best = max(c.slots_available for c in candidates)
    tied = [c for c in candidates if c.slots_available == best]
    return tied[turn % len(tied)]


def pick(candidates: Sequence[W], turn: int, affinity: Callable[[W], int] | None = None,
         max_load_gap: int = 2) -> tuple[W, Route]:
    """The worker with the deepest prefix match whose free slots are within ``max_load_gap`` of the
    least loaded's; with no match (or only overloaded ones) the least loaded. A miss thus goes where
    there is most room, never to the busiest worker, and never to the same one by habit."""
    least = pick_least_loaded(candidates, turn)
    if affinity is None:
        return least, Route.LOAD
    floor = least.slots_available - max_load_gap
    scored = [(affinity(c), c) for c in candidates if c.slots_available >= floor]
    best = max((score for score, _ in scored), default=0)
    if best <= 0:
        return least, Route.LOAD
    matched = [c for score, c in scored if score == best]
    return pick_least_loaded(matched, turn), Route.CACHE

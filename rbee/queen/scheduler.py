"""Routing policy: among candidate workers, the one with the most free slots; ties rotate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class HasSlots(Protocol):
    @property
    def slots_available(self) -> int: ...


W = TypeVar("W", bound=HasSlots)


def pick_least_loaded(candidates: Sequence[W], turn: int) -> W:
    """Most free slots wins; among equals, ``turn`` rotates so load spreads evenly."""
    if not candidates:
        raise ValueError("no candidates")
    best = max(c.slots_available for c in candidates)
    tied = [c for c in candidates if c.slots_available == best]
    return tied[turn % len(tied)]

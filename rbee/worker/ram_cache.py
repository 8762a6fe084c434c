"""Slot states kept in host RAM (``--cache-ram-mb``): the KV a slot held when a different prompt
took the slot over, so that a conversation coming back later need not decode its history again.

Plain bookkeeping, free of llama.cpp: the engine saves a slot's state (``llama_state_seq_get_data``)
with the tokens it holds, asks for the entry sharing the longest prefix with a new prompt, and
restores it (``llama_state_seq_set_data``) when that beats what the slot itself holds. Entries are
dropped least recently used first to stay within the byte budget; an entry whose tokens begin
another's is dropped as the longer one comes (it holds nothing more). A restored entry leaves the
cache: the slot holds it again, and it is saved anew if the slot is taken over once more.

Used on the decode thread only; :attr:`RamCache.published` is what the event loop may read (the
entries' tokens, replaced whole on every change).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rbee.worker.prompt_cache import common_prefix, reusable, reusable_part


@dataclass(slots=True)
class Entry:
    tokens: tuple[int, ...]
    state: Any  # the saved bytes (a ctypes array as llama.cpp filled it, or bytes): anything with a len()
    used: int  # a counter: larger = used more recently
    tags: tuple[bytes, ...] = ()  # the queen's hashes of the prompt it holds (prompt_cache.Holdings)
    exact: int = 0  # leading tokens whose cells were computed on the reference kernels (prompt_cache.Exactness)

    def reusable_by(self, reproducible: bool) -> tuple[int, ...]:
        return reusable_part(self.tokens, self.exact, reproducible)


class RamCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._entries: list[Entry] = []
        self._clock = 0
        self.published: tuple[tuple[int, ...], ...] = ()
        self.published_exact: tuple[tuple[int, ...], ...] = ()  # what reproducible requests may reuse of each

    @property
    def size(self) -> int:
        return sum(len(e.state) for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def fits(self, nbytes: int) -> bool:
        return 0 < nbytes <= self.budget

    def put(self, tokens: Sequence[int], state: Any, tags: tuple[bytes, ...] = (), exact: int | None = None) -> bool:
        """Keep ``state`` (the KV of ``tokens``); False when it can never fit or adds nothing."""
        key = tuple(tokens)
        if not self.fits(len(state)):
            return False
        if any(len(e.tokens) >= len(key) and common_prefix(e.tokens, key) == len(key) for e in self._entries):
            return False  # an entry holds all of this already
        self._clock += 1
        self._entries = [e for e in self._entries if common_prefix(e.tokens, key) < len(e.tokens)]
        self._entries.append(Entry(key, state, self._clock, tags, len(key) if exact is None else min(exact, len(key))))
        while self.size > self.budget:
            self._entries.remove(min(self._entries, key=lambda e: e.used))
        self._publish()
        return True

    def best(self, prompt: Sequence[int], reproducible: bool = False) -> tuple[int, int]:
        """(index, tokens of ``prompt`` it would let a slot reuse) of the best entry; (-1, 0) if none."""
        key = tuple(prompt)
        best, shared = -1, 0
        for i, entry in enumerate(self._entries):
            n = reusable(entry.reusable_by(reproducible), key)
            if n > shared:
                best, shared = i, n
        return best, shared

    def take(self, index: int) -> Entry:
        """Remove and return an entry (it is about to be restored into a slot)."""
        entry = self._entries.pop(index)
        self._publish()
        return entry

    def tags(self) -> list[tuple[bytes, ...]]:
        """The tags of every entry (for the worker's report of what it holds)."""
        return [e.tags for e in self._entries]

    def _publish(self) -> None:
        self.published = tuple(e.tokens for e in self._entries)
        self.published_exact = tuple(e.reusable_by(True) for e in self._entries)


def best_published(published: tuple[tuple[int, ...], ...], prompt: Sequence[int]) -> int:
    """The most of ``prompt`` any published entry would let a slot reuse (for the slot choice)."""
    key = tuple(prompt)
    return max((reusable(tokens, key) for tokens in published), default=0)

"""Which worker most likely holds a request's prompt prefix in its KV cache, learnt from routing history.

The queen does not tokenize, so a prompt is cut where it can cut without a tokenizer: chat requests at
message boundaries (turn N+1 of a conversation resends turns 1..N unchanged), raw text every
``BLOCK_CHARS`` characters. Each cut point gets a chained hash (the hash of everything before it), so
two prompts share their first k hashes exactly when they share that much text. The index remembers,
per worker and bounded, the hashes of what was routed to it; a worker's depth for a new request is how
many of its leading hashes that worker has seen. Pure bookkeeping: no I/O.

:class:`PrefillRate` says what losing a cached prefix costs: how long the model's workers take to
prefill a prompt character they hold no KV for, learnt from the TTFTs of requests that were mostly
prefill. The admission queue waits for a busy worker's cache no longer than that (delay scheduling
that knows what it saves).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from rbee.protocol import InferenceRequest

BLOCK_CHARS = 256
PER_WORKER = 8192  # hashes remembered per worker (LRU): many conversations' worth


@dataclass(frozen=True)
class Prefix:
    """A request's prompt as the queen cuts it: a chained hash per cut, and where each cut ends."""

    hashes: list[bytes]
    ends: list[int]  # characters of the prompt up to the end of each block

    def chars(self, depth: int | None = None) -> int:
        """Characters in the first ``depth`` blocks (all of them when None)."""
        depth = len(self.ends) if depth is None else min(depth, len(self.ends))
        return self.ends[depth - 1] if depth > 0 else 0


def _chain(pieces: Iterable[str]) -> Prefix:
    hashes, ends, h, end = [], [], b"", 0
    for piece in pieces:
        h = hashlib.blake2b(h + piece.encode(), digest_size=8).digest()
        end += len(piece)
        hashes.append(h)
        ends.append(end)
    return Prefix(hashes, ends)


def prefix_of(job: InferenceRequest) -> Prefix:
    if job.messages is not None:
        return _chain(json.dumps([m.role, m.content], ensure_ascii=False) for m in job.messages)
    text = job.prompt or ""
    return _chain(text[i:i + BLOCK_CHARS] for i in range(0, len(text), BLOCK_CHARS))


def prefix_hashes(job: InferenceRequest) -> list[bytes]:
    return prefix_of(job).hashes


class PrefixIndex:
    def __init__(self, per_worker: int = PER_WORKER) -> None:
        self.per_worker = per_worker
        self._seen: dict[str, OrderedDict[bytes, None]] = {}

    def depth(self, worker_id: str, hashes: list[bytes]) -> int:
        """How many leading prefix blocks of the request ``worker_id`` has been sent before."""
        seen = self._seen.get(worker_id)
        if not seen or not hashes:
            return 0
        lo, hi = 0, len(hashes)  # chained hashes: holding block k implies holding every block before it
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in seen:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def record(self, worker_id: str, hashes: list[bytes]) -> None:
        seen = self._seen.setdefault(worker_id, OrderedDict())
        for h in hashes:
            seen[h] = None
            seen.move_to_end(h)
        while len(seen) > self.per_worker:
            seen.popitem(last=False)

    def forget(self, worker_id: str) -> None:
        self._seen.pop(worker_id, None)


class PrefillRate:
    """Milliseconds a model's workers take to prefill one prompt character they hold no KV for: an
    average over recent requests whose TTFT was mostly prefill, per model name as requests give it."""

    MIN_CHARS = 512  # fewer new characters than this: the TTFT is mostly not prefill
    # Until a model's workers show their speed, assume a fast one (a GPU's, ~20,000 characters a
    # second): a request then waits little for a busy cache, as it would with nothing learnt.
    PRIOR_MS_PER_CHAR = 0.05
    WEIGHT = 0.3  # of the newest request in the average

    def __init__(self) -> None:
        self._ms_per_char: dict[str | None, float] = {}

    def observe(self, model: str | None, prompt_chars: int, prompt_tokens: int | None,
                cached_tokens: int | None, ttft_ms: int | None) -> None:
        """One answered request: ``prompt_chars`` of prompt, of whose ``prompt_tokens`` the worker reused
        ``cached_tokens``, and its first token ``ttft_ms`` after it was sent."""
        if not prompt_tokens or ttft_ms is None or prompt_chars <= 0:
            return
        fresh = prompt_chars * (prompt_tokens - (cached_tokens or 0)) / prompt_tokens
        if fresh < self.MIN_CHARS:
            return
        sample = ttft_ms / fresh
        old = self._ms_per_char.get(model)
        self._ms_per_char[model] = sample if old is None else old + self.WEIGHT * (sample - old)

    def seconds(self, model: str | None, chars: int) -> float:
        """How long prefilling ``chars`` characters of prompt would likely take on a worker for ``model``."""
        return chars * self._ms_per_char.get(model, self.PRIOR_MS_PER_CHAR) / 1000

"""Which worker most likely holds a request's prompt prefix in its KV cache.

A prompt is cut and hashed as :mod:`rbee.prefix` says; a worker's depth for a new request is how many
of its leading hashes that worker holds. Two sources say what it holds:

- **its own report**: a worker asked for one (``rbee.prefix.REPORT_HEADER``) says in each done event
  what its slots and its host-RAM cache hold now, versioned. The newest report replaces the last, so a
  prefix the worker evicted stops attracting its conversation there;
- **routing history**, for workers that never reported (an older worker, or none answered yet): the
  hashes of what was routed to it, per worker, bounded.

A request routed to a worker counts as held there from the moment it is routed until it ends (its own
done event's report then says whether it stayed): two turns of one conversation sent close together
go to the same worker. Pure bookkeeping: no I/O.

:class:`PrefillRate` says what losing a cached prefix costs: how long the model's workers take to
prefill a prompt character they hold no KV for, learnt from the TTFTs of requests that were mostly
prefill. The admission queue waits for a busy worker's cache no longer than that (delay scheduling
that knows what it saves).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

PER_WORKER = 8192  # hashes of routing history remembered per worker (LRU): many conversations' worth
MAX_REPORTED = 65536  # hashes kept of one worker's report (a report beyond it is cut, not trusted whole)


@dataclass
class _Worker:
    history: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    version: int | None = None  # of the newest report applied (None: it never reported)
    held: frozenset[bytes] = frozenset()
    routed: Counter[bytes] = field(default_factory=Counter)  # hashes of its requests under way

    def has(self, h: bytes) -> bool:
        if h in self.routed:
            return True
        return h in self.held if self.version is not None else h in self.history


class PrefixIndex:
    def __init__(self, per_worker: int = PER_WORKER) -> None:
        self.per_worker = per_worker
        self._workers: dict[str, _Worker] = {}
        self._under_way: dict[str, tuple[str, list[bytes]]] = {}  # request id -> (worker id, hashes)

    def depth(self, worker_id: str, hashes: list[bytes]) -> int:
        """How many leading prefix blocks of the request ``worker_id`` holds (as far as the queen knows)."""
        known = self._workers.get(worker_id)
        if known is None or not hashes:
            return 0
        lo, hi = 0, len(hashes)  # chained hashes: holding block k implies holding every block before it
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if known.has(hashes[mid - 1]):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def record(self, worker_id: str, hashes: list[bytes], request_id: str | None = None) -> None:
        """``hashes`` were routed to ``worker_id``; with a ``request_id``, held there until :meth:`settle`."""
        known = self._workers.setdefault(worker_id, _Worker())
        seen = known.history
        for h in hashes:
            seen[h] = None
            seen.move_to_end(h)
        while len(seen) > self.per_worker:
            seen.popitem(last=False)
        if request_id is not None:
            self.settle(request_id)
            self._under_way[request_id] = (worker_id, hashes)
            known.routed.update(hashes)

    def settle(self, request_id: str) -> None:
        """The request has ended: what it left behind is for its worker's report to say."""
        entry = self._under_way.pop(request_id, None)
        if entry is None:
            return
        known = self._workers.get(entry[0])
        if known is not None:
            known.routed.subtract(entry[1])
            known.routed = +known.routed  # drop the hashes no request under way carries any more

    def report(self, worker_id: str, version: int, held: Iterable[list[bytes]]) -> bool:
        """What ``worker_id`` holds now, as of ``version``; False (ignored) when a newer one was applied."""
        known = self._workers.setdefault(worker_id, _Worker())
        if known.version is not None and version <= known.version:
            return False
        hashes: set[bytes] = set()
        for prompt in held:
            hashes.update(prompt[:MAX_REPORTED - len(hashes)])
        known.version, known.held = version, frozenset(hashes)
        return True

    def forget(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)
        for request_id in [r for r, (w, _) in self._under_way.items() if w == worker_id]:
            del self._under_way[request_id]


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

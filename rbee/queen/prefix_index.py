"""Which worker most likely holds a request's prompt prefix in its KV cache, learnt from routing history.

The queen does not tokenize, so a prompt is cut where it can cut without a tokenizer: chat requests at
message boundaries (turn N+1 of a conversation resends turns 1..N unchanged), raw text every
``BLOCK_CHARS`` characters. Each cut point gets a chained hash (the hash of everything before it), so
two prompts share their first k hashes exactly when they share that much text. The index remembers,
per worker and bounded, the hashes of what was routed to it; a worker's depth for a new request is how
many of its leading hashes that worker has seen. Pure bookkeeping: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable

from rbee.protocol import InferenceRequest

BLOCK_CHARS = 256
PER_WORKER = 8192  # hashes remembered per worker (LRU): many conversations' worth


def _chain(pieces: Iterable[bytes]) -> list[bytes]:
    out, h = [], b""
    for piece in pieces:
        h = hashlib.blake2b(h + piece, digest_size=8).digest()
        out.append(h)
    return out


def prefix_hashes(job: InferenceRequest) -> list[bytes]:
    if job.messages is not None:
        return _chain(json.dumps([m.role, m.content], ensure_ascii=False).encode() for m in job.messages)
    text = job.prompt or ""
    return _chain(text[i:i + BLOCK_CHARS].encode() for i in range(0, len(text), BLOCK_CHARS))


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

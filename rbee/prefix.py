"""A prompt's prefix as the queen cuts it, without a tokenizer: what the queen routes by and what a
worker reports it holds.

Chat requests are cut at message boundaries (turn N+1 of a conversation resends turns 1..N unchanged),
raw text every ``BLOCK_CHARS`` characters. Each cut point gets a chained hash (the hash of everything
before it), so two prompts share their first k hashes exactly when they share that much text.

The queen asks a worker for a report with :data:`REPORT_HEADER`; the worker then tags each slot (and
each state it keeps in host RAM) with the hashes of the request whose KV it holds, and its done events
carry what it holds now (``cache_held``: one :func:`to_wire` string per held prompt) with a
``cache_version`` that only grows, so the queen keeps the newest report whatever order they come in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from rbee.protocol import InferenceRequest

BLOCK_CHARS = 256
HASH_BYTES = 8
REPORT_HEADER = "X-Rbee-Cache-Report"


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
        h = hashlib.blake2b(h + piece.encode(), digest_size=HASH_BYTES).digest()
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


def to_wire(hashes: Iterable[bytes]) -> str:
    """One held prompt's hashes as one string of hex."""
    return b"".join(hashes).hex()


def from_wire(text: object) -> list[bytes] | None:
    """The hashes of one :func:`to_wire` string; None for anything that is not one."""
    if not isinstance(text, str) or len(text) % (2 * HASH_BYTES):
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return [raw[i:i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES)]

"""Per-key rate limits: requests per minute (sliding window) and concurrent streams. Pure logic, no aiohttp.

A refused request leaves no trace: it neither uses up the window nor holds a stream.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rbee.errors import ErrorCode, RbeeError

WINDOW_S = 60.0
_SWEEP_EVERY = 1024  # calls between sweeps of idle keys, so a stream of one-off callers can't grow memory


@dataclass
class _Usage:
    recent: deque[float] = field(default_factory=deque)  # admission times within the window, oldest first
    streams: int = 0


class StreamTicket:
    """One concurrent stream held by a key; :meth:`release` gives it back (safe to call twice)."""

    def __init__(self, limiter: RateLimiter, key: str) -> None:
        self._limiter = limiter
        self.key = key
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter._stream_closed(self.key)


class RateLimiter:
    def __init__(self, rpm: int = 0, concurrent: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        """``rpm`` requests per rolling minute and ``concurrent`` open streams per key; 0 turns a limit off."""
        if rpm < 0 or concurrent < 0:
            raise ValueError("limits are counts: 0 (off) or more")
        self.rpm = rpm
        self.concurrent = concurrent
        self._clock = clock
        self._usage: dict[str, _Usage] = {}
        self._calls = 0

    @property
    def enabled(self) -> bool:
        return bool(self.rpm or self.concurrent)

    def admit(self, key: str, *, stream: bool = False) -> StreamTicket | None:
        """Count one request for ``key`` (holding one of its concurrent streams when ``stream``).

        Over a limit: 429 RATE_LIMITED with the seconds until it would fit, and nothing counted.
        """
        usage = self._usage_of(key)
        now = self._clock()
        self._expire(usage, now)
        if self.rpm and len(usage.recent) >= self.rpm:
            wait = usage.recent[0] + WINDOW_S - now
            raise RbeeError(
                ErrorCode.RATE_LIMITED,
                f"Rate limit reached: {self.rpm} requests per minute for this key. "
                "Retry after the Retry-After delay.",
                {"limit": "requests_per_minute", "rpm": self.rpm},
                retry_after=max(1, math.ceil(wait)),
            )
        if stream and self.concurrent and usage.streams >= self.concurrent:
            raise RbeeError(
                ErrorCode.RATE_LIMITED,
                f"Too many requests at once: this key may run {self.concurrent} at a time. "
                "Wait for one to finish, then retry.",
                {"limit": "concurrent", "concurrent": self.concurrent},
                retry_after=1,
            )
        if self.rpm:
            usage.recent.append(now)
        if not stream:
            return None
        usage.streams += 1
        return StreamTicket(self, key)

    def in_use(self, key: str) -> tuple[int, int]:
        """(requests in the current window, open streams) for ``key``."""
        usage = self._usage.get(key)
        if usage is None:
            return 0, 0
        self._expire(usage, self._clock())
        return len(usage.recent), usage.streams

    def __len__(self) -> int:
        """Keys with something still counted."""
        return len(self._usage)

    # ------------------------------------------------------------ internals

    def _usage_of(self, key: str) -> _Usage:
        self._calls += 1
        if self._calls % _SWEEP_EVERY == 0:
            self._sweep()
        usage = self._usage.get(key)
        if usage is None:
            usage = self._usage[key] = _Usage()
        return usage

    def _expire(self, usage: _Usage, now: float) -> None:
        while usage.recent and usage.recent[0] <= now - WINDOW_S:
            usage.recent.popleft()

    def _stream_closed(self, key: str) -> None:
        usage = self._usage.get(key)
        if usage is not None and usage.streams > 0:
            usage.streams -= 1

    def _sweep(self) -> None:
        now = self._clock()
        for key, usage in list(self._usage.items()):
            self._expire(usage, now)
            if not usage.recent and not usage.streams:
                del self._usage[key]

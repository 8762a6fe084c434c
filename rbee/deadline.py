"""Request deadlines: what a client may say, how each part reads it, and what it passes on.

A client bounds a request with ``X-Request-Deadline`` (an absolute time: RFC 3339 with a zone, or
epoch milliseconds) or ``timeout`` in the body (seconds from arrival); the queen may add a default
(``--default-timeout``). The earliest of them wins. Queue wait, cold start and generation all count.

Between the parts the remaining time travels as ``X-Request-Timeout-Ms`` (milliseconds left when
the hop was sent, as gRPC's ``grpc-timeout``): relative, so the machines' clocks need not agree.
Each part takes the earliest of everything it was given, so a deadline can only shrink on the way
down. Inside a part a deadline is a point on ``time.monotonic()``.

Pure: no aiohttp, clocks injectable, so the parsing is tested without a server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from rbee.errors import ErrorCode, RbeeError

DEADLINE_HEADER = "X-Request-Deadline"
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
MAX_TIMEOUT_S = 86_400.0  # a day: longer is surely a unit mix-up
_EPOCH_MS_FLOOR = 10**11  # epoch ms before 1973: a count of seconds sent by mistake


def _bad(field: str, value: str, problem: str) -> RbeeError:
    shown = value if len(value) <= 64 else value[:61] + "..."
    return RbeeError(ErrorCode.INVALID_REQUEST, f"Invalid {field} '{shown}': {problem}.", {"field": field})


def parse_deadline(value: str, now_wall: float) -> float:
    """Seconds from ``now_wall`` (epoch seconds) to the absolute time ``value`` names (negative: past)."""
    text = value.strip()
    if text.isdigit():
        ms = int(text)
        if ms < _EPOCH_MS_FLOOR:
            raise _bad(DEADLINE_HEADER, value, "epoch time must be in milliseconds (this looks like seconds); "
                       "or send an RFC 3339 time such as 2026-01-01T12:00:00Z")
        return ms / 1000.0 - now_wall
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(DEADLINE_HEADER, value, "send an RFC 3339 time with a zone (2026-01-01T12:00:00Z) or "
                   "epoch milliseconds") from None
    if when.tzinfo is None:
        raise _bad(DEADLINE_HEADER, value, "the time has no zone; add one (Z or +02:00)")
    return when.timestamp() - now_wall


def parse_timeout_ms(value: str) -> float:
    """Seconds a hop header gives (``X-Request-Timeout-Ms``: whole milliseconds, 0 or more)."""
    text = value.strip()
    if not text.isdigit():
        raise _bad(TIMEOUT_HEADER, value, "send the milliseconds left as a whole number")
    return int(text) / 1000.0


@dataclass(frozen=True)
class Deadline:
    """When a request must be finished (``at``), and when this part took it in (``since``), both on
    ``time.monotonic()``."""

    at: float
    since: float

    @classmethod
    def within(cls, seconds: float, now: float | None = None) -> Deadline:
        now = time.monotonic() if now is None else now
        return cls(now + seconds, now)

    def remaining(self, now: float | None = None) -> float:
        return self.at - (time.monotonic() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.remaining(now) <= 0

    def header(self, now: float | None = None) -> dict[str, str]:
        """The hop header for the next part: the milliseconds left, rounded down (never more than we have)."""
        return {TIMEOUT_HEADER: str(max(0, math.floor(self.remaining(now) * 1000)))}

    def exceeded(self, stage: str, next_step: str, now: float | None = None) -> RbeeError:
        """504 ``DEADLINE_EXCEEDED``: where it was when time ran out, how long it waited here."""
        now = time.monotonic() if now is None else now
        waited, budget = now - self.since, self.at - self.since
        return RbeeError(
            ErrorCode.DEADLINE_EXCEEDED,
            f"The request's deadline passed {stage}, after {waited:.1f} s here (it had {max(budget, 0):.1f} s). "
            f"{next_step}",
            {"stage": stage, "waited_ms": int(waited * 1000), "budget_ms": max(0, int(budget * 1000))},
        )


    def cut_short(self, total_tokens: int, now: float | None = None, **details: object) -> RbeeError:
        """504 for a whole (not streamed) answer stopped at the deadline: nothing was sent yet, so the client
        hears it as an error rather than as half an answer."""
        err = self.exceeded("while generating", f"The answer was not finished ({total_tokens} tokens). Send it "
                            "again with a later deadline, a smaller max_tokens, or stream it to keep the text so far.",
                            now)
        err.details.update(total_tokens=total_tokens, **details)
        return err


def earliest(*deadlines: Deadline | None) -> Deadline | None:
    given = [d for d in deadlines if d is not None]
    return min(given, key=lambda d: d.at) if given else None


def of_request(headers: Mapping[str, str], timeout_s: float | None = None, default_s: float | None = None,
               *, now: float | None = None, now_wall: float | None = None) -> Deadline | None:
    """The request's deadline from its headers, its body's ``timeout`` and this part's default (None or 0:
    none); the earliest wins. A bad value is a 400 naming the header."""
    now = time.monotonic() if now is None else now
    seconds: list[float] = []
    absolute = headers.get(DEADLINE_HEADER)
    if absolute is not None:
        seconds.append(parse_deadline(absolute, time.time() if now_wall is None else now_wall))
    hop = headers.get(TIMEOUT_HEADER)
    if hop is not None:
        seconds.append(parse_timeout_ms(hop))
    seconds += [s for s in (timeout_s, default_s) if s]
    if not seconds:
        return None
    return Deadline.within(min(seconds), now)

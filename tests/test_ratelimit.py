"""Per-key rate limits: requests per rolling minute and concurrent streams."""

from __future__ import annotations

import pytest

from rbee.errors import ErrorCode, RbeeError
from rbee.queen.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused(limiter: RateLimiter, key: str, **kw) -> RbeeError:
    with pytest.raises(RbeeError) as info:
        limiter.admit(key, **kw)
    assert info.value.code == ErrorCode.RATE_LIMITED and info.value.status == 429
    return info.value


def test_off_by_default_admits_everything():
    limiter = RateLimiter()
    assert not limiter.enabled
    for _ in range(10_000):
        limiter.admit("k")


def test_rpm_refuses_the_request_over_the_limit_with_seconds_until_one_fits():
    clock = Clock()
    limiter = RateLimiter(rpm=3, clock=clock)
    for i in range(3):
        clock.now += 10 * i
        limiter.admit("alice")
    # admissions at t=1000, 1010, 1030; now t=1030: the oldest leaves the window at t=1060
    err = refused(limiter, "alice")
    assert err.retry_after == 30
    assert err.details["limit"] == "requests_per_minute"


def test_window_rolls_forward():
    clock = Clock()
    limiter = RateLimiter(rpm=2, clock=clock)
    limiter.admit("k")
    clock.now += 30
    limiter.admit("k")
    refused(limiter, "k")
    clock.now += 30.5  # the first request is now older than a minute
    limiter.admit("k")
    refused(limiter, "k")


def test_retry_after_is_at_least_one_second():
    clock = Clock()
    limiter = RateLimiter(rpm=1, clock=clock)
    limiter.admit("k")
    clock.now += 59.9
    assert refused(limiter, "k").retry_after == 1


def test_keys_are_limited_separately():
    limiter = RateLimiter(rpm=1, clock=Clock())
    limiter.admit("alice")
    limiter.admit("bob")
    refused(limiter, "alice")
    refused(limiter, "bob")


def test_concurrent_streams_are_held_until_released():
    limiter = RateLimiter(concurrent=2, clock=Clock())
    first = limiter.admit("k", stream=True)
    second = limiter.admit("k", stream=True)
    err = refused(limiter, "k", stream=True)
    assert err.details["limit"] == "concurrent" and err.retry_after == 1
    limiter.admit("k")  # a plain request holds no stream
    first.release()
    limiter.admit("k", stream=True)
    assert limiter.in_use("k")[1] == 2
    second.release()
    assert limiter.in_use("k")[1] == 1


def test_release_twice_frees_one_stream_only():
    limiter = RateLimiter(concurrent=1, clock=Clock())
    ticket = limiter.admit("k", stream=True)
    ticket.release()
    ticket.release()
    other = limiter.admit("k", stream=True)
    refused(limiter, "k", stream=True)
    other.release()


def test_a_refused_request_is_not_counted():
    clock = Clock()
    limiter = RateLimiter(rpm=2, concurrent=1, clock=clock)
    ticket = limiter.admit("k", stream=True)
    refused(limiter, "k", stream=True)  # refused for concurrency: must not use up the minute
    assert limiter.in_use("k") == (1, 1)
    ticket.release()
    limiter.admit("k")
    refused(limiter, "k")  # now over rpm: no stream taken
    assert limiter.in_use("k") == (2, 0)


def test_idle_keys_are_forgotten():
    clock = Clock()
    limiter = RateLimiter(rpm=5, clock=clock)
    for i in range(2000):
        limiter.admit(f"caller-{i}")
    clock.now += 61
    for i in range(200):
        limiter.admit(f"newcomer-{i}")
    assert len(limiter) == 200  # the old callers' windows lay empty and were swept


def test_negative_limits_are_refused():
    with pytest.raises(ValueError):
        RateLimiter(rpm=-1)

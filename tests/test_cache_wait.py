"""Delay scheduling in the admission queue (``--cache-wait``): a request that may queue waits a little
for the busy worker holding its prompt prefix rather than take a free slot that holds none of it; a
request with nothing cached anywhere takes that free slot meanwhile; the wait is bounded. Pure asyncio
over a real Registry and AdmissionQueue: no processes."""

from __future__ import annotations

import asyncio
import time

from rbee.prefix import BLOCK_CHARS, prefix_hashes, prefix_of
from rbee.protocol import InferenceRequest, WorkerRegistration
from rbee.queen.admission import AdmissionQueue
from rbee.queen.prefix_index import PrefillRate
from rbee.queen.registry import Registry
from rbee.queen.scheduler import Route

MODEL = "m"


def fleet(cache_wait: float, timeout: float = 30.0) -> AdmissionQueue:
    registry = Registry()
    for n in (1, 2):
        registry.register(WorkerRegistration(worker_id=f"w{n}", url=f"http://127.0.0.1:900{n}", model_ref=MODEL,
                                             slots_total=1))
    return AdmissionQueue(registry, 16, timeout, cache_wait=cache_wait)


def on_w1(worker) -> int:
    """A request whose prompt prefix (3 blocks of it) only w1 was sent."""
    return 3 if worker.worker_id == "w1" else 0


async def _until(task: asyncio.Task, seconds: float) -> bool:
    done, _ = await asyncio.wait({task}, timeout=seconds)
    return bool(done)


def test_a_request_waits_for_its_busy_cache_while_another_takes_the_free_slot():
    async def scenario():
        queue = fleet(cache_wait=30.0)
        busy = queue.registry.acquire(MODEL, affinity=on_w1)  # w1 takes a first turn: it holds the prefix now
        assert busy.worker_id == "w1" and busy.route == Route.CACHE
        second = asyncio.create_task(queue.admit(MODEL, "a", affinity=on_w1))  # the next turn: w1 is busy
        assert not await _until(second, 0.3)  # w2 is free, but holds none of it: it waits
        other, waited = await asyncio.wait_for(queue.admit(MODEL, "b", affinity=lambda w: 0), 5)
        assert other.worker_id == "w2" and waited < 0.1  # a request cached nowhere is not held up behind it
        assert not second.done()
        queue.registry.release(busy)  # w1 frees: the waiting turn goes there, to its cache
        lease, waited = await asyncio.wait_for(second, 5)
        assert lease.worker_id == "w1" and lease.route == Route.CACHE and waited > 0.2
    asyncio.run(scenario())


def test_the_wait_for_a_cache_is_bounded_then_the_free_slot_is_taken():
    async def scenario():
        queue = fleet(cache_wait=0.5)
        queue.registry.acquire(MODEL, affinity=on_w1)
        started = time.monotonic()
        lease, waited = await asyncio.wait_for(queue.admit(MODEL, "a", affinity=on_w1), 10)
        assert lease.worker_id == "w2" and lease.route == Route.LOAD
        assert 0.45 <= waited and time.monotonic() - started < 8  # after the wait, not before; never hung
    asyncio.run(scenario())


def test_without_a_queue_or_with_the_wait_off_the_free_slot_is_taken_at_once():
    async def scenario(queue: AdmissionQueue):
        queue.registry.acquire(MODEL, affinity=on_w1)
        return await asyncio.wait_for(queue.admit(MODEL, "a", affinity=on_w1), 5)

    for queue in (fleet(cache_wait=0.0), fleet(cache_wait=30.0, timeout=0.0)):
        lease, waited = asyncio.run(scenario(queue))
        assert lease.worker_id == "w2" and waited == 0.0


def test_a_free_worker_holding_enough_of_the_prefix_is_taken_without_waiting():
    async def scenario():
        queue = fleet(cache_wait=30.0)
        queue.registry.acquire(MODEL, affinity=on_w1)
        deep_on_w1_some_on_w2 = lambda w: 3 if w.worker_id == "w1" else 2
        return await asyncio.wait_for(queue.admit(MODEL, "a", affinity=deep_on_w1_some_on_w2), 5)

    lease, waited = asyncio.run(scenario())
    assert lease.worker_id == "w2" and waited == 0.0


def test_a_request_waits_no_longer_than_recomputing_its_prefix_would_take():
    async def scenario():
        queue = fleet(cache_wait=30.0)
        queue.registry.acquire(MODEL, affinity=on_w1)  # w1 busy with the prefix; w2 free, holding none of it
        started = time.monotonic()
        lease, waited = await asyncio.wait_for(queue.admit(MODEL, "a", affinity=on_w1, patience=0.4), 10)
        assert lease.worker_id == "w2" and 0.35 <= waited and time.monotonic() - started < 5  # its own bound, not 30 s
        queue.registry.release(lease)
        lease, waited = await asyncio.wait_for(queue.admit(MODEL, "b", affinity=on_w1, patience=0.0), 5)
        assert lease.worker_id == "w2" and waited == 0.0  # nothing worth waiting for: the free slot at once
    asyncio.run(scenario())


def test_the_prefill_rate_is_learnt_from_requests_that_were_mostly_prefill():
    rate = PrefillRate()
    prior = rate.seconds(MODEL, 10_000)
    assert prior < 1.0  # nothing learnt: assume a fast worker, so little waiting
    rate.observe(MODEL, prompt_chars=4000, prompt_tokens=1000, cached_tokens=0, ttft_ms=8000)  # 2 ms a character
    assert abs(rate.seconds(MODEL, 1000) - 2.0) < 1e-9
    rate.observe(MODEL, prompt_chars=4000, prompt_tokens=1000, cached_tokens=990, ttft_ms=300)  # mostly cached
    rate.observe(MODEL, prompt_chars=100, prompt_tokens=25, cached_tokens=0, ttft_ms=90)  # too short to tell
    assert abs(rate.seconds(MODEL, 1000) - 2.0) < 1e-9  # neither says anything about prefill
    rate.observe(MODEL, prompt_chars=4000, prompt_tokens=1000, cached_tokens=500, ttft_ms=2000)  # 1 ms a character
    assert 1.0 < rate.seconds(MODEL, 1000) < 2.0  # an average that moves toward what workers show now
    assert rate.seconds("other", 10_000) == prior  # per model
    for missing in ({"prompt_tokens": None}, {"ttft_ms": None}, {"prompt_chars": 0}):
        kwargs = {"prompt_chars": 4000, "prompt_tokens": 1000, "cached_tokens": 0, "ttft_ms": 1, **missing}
        rate.observe("third", **kwargs)
    assert rate.seconds("third", 10_000) == prior


def test_a_prefix_knows_how_many_characters_each_depth_covers():
    text = "y" * (BLOCK_CHARS * 2 + 7)
    prefix = prefix_of(InferenceRequest(prompt=text))
    assert prefix.chars() == len(text) and prefix.chars(1) == BLOCK_CHARS and prefix.chars(0) == 0
    assert prefix.chars(99) == len(text) and prefix.hashes == prefix_hashes(InferenceRequest(prompt=text))

"""Liveness that does not grow on the request path: a hive's heartbeat vouches for its workers (the
queen probes only the others), a round's probes are spread over the interval, and a worker whose
stream visibly moves through the queen stays in routing however slow its health answer is; one whose
stream does not move (frozen) still leaves routing. Real HTTP (the scripted worker), no processes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import time

import aiohttp
from aiohttp.test_utils import TestServer

from rbee.protocol import WorkerRegistration, WorkerState
from rbee.queen.health import probe_loop, spread
from rbee.queen.registry import Registry
from rbee.testing import fake_worker


def test_probes_are_spread_evenly_over_the_interval():
    assert spread(4, 1.0) == [0.0, 0.25, 0.5, 0.75]
    assert spread(0, 1.0) == []
    offsets = spread(1000, 1.0)
    assert len(offsets) == 1000 and max(b - a for a, b in itertools.pairwise(offsets)) < 0.0011


def test_a_hive_heartbeat_vouches_for_its_worker_for_a_while():
    now = [100.0]
    registry = Registry(clock=lambda: now[0])
    for worker_id in ("hived", "alone"):
        registry.register(WorkerRegistration(worker_id=worker_id, url=f"http://127.0.0.1:1/{worker_id}",
                                             model_ref="m", slots_total=1))
    assert {r.worker_id for r in registry.unvouched(2.5)} == {"hived", "alone"}
    registry.heartbeat("hived", WorkerState.IDLE, 1)
    assert [r.worker_id for r in registry.unvouched(2.5)] == ["alone"]
    now[0] += 3.0  # the hive fell silent: the queen probes it itself again
    assert {r.worker_id for r in registry.unvouched(2.5)} == {"hived", "alone"}


async def _worker(slow_health: float) -> TestServer:
    script = argparse.Namespace(slots=2, interval=0.02, stall_after=None, die_after=None, slow_health=slow_health)
    server = TestServer(fake_worker.create_app(script))
    await server.start_server()
    return server


async def _watch(streaming_moves: bool) -> list[str]:
    """The worker's states while one stream runs on it and its health answers after 3 s (probe timeout
    0.2 s, heartbeat timeout 1 s): ``streaming_moves`` says whether the queen sees its blocks move."""
    server = await _worker(slow_health=3.0)
    url = str(server.make_url("")).rstrip("/")
    registry = Registry()
    registry.register(WorkerRegistration(worker_id="w", url=url, model_ref="m", slots_total=2))
    states: list[str] = []
    async with aiohttp.ClientSession() as session:
        stream = await session.post(f"{url}/v1/inference", json={"prompt": "x", "max_tokens": 150})
        assert stream.status == 200
        moved = lambda: {"w"} if streaming_moves else set()
        prober = asyncio.ensure_future(probe_loop(registry, session, interval=0.2, heartbeat_timeout=1.0,
                                                  remove_after=60, streaming=moved))
        try:
            end = time.monotonic() + 2.5  # well past the heartbeat timeout, within the 3 s stream
            while time.monotonic() < end:
                states.append(registry.get("w").state)
                await asyncio.sleep(0.05)  # sampling the state, not waiting for readiness
        finally:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
            stream.release()
    await server.close()
    return states


def test_a_streaming_worker_with_a_slow_health_stays_in_routing():
    states = asyncio.run(_watch(streaming_moves=True))
    assert WorkerState.OFFLINE not in states, states


def test_the_same_worker_without_moving_streams_leaves_routing():
    states = asyncio.run(_watch(streaming_moves=False))
    assert states[-1] == WorkerState.OFFLINE, states  # the probe alone cannot vouch for it: the bound holds

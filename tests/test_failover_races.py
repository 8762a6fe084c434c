"""Failover when the queen's view of a worker is wrong, against real HTTP workers (the scripted worker
of rbee.testing.fake_worker, and one whose engine fails):

- a worker whose slots someone else holds (another queen; a slot not freed yet) answers
  ``ALL_SLOTS_BUSY``: the retry goes to another worker, and when none has room the request waits in
  the admission queue until one shows room, rather than losing the same race until it fails;
- a request pinned to a hive whose only worker failed it, or whose hive went silent, gets a prompt
  answer naming the hive instead of waiting out the queue timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from rbee.errors import ErrorCode, RbeeError
from rbee.peer import Peers
from rbee.protocol import HiveRegistration, InferenceRequest, WorkerRegistration
from rbee.queen.admission import AdmissionQueue
from rbee.queen.cold_start import ColdStarter
from rbee.queen.dispatch import Dispatcher
from rbee.queen.health import probe_loop
from rbee.queen.hive_registry import HiveRegistry
from rbee.queen.registry import Registry
from rbee.testing import fake_worker
from rbee.web import make_app

DEADLINE_S = 20.0


async def _scripted(slots: int, interval: float = 0.05) -> TestServer:
    script = argparse.Namespace(slots=slots, interval=interval, stall_after=None, die_after=None)
    server = TestServer(fake_worker.create_app(script))
    await server.start_server()
    return server


async def _failing() -> TestServer:
    """A worker whose engine fails every request (500 INTERNAL) while its health stays fine."""

    async def inference(request: web.Request) -> web.Response:
        raise RbeeError(ErrorCode.INTERNAL, "The engine failed.")

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "state": "idle"})

    app = make_app()
    app.router.add_post("/v1/inference", inference)
    app.router.add_get("/v1/health", health)
    server = TestServer(app)
    await server.start_server()
    return server


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def _register(registry: Registry, worker_id: str, server: TestServer, slots: int, hive: str = "local") -> None:
    registry.register(WorkerRegistration(worker_id=worker_id, url=_url(server), model_ref="m", slots_total=slots,
                                         node_name=hive))


@contextlib.asynccontextmanager
async def _queen(registry: Registry, queue_timeout: float, hives: HiveRegistry | None = None
                 ) -> AsyncIterator[Dispatcher]:
    """The queen's dispatcher over real HTTP, with its health prober running (it sees workers' room)."""
    async with aiohttp.ClientSession() as session:
        peers = Peers(session, None)
        dispatcher = Dispatcher(registry, peers, AdmissionQueue(registry, 8, queue_timeout))
        if hives is not None:  # as the app wires it
            dispatcher.cold_start = ColdStarter(hives, peers).provide
            dispatcher.require_live_hive = hives.require_live
        prober = asyncio.ensure_future(probe_loop(registry, session, interval=0.2, heartbeat_timeout=30,
                                                  remove_after=60))
        try:
            yield dispatcher
        finally:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober


@contextlib.asynccontextmanager
async def _held(server: TestServer, n: int, tokens: int = 400) -> AsyncIterator[list[aiohttp.ClientResponse]]:
    """``n`` streams on the worker that the queen does not know of (as another queen's), open until the
    block ends (cancelled then) or they finish."""
    async with aiohttp.ClientSession() as session:
        streams = []
        try:
            for i in range(n):
                r = await session.post(f"{_url(server)}/v1/inference", json={"prompt": "x", "max_tokens": tokens},
                                       headers={"X-Request-Id": f"other-{i}"})
                assert r.status == 200
                await r.content.readany()  # its slot is taken once the first token came
                streams.append(r)
            yield streams
        finally:
            for i, r in enumerate(streams):
                with contextlib.suppress(aiohttp.ClientError):
                    await session.delete(f"{_url(server)}/v1/inference/other-{i}")
                r.release()


async def _served_by(dispatcher: Dispatcher, job: InferenceRequest, request_id: str = "q-1") -> tuple[str, float]:
    started = time.monotonic()
    upstream = await asyncio.wait_for(dispatcher.open(job, request_id=request_id), DEADLINE_S)
    try:
        return upstream.worker_id, time.monotonic() - started
    finally:
        await dispatcher.close(upstream, client_gone=True)


def test_a_lost_slot_race_goes_to_another_worker_not_the_same_one_again():
    """The roomier worker (as the queen counts) is full with someone else's streams; it must not be
    picked again on each retry while the other worker has room."""

    async def scenario() -> str:
        roomy, other = await _scripted(2), await _scripted(1)
        registry = Registry()
        _register(registry, "roomy", roomy, 2)
        _register(registry, "other", other, 1)
        try:
            async with _held(roomy, 2), _queen(registry, queue_timeout=0) as dispatcher:
                worker, _ = await _served_by(dispatcher, InferenceRequest(prompt="x", max_tokens=4))
                return worker
        finally:
            await roomy.close()
            await other.close()

    assert asyncio.run(scenario()) == "other"


def test_a_lost_slot_race_with_no_other_room_waits_in_the_queue_until_the_worker_frees_a_slot():
    async def scenario() -> tuple[str, float]:
        only = await _scripted(1)
        registry = Registry()
        _register(registry, "only", only, 1)
        try:
            async with _held(only, 1, tokens=30), _queen(registry, queue_timeout=DEADLINE_S) as dispatcher:
                return await _served_by(dispatcher, InferenceRequest(prompt="x", max_tokens=4))
        finally:
            await only.close()

    worker, took = asyncio.run(scenario())
    assert worker == "only"
    assert took > 0.3, "it was served while the only slot was someone else's: the race was not real"


def test_requests_that_all_lost_the_race_wait_together_and_do_not_free_the_slots_for_each_other():
    """Two requests meet a worker whose two slots someone else holds: a refused lease given back is no
    sign of room (else each one's give-back would send the other straight back into the race)."""

    async def scenario() -> list[tuple[str, float]]:
        only = await _scripted(2)
        registry = Registry()
        _register(registry, "only", only, 2)
        try:
            async with _held(only, 2, tokens=30), _queen(registry, queue_timeout=DEADLINE_S) as dispatcher:
                return await asyncio.gather(*(_served_by(dispatcher, InferenceRequest(prompt="x", max_tokens=4),
                                                         request_id=f"q-{i}") for i in range(2)))
        finally:
            await only.close()

    served = asyncio.run(scenario())
    assert [worker for worker, _ in served] == ["only", "only"]
    assert all(took > 0.3 for _, took in served), served


def test_a_request_pinned_to_a_hive_whose_only_worker_failed_it_is_answered_at_once_naming_the_hive():
    async def scenario() -> tuple[RbeeError, float]:
        broken, elsewhere = await _failing(), await _scripted(1)
        registry = Registry()
        _register(registry, "a1", broken, 1, hive="alpha")
        _register(registry, "b1", elsewhere, 1, hive="beta")
        try:
            async with _queen(registry, queue_timeout=DEADLINE_S) as dispatcher:
                started = time.monotonic()
                with pytest.raises(RbeeError) as refused:
                    await asyncio.wait_for(dispatcher.open(InferenceRequest(prompt="x", hive="alpha"),
                                                           request_id="q-1"), DEADLINE_S)
                return refused.value, time.monotonic() - started
        finally:
            await broken.close()
            await elsewhere.close()

    err, took = asyncio.run(scenario())
    assert took < 5, f"it waited {took:.1f} s for a worker that had already failed it"
    assert err.code == ErrorCode.INTERNAL and "alpha" in err.message and "without --hive" in err.message
    assert err.details["hive"] == "alpha"


def test_a_request_pinned_to_a_silent_hive_without_live_workers_is_told_the_hive_is_offline():
    async def scenario() -> list[RbeeError]:
        worker = await _scripted(1)
        now = [1000.0]
        hives = HiveRegistry(timeout=3.0, clock=lambda: now[0])
        hives.register(HiveRegistration(hive_id="alpha", url=_url(worker), models=["m"]))
        registry = Registry()
        _register(registry, "a1", worker, 1, hive="alpha")
        registry.unreachable("a1")  # its host went away: a refused connection took it out of routing
        now[0] += 10  # and the hive's heartbeats stopped
        await worker.close()
        async with _queen(registry, queue_timeout=DEADLINE_S, hives=hives) as dispatcher:
            errors = []
            for model in ("m", None):  # named, or the default model (no cold start for that)
                with pytest.raises(RbeeError) as refused:
                    await asyncio.wait_for(dispatcher.open(InferenceRequest(prompt="x", model=model, hive="alpha"),
                                                           request_id="q-1"), DEADLINE_S)
                errors.append(refused.value)
            return errors

    named, default = asyncio.run(scenario())
    assert default.code == ErrorCode.HIVE_OFFLINE and "alpha" in default.message
    err = named
    assert err.code == ErrorCode.HIVE_OFFLINE
    assert "alpha" in err.message and "rbee-keeper hives start alpha" in err.message and "10 s" in err.message

"""The queen's relay (rbee.queen.dispatch) against a real HTTP source that writes scripted bytes:
whole blocks relayed however the worker's writes are cut, the done event stamped with the queen's
timeline, a worker that breaks, stalls or hangs up early turned into one error event and [DONE],
and the slot given back in every case."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from rbee import sse
from rbee.events import Done, Failed, Token
from rbee.peer import Peers
from rbee.protocol import InferenceRequest, WorkerRegistration
from rbee.queen.admission import AdmissionQueue
from rbee.queen.dispatch import Dispatcher, Hooks
from rbee.queen.registry import Registry

TOKENS = [Token(f" t{i}", i) for i in range(5)]
DONE = Done(5, 12, "length", prompt_tokens=3)


def _wire() -> bytes:
    return b"".join(map(sse.frame_event, [*TOKENS, DONE])) + sse.DONE_FRAME


async def _source(script: list[bytes | float | None], cancel_delay: float = 0.0) -> TestServer:
    """A worker that writes the script: bytes are written, a float is a pause, None drops the connection.
    ``cancel_delay``: seconds its cancel takes to answer (across a cut link, the cancel's whole timeout)."""

    async def inference(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=sse.SSE_HEADERS)
        await response.prepare(request)
        for step in script:
            if step is None:
                request.transport.close()
                return response
            if isinstance(step, float):
                await asyncio.sleep(step)  # the scripted pause of a stalling worker
            else:
                await response.write(step)
        return response

    async def cancel(request: web.Request) -> web.Response:
        await asyncio.sleep(cancel_delay)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/v1/inference", inference)
    app.router.add_delete("/v1/inference/{rid}", cancel)
    server = TestServer(app)
    await server.start_server()
    return server


@contextlib.asynccontextmanager
async def _dispatch(script: list[bytes | float | None], stall: float = 5.0) -> AsyncIterator:
    server = await _source(script)
    registry = Registry()
    registry.register(WorkerRegistration(worker_id="w1", url=str(server.make_url("")).rstrip("/"), model_ref="m",
                                         slots_total=1))
    async with aiohttp.ClientSession() as session:
        dispatcher = Dispatcher(registry, Peers(session, None), AdmissionQueue(registry, 4, 0), stall_timeout=stall)
        upstream = await dispatcher.open(InferenceRequest(prompt="x"), request_id="r1")
        try:
            yield dispatcher, upstream, registry
        finally:
            await dispatcher.close(upstream, client_gone=False)
            await server.close()


async def _relayed(script, stall: float = 5.0) -> tuple[bytes, int]:
    out = bytearray()
    async with _dispatch(script, stall) as (dispatcher, upstream, registry):
        await dispatcher.relay(upstream, _append(out))
    return bytes(out), registry.get("w1").slots_available


def _append(out: bytearray):
    async def write(data: bytes) -> None:
        out.extend(data)
    return write


def _events(wire: bytes) -> list:
    return [sse.parse_event(data) for kind, data in sse.iter_messages([wire]) if kind == "data"]


@pytest.mark.parametrize("size", [1, 3, 17, 10_000])
def test_every_event_arrives_once_in_order_however_the_writes_are_cut(size):
    wire = _wire()
    relayed, free = asyncio.run(_relayed([wire[i:i + size] for i in range(0, len(wire), size)]))
    events = _events(relayed)
    assert events[:5] == TOKENS and events[-1] is None
    done = events[5]
    assert isinstance(done, Done) and done.total_tokens == 5 and done.worker_id == "w1"
    assert done.queued_ms == 0 and done.ttft_ms is not None and done.ttft_ms >= 0
    assert free == 1


def test_a_worker_that_drops_the_connection_mid_answer_ends_in_one_error_event():
    wire = b"".join(map(sse.frame_event, TOKENS[:2]))
    relayed, free = asyncio.run(_relayed([wire, 0.05, None]))
    events = _events(relayed)
    assert events[:2] == TOKENS[:2] and events[-1] is None
    assert isinstance(events[2], Failed) and events[2].code == "WORKER_UNAVAILABLE"
    assert len(events) == 4 and free == 1


def test_a_worker_that_stalls_past_the_stall_timeout_ends_in_one_error_event():
    wire = sse.frame_event(TOKENS[0])
    relayed, _ = asyncio.run(_relayed([wire, 3.0], stall=0.3))
    events = _events(relayed)
    assert events[0] == TOKENS[0] and isinstance(events[1], Failed) and events[2] is None
    assert "stopped sending tokens" in events[1].message


def test_a_stalled_worker_whose_cancel_hangs_still_ends_the_stream_within_the_stall_timeout():
    # A cut link: the worker goes silent and the cancel sent to it gets no answer either. The client
    # hears the error when the stall timeout runs out, not after the cancel's own timeout too.
    async def scenario():
        server = await _source([sse.frame_event(TOKENS[0]), 3.0], cancel_delay=3.0)
        registry = Registry()
        registry.register(WorkerRegistration(worker_id="w1", url=str(server.make_url("")).rstrip("/"),
                                             model_ref="m", slots_total=1))
        out = bytearray()
        async with aiohttp.ClientSession() as session:
            dispatcher = Dispatcher(registry, Peers(session, None), AdmissionQueue(registry, 4, 0), stall_timeout=0.3)
            upstream = await dispatcher.open(InferenceRequest(prompt="x"), request_id="r1")
            started = asyncio.get_running_loop().time()
            await dispatcher.relay(upstream, _append(out))
            took = asyncio.get_running_loop().time() - started
            await dispatcher.close(upstream, client_gone=False)
            free = registry.get("w1").slots_available
        await server.close()
        return bytes(out), took, free

    relayed, took, free = asyncio.run(scenario())
    events = _events(relayed)
    assert isinstance(events[1], Failed) and events[1].code == "WORKER_UNAVAILABLE" and events[2] is None
    assert took < 1.5, took  # 0.3 s of stall; the cancel's 2 s timeout runs on in the background
    assert free == 1


def test_the_typed_reader_sees_the_same_events_as_the_byte_relay():
    async def scenario():
        async with _dispatch([_wire()]) as (dispatcher, upstream, _):
            return [e async for e in dispatcher.events(upstream)]

    events = asyncio.run(scenario())
    assert events[:5] == TOKENS and isinstance(events[5], Done) and events[5].worker_id == "w1"
    assert len(events) == 6


def test_a_worker_that_fails_before_its_first_token_is_left_for_another():
    async def scenario():
        failed = sse.frame_event(Failed("INTERNAL", "could not start")) + sse.DONE_FRAME
        server = await _source([failed])
        registry = Registry()
        registry.register(WorkerRegistration(worker_id="w1", url=str(server.make_url("")).rstrip("/"),
                                             model_ref="m"))
        try:
            async with aiohttp.ClientSession() as session:
                dispatcher = Dispatcher(registry, Peers(session, None), AdmissionQueue(registry, 4, 0))
                with pytest.raises(Exception) as info:
                    await dispatcher.open(InferenceRequest(prompt="x"), request_id="r1")
                return info.value, registry.get("w1").slots_available
        finally:
            await server.close()

    err, free = asyncio.run(scenario())
    assert json.loads(json.dumps(err.envelope()))["error"]["code"] == "WORKER_UNAVAILABLE" and free == 1


class _Told(Hooks):
    """Writes down, in order, what the dispatcher tells its hooks beside what the client was written."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def ttft(self, seconds: float) -> None:
        self.log.append("ttft")

    def first_token(self, upstream) -> None:
        self.log.append("first_token")


async def _relay_told(write_fails: bool) -> list[str]:
    log: list[str] = []
    server = await _source([sse.frame_event(TOKENS[0]), 0.05, _wire()[len(sse.frame_event(TOKENS[0])):]])
    registry = Registry()
    registry.register(WorkerRegistration(worker_id="w1", url=str(server.make_url("")).rstrip("/"), model_ref="m",
                                         slots_total=1))

    async def write(data: bytes) -> None:
        log.append("write")
        if write_fails:
            raise ConnectionResetError("the client went away")

    async with aiohttp.ClientSession() as session:
        dispatcher = Dispatcher(registry, Peers(session, None), AdmissionQueue(registry, 4, 0), hooks=_Told(log))
        upstream = await dispatcher.open(InferenceRequest(prompt="x"), request_id="r1")
        try:
            with contextlib.suppress(ConnectionResetError):
                await dispatcher.relay(upstream, write)
        finally:
            await dispatcher.close(upstream, client_gone=write_fails)
            await server.close()
    return log


def test_the_hooks_hear_of_the_first_token_after_it_was_written_to_the_client():
    log = asyncio.run(_relay_told(write_fails=False))
    assert log[:3] == ["write", "ttft", "first_token"] and log.count("first_token") == 1, log


def test_the_first_token_is_still_counted_when_the_client_leaves_as_it_is_written():
    log = asyncio.run(_relay_told(write_fails=True))
    assert log == ["write", "ttft", "first_token"], log

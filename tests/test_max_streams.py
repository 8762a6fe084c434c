"""--max-streams: the open-file limit the queen asks for at start follows it (two files a stream plus
headroom), and when the machine's hard limit is lower the warning names the flag; the dispatcher
refuses one more with TOO_MANY_STREAMS and tells the prober which workers' streams moved."""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from rbee.errors import ErrorCode, RbeeError
from rbee.listener import OPEN_FILES_HEADROOM, WANTED_OPEN_FILES, raise_open_file_limit
from rbee.peer import Peers
from rbee.protocol import InferenceRequest, WorkerRegistration
from rbee.queen.__main__ import parse_args
from rbee.queen.admission import AdmissionQueue
from rbee.queen.dispatch import Dispatcher
from rbee.queen.registry import Registry
from rbee.testing import fake_worker


def test_the_wanted_open_files_follow_max_streams():
    assert parse_args(["--max-streams", "5000"]).listen_limits().open_files == 2 * 5000 + OPEN_FILES_HEADROOM
    assert parse_args(["--max-streams", "2"]).listen_limits().open_files == WANTED_OPEN_FILES  # never below
    assert parse_args([]).max_streams == 4096


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bad_max_streams_is_refused(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--max-streams", value])
    assert exit_.value.code == 2 and "max-streams" in capsys.readouterr().err


def test_a_hard_limit_too_low_for_max_streams_is_said(caplog):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-file limit here to fall short of")
    try:
        with caplog.at_level(logging.WARNING, logger="rbee.listener"):
            assert raise_open_file_limit(hard + 1, "--max-streams 999999") == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"below the {hard + 1} --max-streams 999999 needs" in warning and "lower --max-streams" in warning


async def _dispatcher_over_a_scripted_worker(max_streams: int):
    script = argparse.Namespace(slots=4, interval=0.01, stall_after=None, die_after=None)
    server = TestServer(fake_worker.create_app(script))
    await server.start_server()
    registry = Registry()
    registry.register(WorkerRegistration(worker_id="w", url=str(server.make_url("")).rstrip("/"), model_ref="m",
                                         slots_total=4))
    session = aiohttp.ClientSession()
    dispatcher = Dispatcher(registry, Peers(session, None), AdmissionQueue(registry, 8, 0), max_streams=max_streams)
    return server, session, dispatcher


def test_the_dispatcher_refuses_beyond_max_streams_and_sees_moving_streams():
    async def scenario():
        server, session, dispatcher = await _dispatcher_over_a_scripted_worker(max_streams=1)
        try:
            job = InferenceRequest(prompt="x", max_tokens=20)
            first = await dispatcher.open(job, request_id="r1")
            assert dispatcher.in_flight == 1 and dispatcher.streaming() == set()  # nothing relayed yet
            with pytest.raises(RbeeError) as refused:
                await dispatcher.open(job, request_id="r2")
            assert refused.value.code == ErrorCode.TOO_MANY_STREAMS and refused.value.retry_after >= 1
            chunks = dispatcher.chunks(first)
            await chunks.__anext__()  # blocks relayed: the stream moved
            assert dispatcher.streaming() == {"w"} and dispatcher.streaming() == set()  # once per move
            async for _ in chunks:
                pass
            await dispatcher.close(first, client_gone=False)
            assert dispatcher.in_flight == 0
            again = await dispatcher.open(job, request_id="r3")  # room again
            await dispatcher.close(again, client_gone=True)
        finally:
            await session.close()
            await server.close()

    asyncio.run(scenario())


def test_a_refused_connection_to_a_worker_streaming_to_others_keeps_it_in_routing():
    async def scenario():
        server, session, dispatcher = await _dispatcher_over_a_scripted_worker(max_streams=0)
        try:
            first = await dispatcher.open(InferenceRequest(prompt="x", max_tokens=50), request_id="r1")
            chunks = dispatcher.chunks(first)
            await chunks.__anext__()  # it streams
            for site in list(server.runner.sites):
                await site.stop()  # it takes no new connection (a full backlog, as under a thousand streams)
            with pytest.raises(RbeeError) as refused:
                await dispatcher.open(InferenceRequest(prompt="x", max_tokens=5), request_id="r2")
            state = dispatcher.registry.get("w").state
            async for _ in chunks:  # the first stream goes on to its end
                pass
            await dispatcher.close(first, client_gone=False)
            return refused.value.code, state, first.done
        finally:
            await session.close()
            await server.close()

    code, state, done = asyncio.run(scenario())
    assert code == ErrorCode.WORKER_UNAVAILABLE and state.value != "offline" and done is not None


def test_one_client_may_hold_as_many_connections_as_the_queen_relays_streams_unless_told_otherwise():
    # A gateway in front of the queen is one address for all its users: 1,000 streams from it were 744 x
    # TOO_MANY_CONNECTIONS under the servers' 256 (bench/scale.py).
    assert parse_args([]).listen_limits().max_conns_per_client == 4096 + 256
    assert parse_args(["--max-streams", "2"]).listen_limits().max_conns_per_client == 2 + 256  # and its other calls
    assert parse_args(["--max-conns-per-client", "4"]).listen_limits().max_conns_per_client == 4

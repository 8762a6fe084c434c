"""Retrying a refused connection (rbee.peer.Backoff): the schedule, the queen's calls to peers
(Peers.call) and rbee-keeper's to the queen (rbee.client.while_refused), on real sockets. The server
comes up when the client says it is retrying — no sleeps to guess when."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import pytest
import requests
from aiohttp import web

from rbee.client import QueenClient, refused, while_refused
from rbee.errors import ErrorCode, RbeeError
from rbee.keeper.infer import queen_answers_soon
from rbee.keeper.output import Output
from rbee.peer import Backoff, Peers
from rbee.ports import free_port

QUICK = Backoff(attempts=4, first=0.05, cap=0.2)


def test_the_waits_double_up_to_the_cap_and_are_bounded():
    assert Backoff(attempts=6, first=0.25, cap=1.0).delays() == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert Backoff(attempts=6, first=0.25, cap=1.0).total == 3.75
    assert Backoff(attempts=1).delays() == [] and Backoff(attempts=4).describe() == "3 more times within 1.8 s"


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


class LateServer:
    """An HTTP server on ``port`` that starts only when :meth:`start` is called (by the retrying client)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        if self.server is None:
            self.server = ThreadingHTTPServer(("127.0.0.1", self.port), _Health)
            threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def test_a_refused_connection_is_told_apart_from_other_failures():
    with pytest.raises(requests.ConnectionError) as info:
        requests.get(f"http://127.0.0.1:{free_port()}/health", timeout=2)
    assert refused(info.value)
    assert not refused(requests.ReadTimeout("slow")) and not refused(ValueError("x"))


def test_the_keeper_waits_for_a_queen_that_is_starting_and_says_so_once():
    late = LateServer(free_port())
    err = io.StringIO()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            late.start()  # the queen comes up during the second wait

    try:
        client = QueenClient(f"http://127.0.0.1:{late.port}")
        assert queen_answers_soon(client, Output(io.StringIO(), err), QUICK, sleep) is None
    finally:
        late.close()
    assert sleeps == [0.05, 0.1]
    lines = [line for line in err.getvalue().splitlines() if line]
    assert len(lines) == 1 and "refused the connection" in lines[0] and "3 more times" in lines[0], lines


def test_the_keeper_gives_up_after_the_bound_with_the_last_refusal():
    client = QueenClient(f"http://127.0.0.1:{free_port()}")
    sleeps: list[float] = []
    failure = queen_answers_soon(client, Output(io.StringIO(), io.StringIO()), QUICK, sleeps.append)
    assert failure is not None and refused(failure) and sleeps == QUICK.delays()


def test_a_failure_other_than_a_refusal_is_not_retried():
    calls: list[int] = []

    def call() -> None:
        calls.append(1)
        raise requests.ConnectionError("connection reset mid-answer")

    with pytest.raises(requests.ConnectionError):
        while_refused(call, QUICK, lambda: None, lambda s: None)
    assert calls == [1]


class _StartOnRetryNote(logging.Handler):
    def __init__(self, start) -> None:
        super().__init__()
        self.start, self.notes = start, []

    def emit(self, record: logging.LogRecord) -> None:
        if "refused the connection" in record.getMessage():
            self.notes.append(record.getMessage())
            self.start()


def test_a_peer_call_is_retried_while_refused_and_logged_once():
    async def scenario() -> None:
        port = free_port()
        app = web.Application()

        async def spawn(request: web.Request) -> web.Response:
            return web.json_response({"worker_id": "w1"})

        app.router.add_post("/v1/workers/spawn", spawn)
        runner = web.AppRunner(app)
        await runner.setup()
        loop = asyncio.get_running_loop()
        started: list[asyncio.Task] = []
        handler = _StartOnRetryNote(lambda: started.append(loop.create_task(web.TCPSite(runner, "127.0.0.1",
                                                                                       port).start())))
        logging.getLogger("rbee.peer").addHandler(handler)
        try:
            async with aiohttp.ClientSession() as session:
                answer = await asyncio.wait_for(Peers(session, None).call(
                    "POST", f"http://127.0.0.1:{port}/v1/workers/spawn", json={}, peer="Hive 'h1'",
                    ident={"hive_id": "h1"}, next_step="", retry=Backoff(attempts=6, first=0.1, cap=0.5)), 10)
        finally:
            logging.getLogger("rbee.peer").removeHandler(handler)
            await runner.cleanup()
        assert answer == {"worker_id": "w1"}
        assert len(handler.notes) == 1 and "Hive 'h1'" in handler.notes[0], handler.notes

    asyncio.run(scenario())


def test_a_peer_that_never_comes_up_is_unreachable_after_the_bound_saying_how_often_it_was_tried():
    async def scenario() -> RbeeError:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(RbeeError) as info:
                await Peers(session, None).call("POST", f"http://127.0.0.1:{free_port()}/v1/workers/spawn",
                                                peer="Hive 'h1'", ident={"hive_id": "h1"}, next_step="Check it.",
                                                fallback=ErrorCode.SPAWN_FAILED, retry=QUICK)
        return info.value

    err = asyncio.run(scenario())
    assert err.code == ErrorCode.SPAWN_FAILED and err.details == {"hive_id": "h1", "tries": 4}, err.details
    assert "4 tries" in err.message and err.message.endswith("Check it.")


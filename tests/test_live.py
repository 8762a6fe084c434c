"""The live view (rbee.queen.live) and GET /v2/events: a request's timeline as a real dispatcher reports
it, throughput from the blocks relayed, a subscriber that stops reading dropped without the publisher
ever waiting, and the stream itself on an in-process queen (snapshot first, changes after, key needed,
a real HTTP client that never reads dropped and counted)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from rbee import sse
from rbee.events import Done, Token
from rbee.peer import Peers
from rbee.protocol import InferenceRequest, WorkerRegistration
from rbee.queen import live
from rbee.queen.admission import AdmissionQueue
from rbee.queen.app import create_app
from rbee.queen.dispatch import Dispatcher
from rbee.queen.events_api import LIVE
from rbee.queen.live import LiveHub
from rbee.queen.registry import Registry
from rbee.queen.settings import QueenSettings

KEY = "sk-live-test-key-0123456789"
WIRE = b"".join(map(sse.frame_event, [*(Token(f" t{i}", i) for i in range(5)), Done(5, 12, "length")])) \
    + sse.DONE_FRAME


async def _worker() -> TestServer:
    async def inference(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=sse.SSE_HEADERS)
        await response.prepare(request)
        await response.write(WIRE)
        return response

    app = web.Application()
    app.router.add_post("/v1/inference", inference)
    server = TestServer(app)
    await server.start_server()
    return server


def _frames(sub) -> list[dict]:
    return [json.loads(sse.block_data(f.rstrip(b"\n"))) for f in sub.backlog]


def test_a_relayed_request_is_reported_from_open_to_done_with_its_worker_ttft_and_tokens():
    async def scenario():
        server = await _worker()
        registry = Registry()
        registry.register(WorkerRegistration(worker_id="w1", url=str(server.make_url("")).rstrip("/"),
                                             model_ref="m", slots_total=2))
        queue = AdmissionQueue(registry, 4, 0)
        hub = LiveHub(registry, None, queue)
        sub, snapshot = hub.subscribe()
        assert json.loads(sse.block_data(snapshot.rstrip(b"\n")))["workers"][0]["worker_id"] == "w1"
        async with aiohttp.ClientSession() as session:
            dispatcher = Dispatcher(registry, Peers(session, None), queue, hooks=hub)
            upstream = await dispatcher.open(InferenceRequest(prompt="x"), request_id="r1", api_key="k")
            assert [r.request_id for r in hub.in_flight.values()] == ["r1"]
            hub.flush()  # what the next flush would send: the request's state now, once
            await dispatcher.relay(upstream, _discard)
            hub.flush()
            await dispatcher.close(upstream, client_gone=False)
            hub.flush()
        await server.close()
        return hub, sub

    hub, sub = asyncio.run(scenario())
    states = [e["request"]["state"] for e in _frames(sub) if e["type"] == "request"]
    assert states == ["dispatched", "streaming", "done"]  # queued and dispatched both happen inside open
    (last,) = hub.recent
    assert last.worker_id == "w1" and last.tokens == 5 and last.ttft_ms is not None and last.queued_ms == 0
    assert not hub.in_flight
    point = hub.tick()
    assert point["tokens_per_s"] >= 6  # 5 tokens + the done block, relayed within this tick


def test_request_changes_go_out_together_after_a_short_delay_each_in_its_latest_state():
    async def scenario():
        registry = Registry()
        queue = AdmissionQueue(registry, 4, 0)
        hub = LiveHub(registry, None, queue)
        sub, _ = hub.subscribe()
        async with aiohttp.ClientSession() as session:
            dispatcher = Dispatcher(registry, Peers(session, None), queue, hooks=hub)
            with contextlib.suppress(Exception):  # no workers: opened, then ended as an error at once
                await dispatcher.open(InferenceRequest(prompt="x"), request_id="r1")
            hub.opened("r2", "m", "k")
            assert not sub.backlog  # nothing framed on the requests' own path
            frames = await asyncio.wait_for(sub.next_frames(), 5 * live.REQUEST_DELAY_S + 5)
        return [json.loads(sse.block_data(f.rstrip(b"\n"))) for f in frames]

    events = asyncio.run(scenario())
    assert [(e["type"], e["request"]["request_id"], e["request"]["state"]) for e in events] == [
        ("request", "r1", "error"), ("request", "r2", "queued")]


def test_a_request_refused_before_dispatch_ends_as_an_error_with_its_code():
    async def scenario():
        registry = Registry()
        queue = AdmissionQueue(registry, 4, 0)
        hub = LiveHub(registry, None, queue)
        async with aiohttp.ClientSession() as session:
            dispatcher = Dispatcher(registry, Peers(session, None), queue, hooks=hub)
            try:
                await dispatcher.open(InferenceRequest(prompt="x"), request_id="r1")
            except Exception as exc:  # noqa: BLE001 - what the client would get
                return hub, exc
        raise AssertionError("open succeeded with no workers")

    hub, exc = asyncio.run(scenario())
    (view,) = hub.recent
    assert view.state == "error" and view.error == "NO_WORKERS" == exc.code


async def _discard(data: bytes) -> None:
    return None


def test_a_subscriber_that_stops_reading_is_dropped_and_counted_while_the_others_get_everything():
    dropped = []
    registry = Registry()
    hub = LiveHub(registry, None, AdmissionQueue(registry, 4, 0), limit=3, on_drop=lambda: dropped.append(1))
    slow, _ = hub.subscribe()
    fast, _ = hub.subscribe()
    for i in range(10):
        hub.publish({"type": "test", "i": i})  # a plain call: nothing to await, whoever is slow
        if i < 9:
            fast.backlog.clear()  # the fast one reads as things come
    assert slow.dropped and slow not in hub.subscribers and dropped == [1] and hub.dropped == 1
    assert not fast.dropped and fast in hub.subscribers and _frames(fast) == [{"type": "test", "i": 9}]
    assert asyncio.run(slow.next_frames()) == []  # its stream ends


def test_events_need_the_key_open_with_a_snapshot_then_carry_the_fleet_changes():
    async def scenario():
        app = create_app(QueenSettings(api_keys=[KEY], port=0))
        server = TestServer(app)
        await server.start_server()
        url = str(server.make_url("/v2/events"))
        auth = {"Authorization": f"Bearer {KEY}"}
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(url) as r:
                    assert r.status == 401, await r.text()
                async with session.get(str(server.make_url("/ui/"))) as r:
                    assert r.status == 200 and "<html" in (await r.text()).lower()
                async with session.get(url, headers=auth) as r:
                    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                    seen = []
                    async for data in sse.aiter_data(r.content):
                        event = json.loads(data)
                        seen.append(event["type"])
                        if event["type"] == "snapshot":
                            assert event["workers"] == [] and event["recent"] == []
                            async with session.get(str(server.make_url("/metrics")), headers=auth) as m:
                                assert "rbee_queen_event_subscribers 1.0" in await m.text()
                            reg = {"worker_id": "w9", "url": "http://127.0.0.1:9", "model_ref": "m",
                                   "slots_total": 3}
                            async with session.post(str(server.make_url("/v2/workers/register")), json=reg,
                                                    headers=auth) as rr:
                                assert rr.status == 200, await rr.text()
                        elif event["type"] == "fleet":
                            (w,) = event["workers"]
                            assert (w["worker_id"], w["slots_total"], w["slots_busy"]) == ("w9", 3, 0)
                            return seen
        finally:
            await server.close()

    seen = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert seen[0] == "snapshot" and seen[-1] == "fleet"


def test_a_real_http_subscriber_that_never_reads_is_dropped_while_publishing_never_waits():
    async def scenario():
        app = create_app(QueenSettings(api_keys=[KEY], port=0, events_queue=8))
        server = TestServer(app)
        await server.start_server()
        hub = app[LIVE]
        sock = socket.create_connection((server.host, server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /v2/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
        try:
            deadline = asyncio.get_running_loop().time() + 20
            while not hub.subscribers:
                assert asyncio.get_running_loop().time() < deadline, "never subscribed"
                await asyncio.sleep(0.01)  # poll: the handler runs on this loop
            slowest = 0.0
            blob = "x" * 64 * 1024
            while hub.dropped == 0:
                assert asyncio.get_running_loop().time() < deadline, "the silent subscriber was never dropped"
                started = time.perf_counter()
                hub.publish({"type": "test", "blob": blob})
                slowest = max(slowest, time.perf_counter() - started)
                await asyncio.sleep(0.001)  # let the handler write (and block on the full socket)
            auth = {"Authorization": f"Bearer {KEY}"}
            async with aiohttp.ClientSession() as session, session.get(str(server.make_url("/metrics")),
                                                                       headers=auth) as m:
                text = await m.text()
            return hub, slowest, text
        finally:
            sock.close()
            await server.close()

    hub, slowest, metrics = asyncio.run(scenario())
    assert hub.dropped == 1 and not hub.subscribers
    assert "rbee_queen_event_subscribers_dropped_total 1.0" in metrics
    assert slowest < 0.05, f"one publish took {slowest * 1000:.1f} ms"

"""A whole (non-streamed) answer through an in-process queen: a worker that answers with something
other than a JSON object is the worker's fault, told in the envelope as WORKER_UNAVAILABLE (502) with
the worker named, never a 500; the slot goes back."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from rbee.prefix import REPORT_HEADER, prefix_hashes, to_wire
from rbee.protocol import InferenceRequest, WorkerRegistration
from rbee.queen.app import create_app
from rbee.queen.appkeys import DISPATCHER, REGISTRY
from rbee.queen.settings import QueenSettings


async def _worker(body: bytes, content_type: str, seen: list | None = None) -> TestServer:
    async def inference(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append(dict(request.headers))
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_post("/v1/inference", inference)
    server = TestServer(app)
    await server.start_server()
    return server


def _ask(body: bytes, content_type: str, seen: list | None = None,
         prompt: str = "x") -> tuple[int, dict, int, int]:
    """(status, body, the worker's free slots after, how deep the queen now thinks it holds ``prompt``)."""
    async def scenario():
        worker = await _worker(body, content_type, seen)
        queen = TestServer(create_app(QueenSettings(port=0)))
        await queen.start_server()
        try:
            registry = queen.app[REGISTRY]
            registry.register(WorkerRegistration(worker_id="w1", url=str(worker.make_url("")).rstrip("/"),
                                                 model_ref="m", slots_total=1))
            async with aiohttp.ClientSession() as session, session.post(
                    str(queen.make_url("/v1/inference")), json={"prompt": prompt, "stream": False}) as r:
                depth = queen.app[DISPATCHER].prefixes.depth("w1", prefix_hashes(InferenceRequest(prompt=prompt)))
                return r.status, await r.json(), registry.get("w1").slots_available, depth
        finally:
            await queen.close()
            await worker.close()

    return asyncio.run(scenario())


def test_an_answer_in_sse_is_the_workers_fault_in_the_envelope():
    status, body, free, _ = _ask(b'data: {"t":"x","i":0}\n\n', "text/event-stream")
    assert status == 502 and body["error"]["code"] == "WORKER_UNAVAILABLE", body
    assert body["error"]["details"]["worker_id"] == "w1" and "workers health" in body["error"]["message"]
    assert free == 1


def test_json_that_is_not_an_object_is_refused_alike():
    status, body, free, _ = _ask(b"[1, 2]", "application/json")
    assert status == 502 and body["error"]["code"] == "WORKER_UNAVAILABLE" and free == 1


def test_a_json_object_comes_back_with_the_queens_timeline():
    status, body, free, _ = _ask(b'{"text": "hi", "tokens": 1}', "application/json")
    assert status == 200 and body["text"] == "hi" and body["worker_id"] == "w1" and "queued_ms" in body and free == 1


def test_a_workers_report_of_its_cache_is_learnt_and_kept_from_the_client():
    """The queen asks for the report, keeps it (a prompt the worker no longer holds stops counting)
    and answers without it."""
    held = to_wire(prefix_hashes(InferenceRequest(prompt="something else")))
    seen: list = []
    answer = f'{{"text": "hi", "cache_held": ["{held}"], "cache_version": 3}}'.encode()
    status, body, free, depth = _ask(answer, "application/json", seen, prompt="x")
    assert status == 200 and body["text"] == "hi" and free == 1
    assert "cache_held" not in body and "cache_version" not in body, body
    assert seen[0].get(REPORT_HEADER) == "1"
    assert depth == 0  # sent "x", but the worker says it holds only "something else"

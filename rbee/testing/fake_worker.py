"""A scripted stand-in worker, for what a real model can't do on cue: stall, die mid-stream, or answer
hundreds of requests at once cheaply. Scenarios using it sit beside the same scenarios on real workers.

It speaks the worker's wire contract (health, ready, SSE inference, cancel) and honours its slots.

    python -m rbee.testing.fake_worker --port P [--slots N] [--interval 0.01]
        [--stall-after K] [--die-after K] [--slow-health S]

``--slow-health S``: while any request runs, ``/v1/health`` answers only after S seconds (a busy worker
whose health probe is slow, as a real one's can be when its threads hold both cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

from aiohttp import web

from rbee.errors import ErrorCode, RbeeError
from rbee.events import Done, Token
from rbee.protocol import InferenceRequest
from rbee.sse import DONE_FRAME, SSE_HEADERS, frame_event
from rbee.web import json_response, make_app, read_model

SCRIPT = web.AppKey("script", argparse.Namespace)
RUNNING = web.AppKey("running", dict)  # request id -> asyncio.Event set to cancel it
FREED = web.AppKey("freed", dict)  # request id -> asyncio.Event set once its slot is free


async def health(request: web.Request) -> web.Response:
    slow = getattr(request.app[SCRIPT], "slow_health", 0.0)
    if slow and request.app[RUNNING]:
        await asyncio.sleep(slow)  # the scripted slow answer of a busy worker
    full = len(request.app[RUNNING]) >= request.app[SCRIPT].slots
    return json_response({"status": "ok", "state": "busy" if full else "idle"})  # as the real worker


async def ready(request: web.Request) -> web.Response:
    total = request.app[SCRIPT].slots
    free = total - len(request.app[RUNNING])
    return json_response({"ready": True, "state": "idle" if free else "busy", "model_loaded": True,
                          "slots_total": total, "slots_available": free})


async def inference(request: web.Request) -> web.StreamResponse:
    script, running = request.app[SCRIPT], request.app[RUNNING]
    job = await read_model(request, InferenceRequest)
    rid = request.headers.get("X-Request-Id", "anon")
    if len(running) >= script.slots:
        raise RbeeError(ErrorCode.ALL_SLOTS_BUSY, "All slots busy.",
                        {"slots_total": script.slots, "slots_busy": len(running)})
    cancelled = asyncio.Event()
    running[rid] = cancelled
    freed = asyncio.Event()  # as the real worker: the slot is free before the done event goes out

    def free() -> None:
        running.pop(rid, None)
        freed.set()

    request.app[FREED][rid] = freed
    response = web.StreamResponse(headers={**SSE_HEADERS, "X-Request-Id": rid})
    try:
        await response.prepare(request)
        for i in range(job.max_tokens):
            if cancelled.is_set():
                free()
                await response.write(frame_event(Done(i, 0, "cancelled")))
                break
            if script.die_after is not None and i == script.die_after:
                os.kill(os.getpid(), signal.SIGKILL)  # a crash mid-stream, as abrupt as it gets
            if script.stall_after is not None and i == script.stall_after:
                await cancelled.wait()  # hang: send nothing more until cancelled
                continue
            await response.write(frame_event(Token(f" t{i}", i)))
            if script.interval:
                await asyncio.sleep(script.interval)  # the scripted token rate
        else:
            free()
            await response.write(frame_event(Done(job.max_tokens, 0, "length")))
        await response.write(DONE_FRAME)
    except ConnectionResetError:
        pass
    finally:
        free()
        request.app[FREED].pop(rid, None)
    return response


async def cancel(request: web.Request) -> web.Response:
    """As the real worker: 204 once the request's slot is free (bounded), idempotent."""
    rid = request.match_info["request_id"]
    event, freed = request.app[RUNNING].get(rid), request.app[FREED].get(rid)
    if event is not None:
        event.set()
    if freed is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(freed.wait(), 5)
    return web.Response(status=204)


def create_app(script: argparse.Namespace) -> web.Application:
    app = make_app()
    app[SCRIPT] = script
    app[RUNNING] = {}
    app[FREED] = {}
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/ready", ready)
    app.router.add_post("/v1/inference", inference)
    app.router.add_delete("/v1/inference/{request_id}", cancel)
    return app


def main() -> None:
    p = argparse.ArgumentParser(prog="fake-worker")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--stall-after", type=int, default=None)
    p.add_argument("--die-after", type=int, default=None)
    p.add_argument("--slow-health", type=float, default=0.0, help="seconds /v1/health takes while busy")
    script = p.parse_args()
    web.run_app(create_app(script), host="127.0.0.1", port=script.port, print=None)


if __name__ == "__main__":
    main()

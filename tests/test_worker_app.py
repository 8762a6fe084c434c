"""The worker's HTTP app in process: loading as /v1/ready and the progress stream tell it, failure to
load, and cancellation of unknown ids. The model load is held back here by a stand-in, so the
``loading`` state can be watched step by step (a real load of the default model takes 0.3 s)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from rbee import sse
from rbee.models import default_model_path
from rbee.worker import app as worker_app
from rbee.worker.app import create_app
from rbee.worker.engine import Engine, EngineConfig
from rbee.worker.settings import WorkerSettings


def _settings() -> WorkerSettings:
    return WorkerSettings(worker_id="w-test", model_ref="test", port=0)


async def _sse(client: TestClient, path: str) -> list[Any]:
    async with client.get(path) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        return [d if d == sse.DONE else sse.parse(d) async for d in sse.aiter_data(r.content)]


@pytest.fixture
def exits(monkeypatch) -> list[str]:
    """The app asks for its own graceful exit (a SIGTERM to itself): record it instead."""
    calls: list[str] = []
    monkeypatch.setattr(worker_app, "exit_gracefully", lambda: calls.append("exit"))
    return calls


def test_loading_is_reported_until_the_model_is_ready(monkeypatch, exits):
    release = threading.Event()
    real_load = Engine.load

    def held_load(self: Engine, on_progress: Any = None) -> None:
        for fraction in (0.25, 0.5):
            on_progress(fraction)
        assert release.wait(30)
        real_load(self, on_progress)

    monkeypatch.setattr(Engine, "load", held_load)

    async def scenario() -> None:
        app = create_app(_settings(), EngineConfig(model_path=default_model_path(), slots=2, ctx_size=256))
        async with TestClient(TestServer(app)) as client:
            follower = asyncio.ensure_future(_sse(client, "/v1/loading/progress"))
            for _ in range(200):
                ready = await (await client.get("/v1/ready")).json()
                if ready.get("progress_url") and app[worker_app.LIFECYCLE].progress == 0.5:
                    break
                await asyncio.sleep(0.01)  # poll interval while the stand-in loader reports
            assert ready == {"ready": False, "state": "loading", "model_loaded": False,
                             "progress_url": "/v1/loading/progress", "slots_total": 2, "slots_available": 2}
            r = await client.post("/v1/inference", json={"prompt": "hi", "max_tokens": 2})
            assert r.status == 503 and (await r.json())["error"]["code"] == "MODEL_LOADING"
            release.set()
            events = await asyncio.wait_for(follower, 30)
            assert events[-2:] == [{"stage": "ready", "progress": 1.0}, "[DONE]"]
            progress = [e["progress"] for e in events[:-1]]
            assert progress == sorted(progress) and progress[0] < 1.0
            ready = await (await client.get("/v1/ready")).json()
            assert ready == {"ready": True, "state": "idle", "model_loaded": True,
                             "slots_total": 2, "slots_available": 2}
        assert exits == []

    asyncio.run(scenario())


def test_a_file_that_is_not_a_model_ends_the_progress_stream_with_an_error(tmp_path: Path, exits):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file\n" * 64)

    async def scenario() -> None:
        app = create_app(_settings(), EngineConfig(model_path=bad))
        async with TestClient(TestServer(app)) as client:
            events = await _sse(client, "/v1/loading/progress")
            assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "INTERNAL"
            assert "Could not load the model" in events[-2]["error"]["message"]
            ready = await (await client.get("/v1/ready")).json()
            assert (ready["ready"], ready["state"], ready["model_loaded"]) == (False, "offline", False)
            r = await client.post("/v1/inference", json={"prompt": "hi", "max_tokens": 2})
            assert r.status == 500
        assert exits == ["exit"] and app[worker_app.LIFECYCLE].error

    asyncio.run(scenario())


def test_cancelling_an_unknown_request_is_answered_204(exits):
    async def scenario() -> None:
        app = create_app(_settings(), EngineConfig(model_path=default_model_path(), ctx_size=256))
        async with TestClient(TestServer(app)) as client:
            await asyncio.wait_for(_sse(client, "/v1/loading/progress"), 30)
            for _ in range(2):
                assert (await client.delete("/v1/inference/never-seen")).status == 204

    asyncio.run(scenario())

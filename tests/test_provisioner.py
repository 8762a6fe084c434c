"""Model downloads against a real local HTTP server that stands in for the Hugging Face hub and injects
faults (dropped connection, stall, 404, 403, wrong checksum, 5xx), plus the hive's model routes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from rbee import models, sse
from rbee.errors import ErrorCode, RbeeError
from rbee.hive.catalog import Catalog
from rbee.hive.models_api import setup_models
from rbee.hive.provisioner import Progress, Provisioner, parse_ref
from rbee.testing.tiny_gguf import make_tiny_gguf
from rbee.web import make_app

T = TypeVar("T")
REPO_FILE = "/org/repo/resolve/main/tiny.gguf"
REF = "hf:org/repo:tiny.gguf"


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    """Every test is bounded: a hang fails the test instead of the run."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


# ---------------------------------------------------------------- the stand-in hub


@dataclass
class Served:
    data: bytes
    faults: list[str] = field(default_factory=list)  # one per GET, in order: "drop", "stall"
    status: int | None = None  # answer every GET with this status instead
    etag: str | None = None  # X-Linked-Etag to announce (default: the real sha256)
    ignore_range: bool = False
    token: str | None = None  # when set, GETs without "Bearer <token>" get 403
    fake_length: int | None = None  # announce this Content-Length and send nothing


class Hub:
    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.gets: list[tuple[str, dict[str, str]]] = []
        self.release = asyncio.Event()  # ends stalled answers at teardown
        self.app = web.Application()
        self.app.router.add_get("/api/models/{org}/{repo}", self.repo_info)
        self.app.router.add_get("/{tail:.*}", self.serve)

    def body_gets(self, path: str = REPO_FILE) -> list[dict[str, str]]:
        return [h for p, h in self.gets if p == path]

    async def repo_info(self, request: web.Request) -> web.Response:
        prefix = f"/{request.match_info['org']}/{request.match_info['repo']}/resolve/main/"
        names = [p.removeprefix(prefix) for p in self.files if p.startswith(prefix)]
        return web.json_response({"siblings": [{"rfilename": n} for n in [*names, "README.md"]]})

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.gets.append((request.path, dict(request.headers)))
        spec = self.files.get(request.path)
        if spec is None:
            return web.Response(status=404, text="Entry not found")
        fault = spec.faults.pop(0) if spec.faults else None
        if spec.status is not None:
            return web.Response(status=spec.status)
        if spec.token and request.headers.get("Authorization") != f"Bearer {spec.token}":
            return web.Response(status=403, text="gated repo")
        data, start, status = spec.data, 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
        headers = {"X-Linked-Etag": f'"{spec.etag or hashlib.sha256(data).hexdigest()}"'}
        if match and not spec.ignore_range:
            start, status = int(match.group(1)), 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = spec.fake_length or len(data) - start
        await resp.prepare(request)
        if spec.fake_length:
            return resp
        if fault in ("drop", "stall"):
            await resp.write(data[start:int(len(data) * 0.4)])
            if fault == "drop":
                assert request.transport is not None
                request.transport.close()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), 20)
            return resp
        await resp.write(data[start:])
        await resp.write_eof()
        return resp


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
def tiny(tmp_path: Path) -> bytes:
    return make_tiny_gguf(tmp_path / "src" / "tiny.gguf", size_kb=64).read_bytes()


Scenario = Callable[[Hub, Provisioner], Awaitable[None]]


def with_hub(tmp_path: Path, files: dict[str, Served], scenario: Scenario, **options: Any) -> Hub:
    """Run ``scenario`` against a fresh catalog, a provisioner and a hub serving ``files``."""
    async def main() -> Hub:
        hub = Hub()
        hub.files.update(files)
        async with serving(hub.app) as base_url:
            catalog = Catalog(tmp_path / "models")
            catalog.open()
            settings = {"attempts": 6, "base_delay": 0.01, "stall_timeout": 5.0, "hf_token": "", **options}
            provisioner = Provisioner(catalog, base_url, **settings)
            await provisioner.start()
            try:
                await scenario(hub, provisioner)
            finally:
                hub.release.set()
                await provisioner.close()
        return hub
    return run(main())


async def collect(progress: Progress) -> list[dict[str, Any]]:
    return [event async for event in progress.subscribe()]


def partials(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "models").rglob("*.partial"))


# ---------------------------------------------------------------- downloads


def test_download_verifies_records_and_reports_progress(tmp_path: Path, tiny: bytes) -> None:
    async def scenario(hub: Hub, prov: Provisioner) -> None:
        download = prov.download(REF)
        events, entry = await asyncio.gather(collect(download.progress), download.task)
        assert entry.local_path.read_bytes() == tiny
        assert entry.local_path == tmp_path / "models" / "hf" / "org" / "repo" / "tiny.gguf"
        assert (entry.provider, entry.quantization, entry.architecture) == ("hf", "Q4_1", "llama")
        assert entry.sha256 == hashlib.sha256(tiny).hexdigest()
        assert prov.catalog.get(REF) == entry
        assert events[-1] == {"stage": "complete", "local_path": str(entry.local_path)}
        downloading = [e for e in events if e["stage"] == "downloading"]
        assert downloading and downloading[-1]["bytes_downloaded"] == len(tiny)
        assert downloading[-1]["bytes_total"] == len(tiny) and downloading[-1]["speed_mbps"] >= 0
        assert await prov.ensure_local(REF) == entry  # now local: no second GET

    hub = with_hub(tmp_path, {REPO_FILE: Served(tiny, token="s3cret")}, scenario, hf_token="s3cret")
    assert len(hub.body_gets()) == 1
    assert hub.body_gets()[0]["Authorization"] == "Bearer s3cret"
    assert partials(tmp_path) == []


def test_a_dropped_connection_resumes_with_range(tmp_path: Path, tiny: bytes) -> None:
    async def scenario(hub: Hub, prov: Provisioner) -> None:
        entry = await prov.ensure_local(REF)
        assert entry.local_path.read_bytes() == tiny
        assert entry.sha256 == hashlib.sha256(tiny).hexdigest()

    hub = with_hub(tmp_path, {REPO_FILE: Served(tiny, faults=["drop"])}, scenario)
    gets = hub.body_gets()
    assert len(gets) == 2
    assert "Range" not in gets[0]
    assert gets[1]["Range"] == f"bytes={int(len(tiny) * 0.4)}-"


def test_a_server_that_ignores_range_restarts_cleanly(tmp_path: Path, tiny: bytes) -> None:
    async def scenario(hub: Hub, prov: Provisioner) -> None:
        entry = await prov.ensure_local(REF)
        assert entry.local_path.read_bytes() == tiny

    hub = with_hub(tmp_path, {REPO_FILE: Served(tiny, faults=["drop"], ignore_range=True)}, scenario)
    assert len(hub.body_gets()) == 2


def test_a_partial_file_from_an_earlier_run_is_resumed(tmp_path: Path, tiny: bytes) -> None:
    dest = tmp_path / "models" / "hf" / "org" / "repo" / "tiny.gguf"
    dest.parent.mkdir(parents=True)
    dest.with_name("tiny.gguf.partial").write_bytes(tiny[:1000])

    async def scenario(hub: Hub, prov: Provisioner) -> None:
        entry = await prov.ensure_local(REF)
        assert entry.sha256 == hashlib.sha256(tiny).hexdigest()

    hub = with_hub(tmp_path, {REPO_FILE: Served(tiny)}, scenario)
    assert [g.get("Range") for g in hub.body_gets()] == ["bytes=1000-"]


def test_a_stalled_download_times_out_and_resumes(tmp_path: Path, tiny: bytes) -> None:
    async def scenario(hub: Hub, prov: Provisioner) -> None:
        entry = await prov.ensure_local(REF)
        assert entry.local_path.read_bytes() == tiny

    hub = with_hub(tmp_path, {REPO_FILE: Served(tiny, faults=["stall"])}, scenario, stall_timeout=0.5)
    gets = hub.body_gets()
    assert len(gets) == 2 and gets[1]["Range"] == f"bytes={int(len(tiny) * 0.4)}-"


def expect_error(tmp_path: Path, served: Served, code: ErrorCode, text: str, **options: Any) -> Hub:
    async def scenario(hub: Hub, prov: Provisioner) -> None:
        download = prov.download(REF)
        events = await collect(download.progress)
        with pytest.raises(RbeeError) as caught:
            await download.task
        assert caught.value.code == code and text in caught.value.message
        assert events[-1] == {"stage": "error", **caught.value.envelope()}
        assert prov.last_outcome(REF) == events[-1]
        assert prov.catalog.get(REF) is None

    hub = with_hub(tmp_path, {REPO_FILE: served}, scenario, **options)
    assert partials(tmp_path) == [] or code == ErrorCode.DOWNLOAD_FAILED
    assert not (tmp_path / "models" / "hf" / "org" / "repo" / "tiny.gguf").exists()
    return hub


def test_404_is_model_not_found_without_retries(tmp_path: Path, tiny: bytes) -> None:
    hub = expect_error(tmp_path, Served(tiny, status=404), ErrorCode.MODEL_NOT_FOUND, "does not exist")
    assert len(hub.body_gets()) == 1


def test_403_asks_for_hf_token(tmp_path: Path, tiny: bytes) -> None:
    hub = expect_error(tmp_path, Served(tiny, token="needed"), ErrorCode.MODEL_ACCESS_DENIED, "HF_TOKEN")
    assert len(hub.body_gets()) == 1 and "Authorization" not in hub.body_gets()[0]


def test_a_wrong_checksum_fails_and_removes_the_partial(tmp_path: Path, tiny: bytes) -> None:
    expect_error(tmp_path, Served(tiny, etag="0" * 64), ErrorCode.DOWNLOAD_FAILED, "Checksum mismatch")
    assert partials(tmp_path) == []


def test_server_errors_are_retried_then_reported(tmp_path: Path, tiny: bytes) -> None:
    hub = expect_error(tmp_path, Served(tiny, status=503), ErrorCode.DOWNLOAD_FAILED, "after 3 attempts", attempts=3)
    assert len(hub.body_gets()) == 3


def test_not_enough_disk_space_is_a_clear_error(tmp_path: Path, tiny: bytes) -> None:
    expect_error(tmp_path, Served(tiny, fake_length=2**55), ErrorCode.INSUFFICIENT_STORAGE, "Not enough disk space")


def test_a_file_that_is_not_gguf_is_refused_and_removed(tmp_path: Path) -> None:
    expect_error(tmp_path, Served(b"<html>login</html>" * 50), ErrorCode.INVALID_REQUEST, "not a GGUF")


def test_concurrent_requests_share_one_download(tmp_path: Path, tiny: bytes) -> None:
    async def scenario(hub: Hub, prov: Provisioner) -> None:
        first, second = prov.download(REF), prov.download(REF)
        assert first is second
        events_a, events_b, entry_a, entry_b = await asyncio.gather(
            collect(first.progress), collect(second.progress), prov.ensure_local(REF), prov.ensure_local(REF))
        assert entry_a == entry_b and entry_a.local_path.read_bytes() == tiny
        assert events_a[-1]["stage"] == events_b[-1]["stage"] == "complete"

    hub = with_hub(tmp_path, {REPO_FILE: Served(tiny, faults=["drop"])}, scenario)
    assert len(hub.body_gets()) == 2  # one download: its first try and its resume, nothing more


def test_two_refs_for_one_file_download_it_once(tmp_path: Path, tiny: bytes) -> None:
    async def scenario(hub: Hub, prov: Provisioner) -> None:
        by_repo, by_file = await asyncio.gather(prov.ensure_local("hf:org/repo"), prov.ensure_local(REF))
        assert by_repo.local_path == by_file.local_path and by_file.local_path.read_bytes() == tiny
        assert by_repo.sha256 == by_file.sha256 == hashlib.sha256(tiny).hexdigest()
        assert {e.reference for e in prov.catalog.list(provider="hf")} == {"hf:org/repo", REF}

    hub = with_hub(tmp_path, {REPO_FILE: Served(tiny, faults=["drop"])}, scenario)
    assert len(hub.body_gets()) == 2  # one download (first try + resume); the other ref found the file


def test_hf_ref_without_a_file_picks_the_single_gguf(tmp_path: Path, tiny: bytes) -> None:
    async def scenario(hub: Hub, prov: Provisioner) -> None:
        entry = await prov.ensure_local("hf:org/repo")
        assert entry.reference == "hf:org/repo" and entry.local_path.name == "tiny.gguf"

    with_hub(tmp_path, {REPO_FILE: Served(tiny)}, scenario)


def test_local_refs_need_no_download(tmp_path: Path) -> None:
    local = make_tiny_gguf(tmp_path / "mine" / "local.gguf")

    async def scenario(hub: Hub, prov: Provisioner) -> None:
        entry = await prov.ensure_local(f"file://{local}")
        assert (entry.provider, entry.local_path) == ("file", local.resolve())
        builtin = await prov.ensure_local(models.DEFAULT_MODEL_REF)
        assert builtin.provider == "builtin" and builtin.local_path == models.default_model_path()
        with pytest.raises(RbeeError) as caught:
            await prov.ensure_local(f"file://{tmp_path}/missing.gguf")
        assert caught.value.code == ErrorCode.MODEL_NOT_FOUND

    hub = with_hub(tmp_path, {}, scenario)
    assert hub.gets == []
    assert local.exists()


@pytest.mark.parametrize("ref", [
    "hf:org", "hf:org/repo:../../etc/x.gguf", "hf:org/repo:model.bin", "https://example.com/model.bin",
    "https:///x.gguf", "file://relative/x.gguf", "llama3", "/etc/passwd",
])
def test_bad_refs_are_invalid_requests(ref: str, tmp_path: Path) -> None:
    with pytest.raises(RbeeError) as caught:
        parse_ref(ref, "https://huggingface.co", tmp_path)
    assert caught.value.code == ErrorCode.INVALID_REQUEST


def test_url_refs_land_in_distinct_folders(tmp_path: Path) -> None:
    a = parse_ref("https://a.example/x/m.gguf", "https://huggingface.co", tmp_path)
    b = parse_ref("https://a.example/y/m.gguf", "https://huggingface.co", tmp_path)
    assert a.provider == "https" and a.dest != b.dest and a.dest is not None and a.dest.is_relative_to(tmp_path)


# ---------------------------------------------------------------- the hive's routes


def test_models_routes_download_progress_and_list(tmp_path: Path, tiny: bytes) -> None:
    async def main() -> None:
        hub = Hub()
        hub.files[REPO_FILE] = Served(tiny, faults=["drop"])
        async with serving(hub.app) as hub_url:
            hive = make_app()
            setup_models(hive, tmp_path / "models", hub_url, base_delay=0.01, hf_token="")
            async with serving(hive) as url, aiohttp.ClientSession() as http:
                async with http.post(f"{url}/v1/models/download", json={"model_ref": REF}) as r:
                    assert r.status == 202
                    started = await r.json()
                assert started["model_ref"] == REF and started["download_id"]
                async with http.get(url + started["progress_url"]) as r:
                    assert r.headers["Content-Type"] == "text/event-stream"
                    events = [sse.parse(d) async for d in sse.aiter_data(r.content)]
                assert events[-1] is None  # [DONE]
                assert events[-2] == {"stage": "complete", "local_path": str(
                    tmp_path / "models" / "hf" / "org" / "repo" / "tiny.gguf")}

                async with http.post(f"{url}/v1/models/download", json={"model_ref": REF}) as r:
                    assert r.status == 200 and (await r.json())["local_path"] == events[-2]["local_path"]
                async with http.get(url + started["progress_url"]) as r:  # finished: one final event
                    assert [sse.parse(d) async for d in sse.aiter_data(r.content)] == events[-2:]
                async with http.get(f"{url}/v1/models?provider=hf") as r:
                    listed = (await r.json())["models"]
                assert [(m["model_ref"], m["quantization"]) for m in listed] == [(REF, "Q4_1")]
                async with http.get(f"{url}/v1/models") as r:
                    assert {m["provider"] for m in (await r.json())["models"]} == {"builtin", "hf"}

                for body in ({"model_ref": "hf:org/repo:../x.gguf"}, {"model_ref": REF, "extra": 1}, {}):
                    async with http.post(f"{url}/v1/models/download", data=json.dumps(body)) as r:
                        assert r.status == 400 and (await r.json())["error"]["code"] == "INVALID_REQUEST"
                async with http.get(f"{url}/v1/models?provider=nope") as r:
                    assert r.status == 400
                async with http.get(f"{url}/v1/models/download/progress?model_ref=hf:a/b:c.gguf") as r:
                    assert r.status == 404 and (await r.json())["error"]["code"] == "MODEL_NOT_FOUND"
            assert len(hub.body_gets()) == 2  # the first try and its resume
    run(main())


def test_shutdown_ends_open_progress_streams(tmp_path: Path, tiny: bytes) -> None:
    async def main() -> None:
        hub = Hub()
        hub.files[REPO_FILE] = Served(tiny, faults=["stall"])
        async with serving(hub.app) as hub_url:
            hive = make_app()
            setup_models(hive, tmp_path / "models", hub_url, stall_timeout=20.0, hf_token="")
            runner = web.AppRunner(hive, shutdown_timeout=10.0)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            url = "http://{}:{}".format(*runner.addresses[0][:2])
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.post(f"{url}/v1/models/download", json={"model_ref": REF}) as r:
                        progress = url + (await r.json())["progress_url"]
                    async with http.get(progress) as r:
                        events = sse.aiter_data(r.content)
                        first = sse.parse(await anext(events))
                        assert first is not None and first["stage"] == "downloading"  # stalled at 40%
                        loop = asyncio.get_running_loop()
                        began = loop.time()
                        stopping = asyncio.ensure_future(runner.cleanup())
                        rest = [sse.parse(d) async for d in events]
                        await stopping
                        assert loop.time() - began < 5.0  # not the 10 s shutdown timeout
            finally:
                hub.release.set()
                await runner.cleanup()
        assert rest[-1] is None and rest[-2] is not None
        assert rest[-2]["stage"] == "error" and "cancelled" in rest[-2]["error"]["message"]
        assert partials(tmp_path)  # kept, so the next start resumes
    run(main())

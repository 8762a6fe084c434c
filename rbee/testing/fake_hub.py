"""A stand-in for the Hugging Face hub, as a process: serves local files under hub URLs, with faults.

    python -m rbee.testing.fake_hub --port P --file org/repo/x.gguf=/local/x.gguf [--fault org/repo/x.gguf=drop]

Files answer at ``/{org}/{repo}/resolve/main/{file}`` with Range support and the sha256 in
``X-Linked-Etag``, as the hub does; ``/api/models/{org}/{repo}`` lists a repo's files. Faults, by
file: ``drop`` (the first GET closes the connection at 40 %), ``gated`` (403 without the token
``--token``). ``GET /_requests`` tells the test which GETs arrived and with what Range.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
from pathlib import Path

from aiohttp import web

_CHUNK = 1 << 20
SLOW_LINK_S = 2.0  # fault "slow": this long between the headers and the body, as a slow link


class FakeHub:
    def __init__(self, files: dict[str, Path], faults: dict[str, str], token: str | None) -> None:
        self.files = files  # "org/repo/x.gguf" -> local file
        self.faults = faults
        self.token = token
        self.requests: list[dict[str, str | None]] = []
        self._sha: dict[str, str] = {}

    def sha256(self, name: str) -> str:
        if name not in self._sha:
            digest = hashlib.sha256()
            with self.files[name].open("rb") as f:
                while block := f.read(_CHUNK):
                    digest.update(block)
            self._sha[name] = digest.hexdigest()
        return self._sha[name]

    async def repo_info(self, request: web.Request) -> web.Response:
        prefix = f"{request.match_info['org']}/{request.match_info['repo']}/"
        names = [n.removeprefix(prefix) for n in self.files if n.startswith(prefix)]
        return web.json_response({"siblings": [{"rfilename": n} for n in [*names, "README.md"]]})

    async def log(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests})

    async def serve(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        name = f"{m['org']}/{m['repo']}/{m['file']}"
        self.requests.append({"file": name, "range": request.headers.get("Range")})
        path = self.files.get(name)
        if path is None:
            return web.Response(status=404, text="Entry not found")
        fault = self.faults.get(name)
        if fault == "gated" and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=403, text="Access to this model is restricted. You must be authenticated.")
        size = path.stat().st_size
        start, status = 0, 200
        headers = {"X-Linked-Etag": f'"{self.sha256(name)}"', "Accept-Ranges": "bytes"}
        match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
        if match:
            start, status = int(match.group(1)), 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = size - start
        await resp.prepare(request)
        stop = size
        if fault == "slow":
            await asyncio.sleep(SLOW_LINK_S)
        if fault == "drop":
            self.faults.pop(name)  # once
            stop = int(size * 0.4)
        with path.open("rb") as f:
            f.seek(start)
            left = stop - start
            while left > 0 and (block := f.read(min(_CHUNK, left))):
                await resp.write(block)
                left -= len(block)
        if stop < size:
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-file
            return resp
        await resp.write_eof()
        return resp


def create_app(hub: FakeHub) -> web.Application:
    app = web.Application()
    app.router.add_get("/_requests", hub.log)
    app.router.add_get("/health", lambda _: web.json_response({"status": "ok"}))
    app.router.add_get("/api/models/{org}/{repo}", hub.repo_info)
    app.router.add_get("/{org}/{repo}/resolve/main/{file:.+}", hub.serve)
    return app


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{flag} takes NAME=VALUE (got {item!r})")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="fake_hub", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--file", action="append", default=[], help="org/repo/file.gguf=/local/path")
    p.add_argument("--fault", action="append", default=[], help="org/repo/file.gguf=drop|gated|slow")
    p.add_argument("--token", default=None, help="the token a gated file needs")
    a = p.parse_args(argv)
    files = {k: Path(v) for k, v in _pairs(a.file, "--file").items()}
    hub = FakeHub(files, _pairs(a.fault, "--fault"), a.token)
    web.run_app(create_app(hub), host="127.0.0.1", port=a.port, print=None)


if __name__ == "__main__":
    main()

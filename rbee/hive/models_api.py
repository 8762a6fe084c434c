"""rbee-hive's model routes: list the catalog, start a download, follow its progress as SSE.

Thin handlers over :mod:`rbee.hive.catalog` and :mod:`rbee.hive.provisioner`; the hive's app
factory calls :func:`setup_models`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from aiohttp import web
from pydantic import Field, field_validator

from rbee.errors import ErrorCode, RbeeError
from rbee.hive.catalog import PROVIDERS, Catalog
from rbee.hive.provisioner import REF_PATTERN, Provisioner, parse_ref
from rbee.protocol import RequestModel
from rbee.sse import SSE_HEADERS, SSEWriter
from rbee.web import json_response, read_model

log = logging.getLogger(__name__)

CATALOG = web.AppKey("catalog", Catalog)
PROVISIONER = web.AppKey("provisioner", Provisioner)
PROGRESS_PATH = "/v1/models/download/progress"

routes = web.RouteTableDef()


class DownloadRequest(RequestModel):
    model_ref: Annotated[str, Field(min_length=1, max_length=1024, pattern=REF_PATTERN,
                                    description="hf:org/repo[:file.gguf], https://.../x.gguf, file:///abs.gguf")]

    @field_validator("model_ref")
    @classmethod
    def _known_form(cls, value: str) -> str:
        try:  # the base URL and folder do not change whether a ref is well formed
            parse_ref(value, "https://huggingface.co", Path("/"))
        except RbeeError as err:
            raise ValueError(err.message) from None
        return value


def progress_url(model_ref: str) -> str:
    return f"{PROGRESS_PATH}?model_ref={quote(model_ref, safe='')}"


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    provider = request.query.get("provider") or None
    if provider is not None and provider not in PROVIDERS:
        raise RbeeError(ErrorCode.INVALID_REQUEST, f"Unknown provider '{provider}'. Use one of: "
                        f"{', '.join(PROVIDERS)}.", {"field": "provider"})
    entries = await asyncio.to_thread(request.app[CATALOG].list, provider)
    return json_response({"models": [e.to_dict() for e in entries]})


@routes.post("/v1/models/download")
async def download(request: web.Request) -> web.Response:
    body = await read_model(request, DownloadRequest)
    ref = body.model_ref
    entry = await asyncio.to_thread(request.app[CATALOG].get, ref)
    if entry is not None:
        return json_response({"model_ref": ref, "status": "present", "local_path": str(entry.local_path),
                              "model": entry.to_dict()})
    started = request.app[PROVISIONER].download(ref)
    return json_response({"model_ref": ref, "status": "downloading", "download_id": started.download_id,
                          "progress_url": progress_url(ref)}, status=202)


@routes.get(PROGRESS_PATH)
async def download_progress(request: web.Request) -> web.StreamResponse:
    ref = request.query.get("model_ref")
    if not ref:
        raise RbeeError(ErrorCode.INVALID_REQUEST, "Name the download: ?model_ref=REF.", {"field": "model_ref"})
    events = await _progress_events(request.app, ref)
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    sse = SSEWriter(response)
    try:
        async for event in events:
            await sse.send(event)
        await sse.done()
    except ConnectionResetError:
        log.debug("progress subscriber for %s went away", ref)  # the download itself goes on
    return response


async def _progress_events(app: web.Application, ref: str) -> AsyncIterator[dict[str, Any]]:
    """The live events of a running download, or the one final event of a finished one."""
    provisioner = app[PROVISIONER]
    running = provisioner.in_flight(ref)
    if running is not None:
        return running.progress.subscribe()
    entry = await asyncio.to_thread(app[CATALOG].get, ref)
    final = ({"stage": "complete", "local_path": str(entry.local_path)} if entry is not None
             else provisioner.last_outcome(ref))
    if final is None:
        raise RbeeError(ErrorCode.MODEL_NOT_FOUND, f"No download of '{ref}' is running and it is not in the catalog. "
                        "Start one with POST /v1/models/download.", {"model_ref": ref})
    return _once(final)


async def _once(event: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield event


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    await asyncio.to_thread(app[CATALOG].open)  # may rebuild from the GGUFs on disk: not on the loop
    await app[PROVISIONER].start()
    yield
    await app[PROVISIONER].close()


async def _end_downloads(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for open handlers: cancelling the downloads here ends
    # their progress streams (each gets a final error event) instead of holding the shutdown.
    await app[PROVISIONER].close()


def setup_models(app: web.Application, models_dir: Path, hf_base_url: str, **provisioner_options: Any) -> None:
    """Add the model routes and the catalog/provisioner lifecycle to the hive's app.

    ``provisioner_options`` go to :class:`Provisioner` (``attempts``, ``base_delay``, ``stall_timeout``,
    ``hf_token``, ...); the defaults suit real downloads.
    """
    catalog = Catalog(Path(models_dir))
    app[CATALOG] = catalog
    app[PROVISIONER] = Provisioner(catalog, hf_base_url, **provisioner_options)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_end_downloads)
    app.add_routes(routes)

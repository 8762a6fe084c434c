"""GET /v2/events: the live view (rbee.queen.live) as Server-Sent Events, and the dashboard at /ui.

The stream opens with a ``snapshot`` event, then ``fleet``, ``request`` and ``tick`` events as they
happen; a subscriber that falls ``--events-queue`` events behind gets a last ``dropped`` event and the
stream ends (reconnect to get a fresh snapshot). Keys: the /v2 rules of rbee.queen.auth.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from prometheus_client import Counter, Gauge

from rbee import sse
from rbee.queen.appkeys import DISPATCHER, HIVES, QUEUE, REGISTRY, SETTINGS
from rbee.queen.live import FanOut, LiveHub
from rbee.queen.metrics import METRICS

LIVE = web.AppKey("live", LiveHub)
UI_DIR = Path(__file__).parent / "ui"
KEEPALIVE_S = 15.0
DROPPED_FRAME = sse.frame({"type": "dropped", "message": "This subscriber fell too far behind and was dropped. "
                                                        "Reconnect for a fresh snapshot."})


async def events(request: web.Request) -> web.StreamResponse:
    hub = request.app[LIVE]
    sub, snapshot = hub.subscribe()
    try:
        response = web.StreamResponse(headers=sse.SSE_HEADERS)
        await response.prepare(request)
        await response.write(snapshot)
        while True:
            try:
                frames = await asyncio.wait_for(sub.next_frames(), KEEPALIVE_S)
            except TimeoutError:
                await response.write(sse.frame_comment("keep-alive"))
                continue
            if not frames:
                break
            await response.write(b"".join(frames))
        if sub.dropped:
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(response.write(DROPPED_FRAME), 1.0)
        return response
    finally:
        hub.unsubscribe(sub)


async def ui_index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(UI_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def ui_redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    """After the dispatcher exists: listen to it beside the metrics, tick until the queen stops."""
    hub = app[LIVE]
    dispatcher = app[DISPATCHER]
    dispatcher.hooks = FanOut([dispatcher.hooks, hub])
    ticker = asyncio.get_running_loop().create_task(hub.run())
    yield
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker


async def _end_streams(app: web.Application) -> None:
    app[LIVE].close()  # on shutdown, before handlers are waited for: open streams end at once


def setup(app: web.Application) -> LiveHub:
    """The hub, /v2/events and /ui; after the services (it wraps the dispatcher's hooks)."""
    dropped = Counter("rbee_queen_event_subscribers_dropped", "Subscribers of /v2/events dropped because they "
                      "fell too far behind.", registry=app[METRICS].registry)
    hub = app[LIVE] = LiveHub(app[REGISTRY], app.get(HIVES), app[QUEUE], limit=app[SETTINGS].events_queue,
                              on_drop=dropped.inc)
    Gauge("rbee_queen_event_subscribers", "Subscribers of /v2/events now.",
          registry=app[METRICS].registry).set_function(lambda: len(hub.subscribers))
    app.cleanup_ctx.append(_lifetime)
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/v2/events", events)
    app.router.add_get("/ui", ui_redirect)
    app.router.add_get("/ui/", ui_index)
    app.router.add_static("/ui/", UI_DIR, name="ui")
    return hub

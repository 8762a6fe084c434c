"""Reloading a running server's key files: on SIGHUP (queen and hive), and on the queen's
``POST /v2/admin/reload``, which only an admin key (``--admin-key-file``) may call.

The reload itself is :meth:`rbee.keyring.KeyRing.reload`; here it is logged, audited and answered.
SIGHUP's default action is to end the process, so a server with key files or an audit log would
die of the signal an operator sends to rotate a key; with this handler it reloads instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from rbee.errors import ErrorCode, RbeeError
from rbee.keyring import KeyRing, Reloaded
from rbee.web import json_response

log = logging.getLogger("rbee.reload")

KEYRING = web.AppKey("keyring", KeyRing)
# Called after each reload with (how it was asked for, what it did): the audit log records it, and
# reopens its file (after an operator moved it away).
ON_RELOAD = web.AppKey("on_reload", list[Callable[[str, Reloaded], None]])


def reload_keys(app: web.Application, via: str) -> Reloaded:
    """Re-read the key files; a broken one leaves every key as it was, and says why."""
    result = app[KEYRING].reload()
    if result.ok:
        log.info("keys reloaded (via %s)", via, extra={"fields": {"keys": result.counts, "added": result.added,
                                                                   "removed": result.removed}})
    else:
        log.error("key reload failed (via %s), keeping the keys in use: %s", via, result.error,
                  extra={"fields": {"keys": result.counts}})
    for hook in app.get(ON_RELOAD, ()):
        hook(via, result)
    return result


async def reload_route(request: web.Request) -> web.Response:
    """POST /v2/admin/reload: 200 with the keys per set and the fingerprints that came and went, or 409
    KEY_RELOAD_FAILED with why (the keys in use stay)."""
    result = reload_keys(request.app, "http")
    if not result.ok:
        raise RbeeError(ErrorCode.KEY_RELOAD_FAILED,
                        f"Nothing changed: the keys in use stay. {result.error}. Fix the file, then reload "
                        "again.", {"keys": result.counts})
    return json_response(result.summary())


def setup(app: web.Application, ring: KeyRing, *, route: str | None = None) -> None:
    """Keep ``ring`` on the app, reload it on SIGHUP, and (the queen) serve the reload ``route``."""
    app[KEYRING] = ring
    app[ON_RELOAD] = []
    app.on_startup.append(_catch_sighup)
    if route is not None:
        app.router.add_post(route, reload_route)


async def _catch_sighup(app: web.Application) -> None:
    loop = asyncio.get_running_loop()
    # Not in the main thread (an app under a test client), or no signals here: no SIGHUP handler.
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, reload_keys, app, "SIGHUP")

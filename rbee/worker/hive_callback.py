"""The worker's ready callback: telling its hive that the model is loaded and where to reach it."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from rbee.errors import RbeeError
from rbee.peer import Peers
from rbee.protocol import WorkerReady

log = logging.getLogger(__name__)
ATTEMPTS = 8


async def announce(payload: WorkerReady, callback_url: str, cluster_key: str | None) -> bool:
    """Tell the hive we are ready; retried with backoff because the hive may be busy starting."""
    body = payload.model_dump(mode="json")
    delay = 0.2
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        peers = Peers(session, cluster_key)
        for attempt in range(ATTEMPTS):
            try:
                await peers.call("POST", callback_url, json=body, peer="The hive", ident={},
                                 next_step="Is rbee-hive running at --callback-url?")
                return True
            except RbeeError as err:
                log.warning("ready callback failed (attempt %d of %d): %s", attempt + 1, ATTEMPTS, err.message)
            await asyncio.sleep(delay)  # backoff between retries, not a readiness wait
            delay = min(delay * 2, 5.0)
    log.error("could not reach the callback URL %s; the hive will not know this worker", callback_url)
    return False

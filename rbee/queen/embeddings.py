"""Embeddings through the queen: a slot on a live embeddings worker of the model, its answer relayed.

Workers advertise what they do when they register (``capability``, rbee.protocol.Capability); only
those started with ``--embeddings`` get these requests, through the same admission queue as
generation (fair per key, bounded wait). The worker answers in OpenAI's shape already; the queen
names the model as the client asked for it. A worker that cannot be reached, or refuses for a reason
another may not have, hands the request to the next one, as generation's failover does.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from rbee.errors import ErrorCode, RbeeError
from rbee.peer import error_of
from rbee.protocol import Capability
from rbee.queen.dispatch import RETRYABLE, Dispatcher
from rbee.queen.openai_types import EmbeddingsRequest
from rbee.queen.registry import Lease, not_served

EMBEDDINGS = Capability.EMBEDDINGS


async def embed(dispatcher: Dispatcher, req: EmbeddingsRequest, *, request_id: str,
                api_key: str | None) -> tuple[dict[str, Any], str]:
    """The worker's answer, and which worker gave it. 404 naming the embeddings workers there are when none
    serves the model; the admission queue's 503s when all are busy."""
    registry = dispatcher.registry
    if not registry.knows_model(req.model, capability=EMBEDDINGS):
        raise not_served(req.model, EMBEDDINGS, registry.live())
    work = req.for_worker()
    body = work.model_dump(mode="json", exclude_none=True)
    tried: set[str] = set()
    last_error: RbeeError | None = None
    for _ in range(dispatcher.max_attempts):
        try:
            lease, _waited = await dispatcher.queue.admit(req.model, api_key or "", frozenset(tried),
                                                          capability=EMBEDDINGS)
        except RbeeError:
            if last_error is not None:
                raise last_error from None  # say what went wrong with the workers we tried
            raise
        try:
            answer = await _post(dispatcher, lease, body, request_id, len(work.inputs()))
        except RbeeError as err:
            busy = err.code == ErrorCode.ALL_SLOTS_BUSY
            if busy:  # a race lost, not a broken worker: full until it shows room (as generation's)
                registry.full(lease.worker_id)
            dispatcher.release(lease, held=not busy)
            if err.code not in RETRYABLE:
                raise
            if not busy:
                tried.add(lease.worker_id)
            last_error = err
            dispatcher.hooks.failover()
            continue
        except BaseException:
            dispatcher.release(lease)
            raise
        dispatcher.release(lease)
        answer["model"] = req.model
        return answer, lease.worker_id
    assert last_error is not None
    raise last_error


async def _post(dispatcher: Dispatcher, lease: Lease, body: dict[str, Any], request_id: str,
                inputs: int) -> dict[str, Any]:
    # A silent worker is given the stall timeout plus a second per input (a CPU embeds a short text in
    # well under one) before it counts as broken.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=dispatcher.stall_timeout + inputs)
    peer = f"Worker '{lease.worker_id}'"
    try:
        async with dispatcher.peers.session.post(
                f"{lease.url}/v1/embeddings", json=body, timeout=timeout,
                headers={**dispatcher.peers.headers, "X-Request-Id": request_id}) as response:
            if response.status != 200:
                raise await error_of(response, peer=peer, ident={"worker_id": lease.worker_id})
            return await response.json()
    except (TimeoutError, aiohttp.ClientError) as exc:
        dispatcher.registry.unreachable(lease.worker_id)
        raise RbeeError(ErrorCode.WORKER_UNAVAILABLE,
                        f"Worker '{lease.worker_id}' at {lease.url} could not serve the embeddings "
                        f"({exc.__class__.__name__}). Retry; if it persists, check it with "
                        "`rbee-keeper workers health`.", {"worker_id": lease.worker_id}) from None

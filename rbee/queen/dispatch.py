"""The token path: admit, lease a slot, open the worker's stream with failover, relay, give the slot back.

Failover is transparent only before the first byte of the answer has reached us: a refused or reset
connection, a worker-side ``ALL_SLOTS_BUSY`` race or a 5xx moves the request to another worker
(bounded). After that, a dying or stalled worker becomes one ``WORKER_UNAVAILABLE`` error event and
``[DONE]`` — never a hang.

The relay copies the worker's bytes (whole SSE blocks, several at a time) and parses only the done
event, to stamp the queen's timeline on it; front doors that reshape the answer (OpenAI) read the
same blocks once, as typed events (:meth:`Dispatcher.events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from rbee import sse
from rbee.deadline import Deadline
from rbee.errors import ErrorCode, RbeeError
from rbee.events import Done, Event, Failed, Provisioning, from_wire
from rbee.peer import Peers, error_of
from rbee.prefix import REPORT_HEADER, Prefix, prefix_of
from rbee.prefix import from_wire as held_from_wire
from rbee.protocol import InferenceRequest
from rbee.queen.admission import AdmissionQueue, OnWait
from rbee.queen.prefix_index import PrefillRate, PrefixIndex
from rbee.queen.registry import Affinity, Lease, Registry
from rbee.queen.resume import Resumption, resumable
from rbee.queen.scheduler import Route

log = logging.getLogger(__name__)

RETRYABLE = {ErrorCode.ALL_SLOTS_BUSY, ErrorCode.DRAINING, ErrorCode.MODEL_LOADING, ErrorCode.WORKER_UNAVAILABLE,
             ErrorCode.INTERNAL}
Write = Callable[[bytes], Awaitable[None]]
MAX_COLD_STARTS = 3  # per request: its model evicted again and again while it waited is given up on
# Lost ALL_SLOTS_BUSY races one request may retry: each waits for a sign of room first (Registry.full),
# so this bounds a worker that keeps saying it is idle and then busy, not ordinary contention.
MAX_RACES = 8
AGAIN = "Send it again with a later deadline (X-Request-Deadline, or 'timeout' in seconds), or when the fleet is less busy."


@dataclass
class Upstream:
    lease: Lease
    response: aiohttp.ClientResponse
    request_id: str
    queued_ms: int
    first_chunk: bytes
    started: float = field(default_factory=time.monotonic)  # admission done, about to send the request
    first_token_at: float | None = None
    closed: bool = False  # we let go on purpose: a read failing after this is not the worker's fault
    blocks: int = 0  # SSE blocks relayed so far (about one per token): the live view's tokens/s
    done: Done | None = None  # the stamped done event, once relayed
    broken: bool = False  # ended by the queen's error event (the worker broke, stalled or hung up)
    resumption: Resumption | None = None  # how it may move to another worker if this one breaks
    break_reason: str | None = None  # why the worker's stream just ended early (None: it did not)
    prompt_chars: int = 0  # the prompt's length as the queen cuts it, and the model as the request named it:
    asked_model: str | None = None  # what the prefill rate is learnt from and for

    @property
    def worker_id(self) -> str:
        return self.lease.worker_id

    @property
    def model(self) -> str:
        return self.lease.model_ref


class Hooks:
    """What the dispatcher reports (metrics plug in here); the defaults do nothing."""

    def queue_wait(self, seconds: float) -> None: ...
    def ttft(self, seconds: float) -> None: ...
    def tokens(self, n: int, model: str | None) -> None: ...
    def cancellation(self) -> None: ...
    def failover(self) -> None: ...
    def resume(self) -> None: ...
    def route(self, route: Route) -> None: ...
    # A request's life, for the live view (rbee.queen.live): opened → dispatched → first token → ended.
    def opened(self, request_id: str, model: str | None, caller: str) -> None: ...
    def dispatched(self, upstream: Upstream) -> None: ...
    def first_token(self, upstream: Upstream) -> None: ...
    def ended(self, request_id: str, upstream: Upstream | None, outcome: str, error: str | None = None) -> None: ...


class Dispatcher:
    def __init__(self, registry: Registry, peers: Peers, queue: AdmissionQueue, *,
                 stall_timeout: float = 30.0, max_attempts: int = 3, hooks: Hooks | None = None, max_resumes: int = 1,
                 cache_routing: bool = True, max_streams: int = 0) -> None:
        self.registry = registry
        self.prefixes = PrefixIndex() if cache_routing else None  # which worker holds which prompt prefixes
        # Workers are asked to report what their caches hold when the queen routes by it.
        self._report_header = {REPORT_HEADER: "1"} if cache_routing else {}
        self.prefill = PrefillRate()  # what computing a prefix again costs: how long waiting for a cache may be
        self.peers = peers
        self.queue = queue
        self.stall_timeout = stall_timeout
        self.max_attempts = max_attempts
        self.max_resumes = max_resumes
        self.hooks = hooks or Hooks()
        self._cancels: set[asyncio.Task] = set()  # cancels at broken workers, still under way
        self.max_streams = max_streams  # requests between open and close at once (0 = no bound): the fd bound
        self._opening = 0  # in open(), not yet dispatched
        # Open streams -> the block count last looked at: one that moved is a sign of its worker's life.
        self._streams: dict[int, tuple[Upstream, int]] = {}
        # Set by the app when hives can spawn workers on demand: True once a worker for the model is ready
        # (on the pinned hive, when one is given).
        self.cold_start: Callable[[str, str | None, Deadline | None], Awaitable[bool]] | None = None
        # Set by the app: raises HIVE_NOT_FOUND for a pin to a hive the queen does not know.
        self.check_hive: Callable[[str], None] | None = None
        # Set by the app: raises HIVE_OFFLINE for a pin to a silent hive (HiveRegistry.require_live).
        self.require_live_hive: Callable[[str, str | None], None] | None = None

    # ------------------------------------------------------------ opening

    async def open(self, job: InferenceRequest, *, request_id: str, api_key: str | None = None,
                   on_wait: OnWait | None = None, deadline: Deadline | None = None) -> Upstream:
        """A worker's stream for ``job``; every request that comes here ends in ``hooks.ended`` (an
        error or a client gone here, else at :meth:`close`)."""
        self.hooks.opened(request_id, job.model, api_key or "")
        try:
            self._check_streams()
            self._opening += 1
            try:
                upstream = await self._open(job, request_id, api_key, on_wait, deadline)
            finally:
                self._opening -= 1
        except RbeeError as err:
            self.hooks.ended(request_id, None, "error", str(err.code))
            raise
        except BaseException:
            self.hooks.ended(request_id, None, "cancelled")
            raise
        self._streams[id(upstream)] = (upstream, upstream.blocks)
        self.hooks.dispatched(upstream)
        return upstream

    @property
    def in_flight(self) -> int:
        """Requests between open and close: each holds the client's socket, and once dispatched the worker's."""
        return self._opening + len(self._streams)

    def _check_streams(self) -> None:
        """503 ``TOO_MANY_STREAMS`` beyond --max-streams (the queue still queues those within it for slots)."""
        if self.max_streams and self.in_flight >= self.max_streams:
            raise RbeeError(
                ErrorCode.TOO_MANY_STREAMS,
                f"The queen is relaying its maximum of {self.max_streams} streams at once (--max-streams). "
                "Retry after the Retry-After delay, or raise --max-streams (each stream takes two open files).",
                {"max_streams": self.max_streams}, retry_after=self.queue.retry_after())

    def _relaying(self, worker_id: str) -> bool:
        """Some stream of this worker's is being relayed now and has sent tokens (its breaking, should
        the worker be gone, takes it out of routing: :meth:`_broken`)."""
        return any(u.worker_id == worker_id and u.blocks > 0 and not u.broken for u, _ in self._streams.values())

    def streaming(self) -> set[str]:
        """Workers whose streams moved (blocks relayed) since this was last asked: alive, however slow
        their health answer is while they are busy (:func:`rbee.queen.health.probe_loop`)."""
        moved = set()
        for key, (upstream, seen) in self._streams.items():
            if upstream.blocks != seen:
                moved.add(upstream.worker_id)
                self._streams[key] = (upstream, upstream.blocks)
        return moved

    async def _open(self, job: InferenceRequest, request_id: str, api_key: str | None,
                    on_wait: OnWait | None, deadline: Deadline | None = None) -> Upstream:
        if job.hive is not None and self.check_hive is not None:
            self.check_hive(job.hive)
        if deadline is not None and deadline.expired():
            raise deadline.exceeded("before it was dispatched", AGAIN)
        # The pin is the queen's; the timeout travels as the deadline's header (it shrinks on the way).
        body = job.model_dump(mode="json", exclude_none=True, exclude={"hive", "timeout"})
        resume = resumable(job, self.max_resumes)
        if resume:
            body["token_ids"] = True
        tried: set[str] = set()
        last_error: RbeeError | None = None
        queued_s = 0.0
        failures = races = 0
        prefix, affinity = self._affinity(job)
        patience = self.prefill.seconds(job.model, prefix.chars()) if prefix is not None else 0.0
        while True:
            try:
                lease, waited = await self._admit(job, api_key or "", frozenset(tried), on_wait, affinity, deadline,
                                                  patience)
            except RbeeError as err:
                if last_error is not None and err.code in (ErrorCode.NO_IDLE_WORKERS, ErrorCode.NO_WORKERS):
                    raise _pinned(job, last_error) from None  # say what went wrong with the workers we tried
                raise
            queued_s += waited
            self.hooks.queue_wait(waited)
            try:
                upstream = await self._connect(lease, body, job.stream, request_id, int(queued_s * 1000), deadline)
            except RbeeError as err:
                busy = err.code == ErrorCode.ALL_SLOTS_BUSY
                if busy:
                    # A race lost (another queen, a slot not freed yet), not a broken worker: it counts as
                    # full until it shows room, so the retry goes elsewhere or waits in the queue.
                    self.registry.full(lease.worker_id)
                self._give_back(lease, held=not busy)
                if err.code not in RETRYABLE:
                    raise
                if busy:
                    races += 1
                else:
                    tried.add(lease.worker_id)
                    failures += 1
                last_error = err
                self.hooks.failover()
                log.warning("failover", extra={"fields": {"worker_id": lease.worker_id, "code": err.code,
                                                          "attempt": failures + races}})
                if failures >= self.max_attempts or races >= MAX_RACES:
                    raise _pinned(job, err) from None
                continue
            self.hooks.route(lease.route)
            if self.prefixes is not None and prefix is not None:
                self.prefixes.record(lease.worker_id, prefix.hashes, request_id)
                upstream.prompt_chars, upstream.asked_model = prefix.chars(), job.model
            if resume:
                upstream.resumption = Resumption(body, job, api_key or "", deadline)
            return upstream

    def _affinity(self, job: InferenceRequest) -> tuple[Prefix | None, Affinity | None]:
        """The request's prefix as the queen cuts it, and how deep each worker holds it (None, None: load
        alone decides, and nothing is hashed)."""
        if self.prefixes is None or not job.cache_prompt:
            return None, None
        prefix = prefix_of(job)
        prefixes, hashes = self.prefixes, prefix.hashes
        return prefix, lambda worker: prefixes.depth(worker.worker_id, hashes)

    async def _admit(self, job: InferenceRequest, key: str, tried: frozenset[str], on_wait: OnWait | None,
                     affinity: Affinity | None, deadline: Deadline | None = None,
                     patience: float | None = None) -> tuple[Lease, float]:
        """Admission (to the pinned hive's workers, when pinned); when no worker serves the model yet, a
        cold start on a hive (if one can), then again."""
        model, hive = job.model, job.hive
        for _ in range(MAX_COLD_STARTS):  # a model's worker may be evicted (for another) while we wait
            try:
                return await self.queue.admit(model, key, tried, on_wait, hive, affinity, deadline,
                                              patience=patience)
            except RbeeError as err:
                if err.code == ErrorCode.NO_WORKERS and hive is not None and self.require_live_hive is not None:
                    self.require_live_hive(hive, model)  # no live worker there: is the hive itself gone?
                cold = err.code in (ErrorCode.MODEL_NOT_FOUND, ErrorCode.NO_WORKERS) and not tried
                if not (cold and model and self.cold_start is not None
                        and await self._cold_start(model, on_wait, hive, deadline)):
                    raise
        return await self.queue.admit(model, key, tried, on_wait, hive, affinity, deadline, patience=patience)

    async def _cold_start(self, model: str, on_wait: OnWait | None, hive: str | None = None,
                          deadline: Deadline | None = None) -> bool:
        """The cold start, telling a waiting client each second that its model is being provisioned
        (a download can take minutes; a streaming client and any proxy in between hear it is alive).

        The first note comes after a second: a cold start that ends sooner (no hive can try, or a hive
        refuses at once) still answers with a plain HTTP error rather than an error event in a stream.
        A request's deadline ends only its own wait: the spawn goes on for the next request."""
        assert self.cold_start is not None
        task = asyncio.ensure_future(self.cold_start(model, hive, deadline))
        started = time.monotonic()
        try:
            while True:
                left = 1.0 if deadline is None else min(1.0, deadline.remaining())
                done, _ = await asyncio.wait({task}, timeout=max(left, 0.0))
                if done:
                    return task.result()
                if deadline is not None and deadline.expired():
                    raise deadline.exceeded(f"while a worker for '{model}' was being started (cold start)",
                                            AGAIN + " The worker goes on starting; the next request may find it ready.")
                if on_wait is not None:
                    await on_wait(Provisioning(model, int(time.monotonic() - started)))
        finally:
            task.cancel()  # only our wait: the spawn itself is shared and shielded (ColdStarter.provide)

    async def _connect(self, lease: Lease, body: dict, stream: bool, request_id: str, queued_ms: int,
                       deadline: Deadline | None = None) -> Upstream:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=self.stall_timeout)
        started = time.monotonic()
        if deadline is not None and deadline.expired(started):
            raise deadline.exceeded("before it was dispatched", AGAIN)
        headers = {**self.peers.headers, "X-Request-Id": request_id, **(deadline.header() if deadline else {}),
                   **self._report_header}
        try:
            response = await self.peers.session.post(f"{lease.url}/v1/inference", json=body, timeout=timeout,
                                                     headers=headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            if not self._relaying(lease.worker_id):  # one refused connection of a worker streaming to others: busy, not gone
                self.registry.unreachable(lease.worker_id)
            raise _unavailable(lease, exc.__class__.__name__) from None
        if response.status != 200:
            raise await error_of(response, peer=f"Worker '{lease.worker_id}'", ident={"worker_id": lease.worker_id})
        if not stream:
            return Upstream(lease, response, request_id, queued_ms, b"", started)
        try:
            first = await response.content.readany()
        except (TimeoutError, aiohttp.ClientError) as exc:
            response.release()
            raise _unavailable(lease, f"{exc.__class__.__name__} before the first token") from None
        if not first:
            response.release()
            raise _unavailable(lease, "closed before the first token")
        if sse.is_error(first):  # failed before any token: another worker may do
            response.release()
            raise _unavailable(lease, "errored before the first token")
        return Upstream(lease, response, request_id, queued_ms, first, started)

    # ------------------------------------------------------------ reading

    async def chunks(self, upstream: Upstream) -> AsyncIterator[bytes]:
        """The worker's stream as runs of whole SSE blocks, in order, the done event stamped with the
        queen's timeline. A worker that breaks, stalls or hangs up early: the stream moves on to another
        worker (:mod:`rbee.queen.resume`), or, when it cannot, ends with one error event and ``[DONE]``."""
        while True:
            plan = upstream.resumption
            async for out in self._read(upstream):
                if plan is not None:
                    plan.note(out)
                yield out
            reason = upstream.break_reason
            if reason is None:
                return
            if not await self._resume(upstream, reason):
                yield await self._broken(upstream, reason)
                return

    async def _read(self, upstream: Upstream) -> AsyncIterator[bytes]:
        """One worker's stream; ``upstream.break_reason`` says why it ended early, if it did."""
        upstream.break_reason = None
        buffer = upstream.first_chunk
        content = upstream.response.content
        try:
            while True:
                cut = buffer.rfind(b"\n\n") + 2
                if cut >= 2:
                    out, buffer = buffer[:cut], buffer[cut:]
                    blocks, _ = sse.split_blocks(out)
                    first = False
                    if upstream.first_token_at is None:  # the worker's prefill notes before it are no token
                        data = sum(not sse.is_comment(b) for b in blocks)
                        if data:
                            upstream.first_token_at, first = time.monotonic(), True
                        upstream.blocks += data
                    else:
                        upstream.blocks += len(blocks)
                    if any(sse.is_done(b) for b in blocks):
                        out = self._stamp_done(upstream, blocks)
                    try:
                        yield out
                    finally:  # told once the token is on its way to the client (or the client left), not before
                        if first:
                            self._first_token(upstream)
                    if blocks and sse.is_terminator(blocks[-1]):
                        return
                chunk = await content.readany()
                if not chunk:
                    break
                buffer += chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            if not upstream.closed:
                upstream.break_reason = ("stopped sending tokens" if isinstance(exc, TimeoutError)
                                         else "broke the stream")
            return
        upstream.break_reason = "closed the stream early"

    async def _resume(self, upstream: Upstream, reason: str) -> bool:
        """Move the stream to another live worker of the model, from where it broke; False if none can
        take it (no resumption left, nothing to resume with, no other worker within the stall timeout)."""
        plan = upstream.resumption
        if plan is None or len(plan.moves) >= self.max_resumes:
            return False
        body = plan.next_body()
        if body is None:
            return False
        dead = upstream.lease
        self.registry.unreachable(dead.worker_id)
        plan.gone.add(dead.worker_id)
        job = plan.job
        try:
            lease, _ = await asyncio.wait_for(self.queue.admit(
                job.model, plan.api_key, frozenset(plan.gone), None, job.hive, None, plan.deadline),
                self.stall_timeout)
        except (RbeeError, TimeoutError):
            return False
        try:
            fresh = await self._connect(lease, body, True, upstream.request_id, upstream.queued_ms, plan.deadline)
        except RbeeError:
            self._give_back(lease, held=True)
            return False
        log.warning("worker %s %s mid-answer; resumed on worker %s at token event %d", dead.worker_id, reason,
                    lease.worker_id, plan.at_index)
        self._cancel_in_background(upstream)  # the old worker's slot, should it still be generating
        upstream.response.release()
        self._give_back(dead)
        upstream.lease, upstream.response, upstream.first_chunk = lease, fresh.response, fresh.first_chunk
        plan.moved(lease.worker_id)
        self.hooks.resume()
        return True

    async def relay(self, upstream: Upstream, write: Write, last: Write | None = None) -> None:
        """Copy the worker's SSE bytes to ``write`` as they come (see :meth:`chunks`); the run that ends
        with ``[DONE]`` to ``last`` when given (the response's ``write_eof``: the end of the body goes
        out with it, one socket write fewer)."""
        async for out in self.chunks(upstream):
            if last is not None and out.endswith(sse.DONE_FRAME):
                await last(out)
            else:
                await write(out)

    async def events(self, upstream: Upstream) -> AsyncIterator[Event]:
        """The worker's events, typed, for front doors that reshape them (OpenAI)."""
        async with contextlib.aclosing(self.chunks(upstream)) as chunks:
            async for out in chunks:
                for block in sse.split_blocks(out)[0]:
                    data = sse.block_data(block)
                    if data is not None and data != sse.DONE:
                        yield from_wire(json.loads(data))

    def learn_cache(self, worker_id: str, held: Any, version: Any) -> None:
        """A worker's report of what its cache holds (a done event's ``cache_held``, ``cache_version``)."""
        if self.prefixes is None or not isinstance(held, list) or not isinstance(version, int):
            return
        prompts = [hashes for hashes in map(held_from_wire, held) if hashes is not None]
        self.prefixes.report(worker_id, version, prompts)

    def _first_token(self, upstream: Upstream) -> None:
        """The hooks hear of the first token (stamped when it came) after it was handed to the client."""
        assert upstream.first_token_at is not None
        self.hooks.ttft(upstream.first_token_at - upstream.started)
        self.hooks.first_token(upstream)

    def _stamp_done(self, upstream: Upstream, blocks: list[bytes]) -> bytes:
        out = []
        for block in blocks:
            if sse.is_done(block):
                done = from_wire(json.loads(block[6:]))
                assert isinstance(done, Done)
                done.queued_ms = upstream.queued_ms
                done.ttft_ms = int(((upstream.first_token_at or time.monotonic()) - upstream.started) * 1000)
                done.worker_id = upstream.worker_id
                done.route = upstream.lease.route
                self.learn_cache(upstream.worker_id, done.cache_held, done.cache_version)
                done.cache_held = done.cache_version = None  # the queen's, not the client's
                self.prefill.observe(upstream.asked_model, upstream.prompt_chars, done.prompt_tokens, done.cached_tokens,
                                     done.ttft_ms)
                if upstream.resumption is not None and upstream.resumption.moves:
                    done.resumed = upstream.resumption.moves
                upstream.done = done
                self.hooks.tokens(done.total_tokens, upstream.model)
                out.append(sse.frame_event(done))
            else:
                out.append(block + b"\n\n")
        return b"".join(out)

    async def _broken(self, upstream: Upstream, reason: str) -> bytes:
        upstream.broken = True
        self.registry.unreachable(upstream.worker_id)
        self._cancel_in_background(upstream)
        log.warning("worker %s %s", upstream.worker_id, reason)
        failed = Failed(ErrorCode.WORKER_UNAVAILABLE,
                        f"Worker '{upstream.worker_id}' {reason} mid-answer. The text so far is incomplete; "
                        "retry the request.", {"worker_id": upstream.worker_id})
        return sse.frame_event(failed) + sse.DONE_FRAME

    def _cancel_in_background(self, upstream: Upstream) -> None:
        # Across a link whose packets vanish the cancel takes its whole timeout, and the client must hear
        # the error (or the resumed stream) within the stall timeout, not after it.
        task = asyncio.get_running_loop().create_task(self._cancel_at(upstream.lease, upstream.request_id))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    # ------------------------------------------------------------ closing

    async def close(self, upstream: Upstream, *, client_gone: bool) -> None:
        """Let go of the worker's stream and give the slot back. A client that left is cancelled at the
        worker first: its DELETE answers once the worker's slot is free, so the lease handed on next
        finds room there rather than racing the cancel to an ``ALL_SLOTS_BUSY``."""
        upstream.closed = True
        self._streams.pop(id(upstream), None)
        if self.prefixes is not None:
            self.prefixes.settle(upstream.request_id)
        upstream.response.release()
        outcome = "cancelled" if client_gone else "error" if upstream.broken else "done"
        self.hooks.ended(upstream.request_id, upstream, outcome, str(ErrorCode.WORKER_UNAVAILABLE) if upstream.broken else None)
        try:
            if client_gone:
                self.hooks.cancellation()
                await self.cancel_at_worker(upstream)
        finally:
            self._give_back(upstream.lease)

    async def cancel_at_worker(self, upstream: Upstream) -> None:
        await self._cancel_at(upstream.lease, upstream.request_id)

    async def _cancel_at(self, lease: Lease, request_id: str) -> None:
        """Tell the worker to stop generating (best effort, bounded)."""
        with contextlib.suppress(RbeeError):
            await self.peers.call("DELETE", f"{lease.url}/v1/inference/{request_id}",
                                  peer=f"Worker '{lease.worker_id}'", ident={"worker_id": lease.worker_id},
                                  next_step="", timeout=aiohttp.ClientTimeout(total=2))

    def release(self, lease: Lease, held: bool = True) -> None:
        """Give back a lease taken from the queue outside :meth:`open` (embeddings: one JSON answer, no
        stream); ``held``: false when the worker refused it (its slot was never ours)."""
        self._give_back(lease, held=held)

    def _give_back(self, lease: Lease, held: bool = True) -> None:
        self.registry.release(lease, held=held)
        self.queue.slot_freed()


def _pinned(job: InferenceRequest, err: RbeeError) -> RbeeError:
    """The last worker's error; for a request pinned to a hive, saying that hive had no other worker."""
    if job.hive is None:
        return err
    return RbeeError(err.code, f"{err.message} Hive '{job.hive}' has no other worker that could take it: "
                     "check it with `rbee-keeper hives list`, or send the request without --hive.",
                     {**err.details, "hive": job.hive}, retry_after=err.retry_after)


def _unavailable(lease: Lease, why: str) -> RbeeError:
    return RbeeError(
        ErrorCode.WORKER_UNAVAILABLE,
        f"Worker '{lease.worker_id}' at {lease.url} could not serve the request ({why}). "
        "Retry; if it persists, check it with `rbee-keeper workers health`.",
        {"worker_id": lease.worker_id},
    )

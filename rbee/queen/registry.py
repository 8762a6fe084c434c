"""The queen's worker registry and slot leases. Pure domain logic: no aiohttp, no I/O.

Everything runs on one event loop and no method awaits, so each call is atomic: two requests can
never take the same slot.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rbee.errors import ErrorCode, RbeeError
from rbee.models import aliases
from rbee.protocol import Capability, WorkerInfo, WorkerRegistration, WorkerState
from rbee.queen.scheduler import Route, pick
from rbee.versions import check_peer

ROUTABLE = {WorkerState.IDLE, WorkerState.BUSY}
Affinity = Callable[["WorkerRecord"], int]  # how much of a request's prompt prefix a worker holds


@dataclass
class WorkerRecord:
    reg: WorkerRegistration
    state: WorkerState
    registered_at: float
    last_seen: float
    leases: set[str] = field(default_factory=set)
    model_names: set[str] = field(default_factory=set)
    failures: int = 0  # consecutive failed probes
    # The worker answered ALL_SLOTS_BUSY: its slots are taken by someone we do not see (another queen, a
    # stream we let go of that it has not freed yet). No room until it shows some: see Registry.full.
    full: bool = False
    seq: int = 0  # registration order: candidates are tried in it, whichever index found them
    vouched_at: float | None = None  # its hive's last heartbeat for it: no probe needed while recent

    @property
    def worker_id(self) -> str:
        return self.reg.worker_id

    @property
    def slots_available(self) -> int:
        return 0 if self.full else max(0, self.reg.slots_total - len(self.leases))

    def serves(self, model: str | None) -> bool:
        return model is None or model in self.model_names

    def can(self, model: str | None, capability: Capability) -> bool:
        """Serves ``model`` (any, when None) with ``capability``: a generation request never lands on an
        embeddings worker, nor an embedding on a generating one."""
        return self.reg.capability == capability and self.serves(model)

    def on(self, hive: str | None) -> bool:
        """On hive ``hive`` (its node name); any hive when None."""
        return hive is None or self.reg.node_name == hive

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            **self.reg.model_dump(mode="json"),
            slots_available=self.slots_available,
            state=self.state,
            registered_at=self.registered_at,
            last_seen=self.last_seen,
        )


@dataclass(frozen=True)
class Lease:
    """One slot taken on a worker: all the dispatcher needs to reach it, without looking it up again."""

    lease_id: str
    worker_id: str
    url: str
    model_ref: str
    route: Route = Route.LOAD  # why this worker: its cache, or its load


class Registry:
    def __init__(self, clock: Callable[[], float] = time.time, max_load_gap: int = 2) -> None:
        self.max_load_gap = max_load_gap  # a cache match may have this many fewer free slots than the least loaded
        self._workers: dict[str, WorkerRecord] = {}
        self._clock = clock
        # Advances only when load decides: misses then take turns over the workers, however many
        # cache-routed requests come between them (else, at low concurrency, every conversation's first
        # turn could land on the same worker).
        self._load_turn = 0
        self._listeners: list[Callable[[], None]] = []
        self._held: set[str] = set()  # route nothing new here (see hold)
        # Every name a worker answers to (its aliases) -> its workers: a request looks at its model's few
        # workers, never at the whole fleet (1,000 workers, 100 models: about 10 each).
        self._by_model: dict[str, dict[str, WorkerRecord]] = {}
        self._seq = 0

    def subscribe(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs after every change that may free room (the admission queue's pump)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # ------------------------------------------------------------ membership

    def register(self, reg: WorkerRegistration) -> bool:
        """Add or refresh a worker. Returns True when it is new.

        Same id and url: idempotent update (leases kept). Same id, other url: 409, nothing changes.
        A worker of another rbee line (major.minor) is refused: 409 VERSION_MISMATCH.
        """
        check_peer("worker", {"worker_id": reg.worker_id}, reg.version)
        now = self._clock()
        existing = self._workers.get(reg.worker_id)
        if existing is not None:
            if existing.reg.url != reg.url:
                raise RbeeError(
                    ErrorCode.WORKER_ALREADY_REGISTERED,
                    f"Worker '{reg.worker_id}' is already registered at {existing.reg.url}. "
                    "Remove it first (DELETE /v2/workers/{id}) or register under another id.",
                    {"worker_id": reg.worker_id, "registered_url": existing.reg.url},
                )
            self._unindex(existing)
            existing.reg = reg
            existing.last_seen = now
            existing.model_names = aliases(reg.model_ref)
            self._index(existing)
            self._settle(existing)
            self._changed()
            return False
        self._seq += 1
        record = WorkerRecord(reg=reg, state=WorkerState.IDLE, registered_at=now, last_seen=now,
                              model_names=aliases(reg.model_ref), seq=self._seq)
        self._workers[reg.worker_id] = record
        self._index(record)
        self._changed()
        return True

    def _index(self, record: WorkerRecord) -> None:
        for name in record.model_names:
            self._by_model.setdefault(name, {})[record.worker_id] = record

    def _unindex(self, record: WorkerRecord) -> None:
        for name in record.model_names:
            workers = self._by_model.get(name)
            if workers is not None:
                workers.pop(record.worker_id, None)
                if not workers:
                    del self._by_model[name]

    def _serving(self, model: str | None) -> list[WorkerRecord]:
        """The workers serving ``model`` (every worker when None), in registration order: O(its workers)."""
        if model is None:
            return list(self._workers.values())
        return sorted(self._by_model.get(model, {}).values(), key=lambda w: w.seq)

    def _candidates(self, model: str | None) -> Iterable[WorkerRecord]:
        """The workers serving ``model``, in no particular order (for any/all questions)."""
        return self._workers.values() if model is None else self._by_model.get(model, {}).values()

    def remove(self, worker_id: str) -> WorkerRecord:
        record = self.get(worker_id)
        del self._workers[worker_id]
        self._unindex(record)
        self._held.discard(worker_id)
        self._changed()  # requests that waited for its model now wait for nothing: the queue tells them
        return record

    def get(self, worker_id: str) -> WorkerRecord:
        try:
            return self._workers[worker_id]
        except KeyError:
            raise RbeeError(
                ErrorCode.WORKER_NOT_FOUND,
                f"No worker '{worker_id}' is registered. List workers with GET /v2/workers/list.",
                {"worker_id": worker_id},
            ) from None

    def find(self, worker_id: str) -> WorkerRecord | None:
        return self._workers.get(worker_id)

    def list(
        self, model: str | None = None, state: str | None = None, backend: str | None = None
    ) -> list[WorkerRecord]:
        return [
            w
            for w in self._workers.values()
            if (model is None or w.serves(model))
            and (state is None or w.state == state)
            and (backend is None or w.reg.backend == backend)
        ]

    def __len__(self) -> int:
        return len(self._workers)

    # ------------------------------------------------------------ state

    def set_state(self, worker_id: str, state: WorkerState) -> WorkerRecord:
        record = self.get(worker_id)
        record.state = state
        record.last_seen = self._clock()
        self._changed()
        return record

    def heartbeat(self, worker_id: str, state: WorkerState | None, slots_available: int | None) -> WorkerRecord:
        record = self.get(worker_id)
        self.seen(worker_id)
        record.vouched_at = record.last_seen  # its hive speaks for it (rbee.queen.health probes it less)
        if state == WorkerState.IDLE or (slots_available or 0) > 0:
            record.full = False  # the worker says it has room
        if state is not None:
            if state not in ROUTABLE:
                record.state = state
            else:
                if record.state not in ROUTABLE:
                    record.state = WorkerState.IDLE
                self._settle(record)
        self._changed()
        return record

    def _settle(self, record: WorkerRecord) -> None:
        """idle ⇄ busy follows the leases; other states are set explicitly."""
        if record.state in ROUTABLE:
            record.state = WorkerState.IDLE if record.slots_available > 0 else WorkerState.BUSY

    # ------------------------------------------------------------ leases

    def acquire(self, model: str | None = None, exclude: frozenset[str] = frozenset(),
                hive: str | None = None, affinity: Affinity | None = None,
                capability: Capability = Capability.GENERATE) -> Lease:
        """Take one slot on the least-loaded idle worker serving ``model`` with ``capability`` (on ``hive``
        when given), or raise the right 503/404. Looks only at the model's own workers (see _by_model)."""
        candidates = [w for w in self._serving(model) if self._has_room(w) and w.can(model, capability)
                      and w.on(hive) and w.worker_id not in exclude]
        if not candidates:
            raise self._why_none(model, exclude, hive, capability)
        chosen, route = pick(candidates, self._load_turn, affinity, self.max_load_gap)
        if route == Route.LOAD:
            self._load_turn += 1
        lease = Lease(lease_id=uuid.uuid4().hex, worker_id=chosen.worker_id, url=chosen.reg.url,
                      model_ref=chosen.reg.model_ref, route=route)
        chosen.leases.add(lease.lease_id)
        self._settle(chosen)
        return lease

    def _why_none(self, model: str | None, exclude: frozenset[str], hive: str | None,
                  capability: Capability) -> RbeeError:
        """Why no worker can take a request now (the slow path: it looks at the whole fleet)."""
        live = [w for w in self._workers.values() if w.state != WorkerState.OFFLINE and w.on(hive)]
        if not live:
            where = f" on hive '{hive}'" if hive else ""
            return RbeeError(
                ErrorCode.NO_WORKERS,
                f"No live workers are registered{where}. Start one (rbee-keeper up, or spawn one on a hive) "
                "and retry.", {"hive": hive} if hive else None,
            )
        serving = [w for w in live if w.can(model, capability)]
        if not serving:
            return not_served(model, capability, live)
        if all(w.worker_id in exclude for w in serving):
            where = f" on hive '{hive}'" if hive else ""
            return RbeeError(
                ErrorCode.NO_WORKERS,
                f"Every live worker for '{model}'{where} already failed this request, so waiting for one "
                "would not help. Retry later, or check the workers with `rbee-keeper workers health`.",
                {"model": model, "hive": hive, "tried": sorted(exclude)},
            )
        return RbeeError(
            ErrorCode.NO_IDLE_WORKERS,
            f"All {len(serving)} worker(s) for this model are busy. Retry after the Retry-After delay.",
            {"workers": len(serving)},
        )

    def has_room(self, model: str | None = None, hive: str | None = None,
                 capability: Capability = Capability.GENERATE) -> bool:
        return any(self._has_room(w) and w.can(model, capability) and w.on(hive) for w in self._candidates(model))

    def _has_room(self, w: WorkerRecord) -> bool:
        """Could take a request now: idle, a slot free, not held for an eviction."""
        return w.state == WorkerState.IDLE and w.slots_available > 0 and w.worker_id not in self._held

    def cache_is_busy(self, model: str | None, exclude: frozenset[str], hive: str | None, affinity: Affinity,
                      capability: Capability = Capability.GENERATE) -> bool:
        """The worker holding most of a request's prompt prefix has no slot free now, and every worker
        that has one holds less than half as much: a slot taken now would compute the prefix again."""
        busy = room = 0
        for w in self._candidates(model):
            if w.state not in ROUTABLE or not (w.can(model, capability) and w.on(hive)) or w.worker_id in exclude:
                continue
            depth = affinity(w)
            if self._has_room(w):
                room = max(room, depth)
            else:
                busy = max(busy, depth)
        return busy > 0 and 2 * room < busy

    def registered(self, model: str | None, hive: str | None = None) -> bool:
        """Some worker serving ``model`` is registered at all (live or not): one that is only offline
        may come back; with none, waiting for one is waiting for nothing."""
        return any(w.serves(model) and w.on(hive) for w in self._candidates(model))

    def hold(self, worker_ids: set[str]) -> None:
        """Route nothing new to these workers (and let go of those held before): a cold start that has
        waited too long for them to go idle so they can be evicted (:mod:`rbee.queen.cold_start`).
        Requests for their model wait in the admission queue meanwhile."""
        self._held = set(worker_ids)
        self._changed()

    def knows_model(self, model: str | None, hive: str | None = None, exclude: frozenset[str] = frozenset(),
                    capability: Capability = Capability.GENERATE) -> bool:
        """Some live worker (on ``hive``) serves ``model`` with ``capability`` and has not failed this request
        (``exclude``): worth waiting for."""
        return any(w.can(model, capability) and w.on(hive) and w.worker_id not in exclude
                   for w in self._candidates(model) if w.state != WorkerState.OFFLINE)

    def live(self) -> list[WorkerRecord]:
        return [w for w in self._workers.values() if w.state != WorkerState.OFFLINE]

    def hive_names(self) -> set[str]:
        """The hives (node names) that have workers here."""
        return {w.reg.node_name for w in self._workers.values()}

    # ------------------------------------------------------------ liveness

    def seen(self, worker_id: str) -> None:
        """A sign of life (probe answered, hive heartbeat): back into routing if it had dropped out."""
        record = self._workers.get(worker_id)
        if record is None:
            return
        record.last_seen = self._clock()
        record.failures = 0
        if record.state == WorkerState.OFFLINE:
            record.state = WorkerState.IDLE
            self._settle(record)
            self._changed()

    def unvouched(self, window: float) -> list[WorkerRecord]:
        """The workers the queen must probe itself: no hive heartbeat has vouched for them within
        ``window`` seconds (never, for a worker registered on its own)."""
        now = self._clock()
        return [r for r in self._workers.values() if r.vouched_at is None or now - r.vouched_at > window]

    def full(self, worker_id: str) -> None:
        """The worker answered ``ALL_SLOTS_BUSY``: it has no room whatever our leases say, until it shows
        some (a heartbeat or probe saying idle, or one of our leases on it given back). Without this a
        retry lands on it again at once and loses the same race."""
        record = self._workers.get(worker_id)
        if record is not None:
            record.full = True
            self._settle(record)

    def room_seen(self, worker_id: str) -> None:
        """The worker said it is idle (its health answer): a worker marked full has room again."""
        record = self._workers.get(worker_id)
        if record is not None and record.full:
            record.full = False
            self._settle(record)
            self._changed()

    def unreachable(self, worker_id: str) -> None:
        """A refused connection on dispatch: out of routing at once, until it answers again."""
        record = self._workers.get(worker_id)
        if record is not None:
            record.failures += 1
            record.state = WorkerState.OFFLINE

    def expire(self, heartbeat_timeout: float, remove_after: float) -> tuple[list[str], list[WorkerRecord]]:
        """Silent workers leave routing after ``heartbeat_timeout`` and the registry after ``remove_after``.

        Returns (ids that just went offline, records removed). A removed worker's leases die with it.
        """
        now = self._clock()
        offline, removed = [], []
        for record in list(self._workers.values()):
            silent = now - record.last_seen
            if silent > remove_after:
                removed.append(self._workers.pop(record.worker_id))
                self._unindex(record)
            elif silent > heartbeat_timeout and record.state != WorkerState.OFFLINE:
                record.state = WorkerState.OFFLINE
                offline.append(record.worker_id)
        return offline, removed

    def release(self, lease: Lease, *, held: bool = True) -> None:
        """Return a slot. Safe to call twice, and after the worker was removed. ``held``: the worker gave
        the lease a slot, free there now (one refused with ``ALL_SLOTS_BUSY`` never had one)."""
        record = self._workers.get(lease.worker_id)
        if record is not None and lease.lease_id in record.leases:
            record.leases.discard(lease.lease_id)
            if held:
                record.full = False  # the slot our lease held there is free now
            self._settle(record)
            self._changed()


def not_served(model: str | None, capability: Capability, live: list[WorkerRecord]) -> RbeeError:
    """404 MODEL_NOT_FOUND for a model no live worker serves with ``capability``, naming the workers that
    could serve this kind of request (their models), and what the model's own workers do instead."""
    able = [w for w in live if w.reg.capability == capability]
    known = sorted({w.reg.model_ref for w in able})
    other = sorted(w.worker_id for w in live if w.serves(model) and w.reg.capability != capability)
    details = {"model": model, "available": known}
    if capability == Capability.EMBEDDINGS:
        details["embedding_workers"] = sorted(w.worker_id for w in able)
        served = f"Embeddings workers serve: {', '.join(known)}." if known else "No worker is started for embeddings."
        message = (f"No worker serves embeddings for model '{model}'. {served} Start one with "
                   "`llm-worker-rbee --embeddings` (or spawn it on a hive with \"embeddings\": true) and retry.")
        if other:
            message += f" ({', '.join(other)} serve '{model}' for generation only.)"
        return RbeeError(ErrorCode.MODEL_NOT_FOUND, message, details)
    message = (f"No worker serves model '{model}'. Available: {', '.join(known) or 'none'}. "
               "Pick one of those or spawn a worker for this model.")
    if other:
        message += f" ({', '.join(other)} serve '{model}' for embeddings only: POST /v1/embeddings.)"
    return RbeeError(ErrorCode.MODEL_NOT_FOUND, message, details)

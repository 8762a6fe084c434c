"""Routing with a fleet: 1,000 workers over 100 models. The pick must still be the least-loaded (ties
rotating) or cache-aware one among the model's own workers, and the model index must follow workers
that change model, leave, or fall silent. Correctness only: the timing is bench/routing.py's."""

from __future__ import annotations

import pytest

from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import WorkerRegistration, WorkerState
from rbee.queen.registry import Registry
from rbee.queen.scheduler import Route

MODELS, PER_MODEL, SLOTS = 100, 10, 4


def fleet(clock=None) -> Registry:
    registry = Registry() if clock is None else Registry(clock=clock)
    for i in range(MODELS * PER_MODEL):
        registry.register(WorkerRegistration(worker_id=f"w{i}", url=f"http://127.0.0.1:{10000 + i}",
                                             model_ref=f"m{i % MODELS}", slots_total=SLOTS))
    return registry


def workers_of(model: int) -> list[str]:
    return [f"w{i}" for i in range(model, MODELS * PER_MODEL, MODELS)]


def test_each_lease_goes_to_a_least_loaded_worker_of_its_model():
    registry = fleet()
    taken: dict[str, int] = {}
    for _ in range(PER_MODEL * SLOTS):
        lease = registry.acquire("m7")
        assert lease.worker_id in workers_of(7) and lease.model_ref == "m7"
        most = max(SLOTS - taken.get(w, 0) for w in workers_of(7))
        assert SLOTS - taken.get(lease.worker_id, 0) == most  # it had the most free slots
        taken[lease.worker_id] = taken.get(lease.worker_id, 0) + 1
    assert set(taken) == set(workers_of(7)) and set(taken.values()) == {SLOTS}
    with pytest.raises(RbeeError) as busy:
        registry.acquire("m7")
    assert busy.value.code == ErrorCode.NO_IDLE_WORKERS and busy.value.details == {"workers": PER_MODEL}
    assert registry.acquire("m8").worker_id in workers_of(8)  # other models untouched


def test_ties_rotate_so_the_first_leases_spread_over_every_worker_of_the_model():
    registry = fleet()
    first = [registry.acquire("m3").worker_id for _ in range(PER_MODEL)]
    assert sorted(first) == sorted(workers_of(3)) and first[0] == workers_of(3)[0]


def test_cache_match_wins_among_many_within_the_load_gap():
    registry = fleet()
    favourite = workers_of(42)[6]
    lease = registry.acquire("m42", affinity=lambda w: 3 if w.worker_id == favourite else 0)
    assert (lease.worker_id, lease.route) == (favourite, Route.CACHE)
    for _ in range(3):  # load it until it is more than max_load_gap (2) slots behind the others
        registry.acquire("m42", affinity=lambda w: 3 if w.worker_id == favourite else 0)
    lease = registry.acquire("m42", affinity=lambda w: 3 if w.worker_id == favourite else 0)
    assert lease.worker_id != favourite and lease.route == Route.LOAD


def test_exclude_hive_and_held_still_apply():
    registry = fleet()
    mine = workers_of(5)
    assert registry.acquire("m5", exclude=frozenset(mine[:9])).worker_id == mine[9]
    registry.hold(set(mine[1:]))
    assert {registry.acquire("m5").worker_id for _ in range(SLOTS)} == {mine[0]}
    assert not registry.has_room("m5")
    with pytest.raises(RbeeError) as tried:
        registry.acquire("m6", exclude=frozenset(workers_of(6)))
    assert tried.value.code == ErrorCode.NO_WORKERS
    with pytest.raises(RbeeError) as pinned:
        registry.acquire("m6", hive="elsewhere")
    assert pinned.value.code == ErrorCode.NO_WORKERS


def test_the_index_follows_a_worker_that_changes_model_or_leaves():
    registry = fleet()
    registry.register(WorkerRegistration(worker_id="w0", url="http://127.0.0.1:10000", model_ref="fresh",
                                         slots_total=SLOTS))
    assert registry.acquire("fresh").worker_id == "w0"
    assert "w0" not in {registry.acquire("m0").worker_id for _ in range((PER_MODEL - 1) * SLOTS)}
    for worker_id in workers_of(1):
        registry.remove(worker_id)
    assert not registry.registered("m1") and not registry.knows_model("m1")
    with pytest.raises(RbeeError) as gone:
        registry.acquire("m1")
    assert gone.value.code == ErrorCode.MODEL_NOT_FOUND


def test_silent_workers_leave_the_index_and_offline_ones_are_skipped():
    now = [0.0]
    registry = fleet(clock=lambda: now[0])
    for worker_id in workers_of(2)[1:]:
        registry.set_state(worker_id, WorkerState.OFFLINE)
    assert {registry.acquire("m2").worker_id for _ in range(SLOTS)} == {workers_of(2)[0]}
    now[0] = 100.0
    _, removed = registry.expire(heartbeat_timeout=5, remove_after=60)
    assert len(removed) == MODELS * PER_MODEL and not registry.registered("m2")

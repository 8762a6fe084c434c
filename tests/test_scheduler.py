"""Routing policy: the least-loaded pick (rbee/queen/scheduler.py) and the registry's use of it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import WorkerRegistration, WorkerState
from rbee.queen.registry import Registry
from rbee.queen.scheduler import pick_least_loaded


@dataclass
class Candidate:
    name: str
    slots_available: int


def names(picks: list[Candidate]) -> list[str]:
    return [c.name for c in picks]


# ---------------------------------------------------------------- the pick itself


def test_the_candidate_with_the_most_free_slots_wins_wherever_it_is_listed():
    a, b, c = Candidate("a", 1), Candidate("b", 3), Candidate("c", 2)
    for order in ([a, b, c], [b, c, a], [c, a, b]):
        assert [pick_least_loaded(order, turn).name for turn in range(4)] == ["b"] * 4


def test_ties_rotate_with_the_turn_and_the_less_free_one_is_never_picked():
    tied = [Candidate("a", 2), Candidate("b", 2), Candidate("c", 1), Candidate("d", 2)]
    assert names([pick_least_loaded(tied, turn) for turn in range(6)]) == ["a", "b", "d", "a", "b", "d"]


def test_a_single_candidate_is_picked_even_with_no_free_slot_reported():
    assert pick_least_loaded([Candidate("only", 0)], 7).name == "only"


def test_no_candidates_is_an_error_not_a_pick():
    with pytest.raises(ValueError):
        pick_least_loaded([], 0)


# ---------------------------------------------------------------- through the registry


def registry(*workers: tuple[str, int, str]) -> Registry:
    r = Registry(clock=lambda: 1000.0)
    for i, (worker_id, slots, model) in enumerate(workers):
        r.register(WorkerRegistration(worker_id=worker_id, url=f"http://127.0.0.1:{9001 + i}", model_ref=model,
                                      slots_total=slots))
    return r


def test_acquire_fills_the_emptiest_worker_first_so_load_evens_out():
    r = registry(("big", 4, "m"), ("small", 2, "m"))
    picks = [r.acquire("m").worker_id for _ in range(6)]
    # big 4 free vs small 2: big twice (4→3→2), then they alternate at equal room, until both are full
    assert picks[:2] == ["big", "big"]
    assert Counter(picks) == {"big": 4, "small": 2}
    assert r.get("big").slots_available == 0 and r.get("small").slots_available == 0
    with pytest.raises(RbeeError) as info:
        r.acquire("m")
    assert info.value.code == ErrorCode.NO_IDLE_WORKERS


def test_a_released_slot_makes_that_worker_the_least_loaded_again():
    r = registry(("a", 2, "m"), ("b", 2, "m"))
    leases = [r.acquire("m") for _ in range(3)]  # a and b one each, then one of them a second
    twice = Counter(lease.worker_id for lease in leases).most_common(1)[0][0]
    other = "b" if twice == "a" else "a"
    r.release(next(lease for lease in leases if lease.worker_id == twice))
    r.release(next(lease for lease in leases if lease.worker_id == other))
    # now `other` has 2 free, `twice` 1: the next pick must be `other`, whatever the rotation says
    assert r.acquire("m").worker_id == other


def test_excluded_draining_and_offline_workers_are_never_picked():
    r = registry(("tried", 8, "m"), ("draining", 8, "m"), ("offline", 8, "m"), ("left", 1, "m"))
    r.set_state("draining", WorkerState.DRAINING)
    r.unreachable("offline")
    assert r.acquire("m", exclude=frozenset({"tried"})).worker_id == "left"
    with pytest.raises(RbeeError) as info:
        r.acquire("m", exclude=frozenset({"tried"}))
    assert info.value.code == ErrorCode.NO_IDLE_WORKERS


def test_only_workers_serving_the_model_are_candidates():
    r = registry(("roomy", 8, "other-model"), ("right", 1, "m"))
    assert r.acquire("m").worker_id == "right"
    assert r.acquire(None).worker_id == "roomy"  # no model named: any worker, the emptiest

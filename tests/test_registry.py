"""The queen's registry and leases: pure logic, no processes."""

import pytest

from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import WorkerRegistration, WorkerState
from rbee.queen.registry import Registry


def reg(worker_id="w1", url="http://127.0.0.1:9001", model="tinyllama-q4", slots=2):
    return WorkerRegistration(worker_id=worker_id, url=url, model_ref=model, slots_total=slots)


def code_of(excinfo) -> ErrorCode:
    return excinfo.value.code


def test_register_is_new_then_idempotent():
    r = Registry()
    assert r.register(reg()) is True
    assert r.register(reg(slots=3)) is False
    [only] = r.list()
    assert only.reg.slots_total == 3


def test_conflicting_url_is_refused_and_changes_nothing():
    r = Registry()
    r.register(reg())
    with pytest.raises(RbeeError) as e:
        r.register(reg(url="http://127.0.0.1:9999", slots=7))
    assert code_of(e) == ErrorCode.WORKER_ALREADY_REGISTERED and e.value.status == 409
    assert r.get("w1").reg.url == "http://127.0.0.1:9001" and r.get("w1").reg.slots_total == 2


def test_trailing_slash_is_the_same_address():
    r = Registry()
    r.register(reg(url="http://127.0.0.1:9001/"))
    assert r.register(reg(url="http://127.0.0.1:9001")) is False


def test_empty_registry_is_no_workers():
    with pytest.raises(RbeeError) as e:
        Registry().acquire()
    assert code_of(e) == ErrorCode.NO_WORKERS and e.value.retry_after


def test_unknown_model_is_model_not_found():
    r = Registry()
    r.register(reg())
    with pytest.raises(RbeeError) as e:
        r.acquire("other")
    assert code_of(e) == ErrorCode.MODEL_NOT_FOUND and e.value.details["available"] == ["tinyllama-q4"]


def test_leases_never_double_book_and_return():
    r = Registry()
    r.register(reg(slots=2))
    a, b = r.acquire(), r.acquire()
    assert a.lease_id != b.lease_id
    assert r.get("w1").state == WorkerState.BUSY and r.get("w1").slots_available == 0
    with pytest.raises(RbeeError) as e:
        r.acquire()
    assert code_of(e) == ErrorCode.NO_IDLE_WORKERS
    r.release(a)
    r.release(a)  # twice is harmless
    assert r.get("w1").slots_available == 1 and r.get("w1").state == WorkerState.IDLE


def test_least_loaded_first_and_ties_rotate():
    r = Registry()
    r.register(reg("a", "http://127.0.0.1:1", slots=4))
    r.register(reg("b", "http://127.0.0.1:2", slots=4))
    picks = [r.acquire().worker_id for _ in range(4)]
    assert sorted(picks) == ["a", "a", "b", "b"]  # always the one with more room


def test_model_aliases_match_file_names():
    r = Registry()
    r.register(reg(model="hf:org/repo:Model-Q4.gguf"))
    assert r.acquire("Model-Q4").worker_id == "w1"
    r.register(reg("w2", "http://127.0.0.1:2", model="file:///models/other.gguf"))
    assert r.acquire("other.gguf").worker_id == "w2"


def test_release_after_removal_is_harmless():
    r = Registry()
    r.register(reg())
    lease = r.acquire()
    r.remove("w1")
    r.release(lease)
    assert len(r) == 0


def test_patched_busy_worker_gets_no_requests():
    r = Registry()
    r.register(reg())
    r.set_state("w1", WorkerState.BUSY)
    with pytest.raises(RbeeError) as e:
        r.acquire()
    assert code_of(e) == ErrorCode.NO_IDLE_WORKERS


def test_heartbeat_moves_loading_to_idle():
    r = Registry()
    r.register(reg())
    r.set_state("w1", WorkerState.LOADING)
    r.heartbeat("w1", WorkerState.IDLE, 2)
    assert r.get("w1").state == WorkerState.IDLE

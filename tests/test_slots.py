"""Slot allocation on the worker is atomic and truthful."""

import pytest

from rbee.errors import ErrorCode, RbeeError
from rbee.worker.slots import SlotTable


def test_last_slot_goes_to_exactly_one_request():
    t = SlotTable(4)
    for i in range(3):
        t.acquire(f"r{i}")
    assert t.acquire("r3") == 3
    with pytest.raises(RbeeError) as e:
        t.acquire("r4")
    assert e.value.code == ErrorCode.ALL_SLOTS_BUSY
    assert e.value.details == {"slots_total": 4, "slots_busy": 4}


def test_release_frees_and_reuses_lowest_slot():
    t = SlotTable(2)
    a = t.acquire("a")
    t.acquire("b")
    t.release(a)
    assert t.available == 1 and t.acquire("c") == a


def test_duplicate_request_id_is_refused():
    t = SlotTable(2)
    t.acquire("same")
    with pytest.raises(RbeeError) as e:
        t.acquire("same")
    assert e.value.code == ErrorCode.INVALID_REQUEST

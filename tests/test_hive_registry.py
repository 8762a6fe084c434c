"""The queen's hive registry: registration, heartbeats, liveness, and which hives a cold start asks."""

from __future__ import annotations

import pytest

from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import HiveHeartbeat, HiveRegistration
from rbee.queen.hive_registry import HiveRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reg(hive_id: str, models: list[str] | None = None) -> HiveRegistration:
    return HiveRegistration(hive_id=hive_id, url=f"http://{hive_id}:9200", models=models or [])


def test_a_heartbeat_keeps_a_hive_live_and_updates_its_models() -> None:
    clock = Clock()
    hives = HiveRegistry(timeout=5, clock=clock)
    hives.register(reg("a"))
    clock.now += 4
    record = hives.heartbeat("a", HiveHeartbeat(models=["hf:o/r:x.gguf"], workers=2))
    clock.now += 4
    assert hives.is_live(record) and record.models == ["hf:o/r:x.gguf"] and record.workers == 2
    clock.now += 2
    assert not hives.is_live(record)


def test_a_heartbeat_from_an_unknown_hive_is_404() -> None:
    with pytest.raises(RbeeError) as caught:
        HiveRegistry().heartbeat("ghost", HiveHeartbeat())
    assert caught.value.code == ErrorCode.HIVE_NOT_FOUND and caught.value.status == 404


def test_registering_again_keeps_the_first_registration_time() -> None:
    clock = Clock()
    hives = HiveRegistry(clock=clock)
    first = hives.register(reg("a")).registered_at
    clock.now += 30
    assert hives.register(reg("a")).registered_at == first


def test_hives_holding_the_model_come_first_then_any_hive_for_a_downloadable_ref() -> None:
    clock = Clock()
    hives = HiveRegistry(timeout=5, clock=clock)
    hives.register(reg("empty"))
    hives.register(reg("holder", ["hf:org/repo:model.gguf"]))
    assert [h.hive_id for h in hives.candidates("hf:org/repo:model.gguf")] == ["holder", "empty"]
    assert [h.hive_id for h in hives.candidates("model")] == ["holder"]  # the file's stem is an alias
    assert hives.candidates("something-else") == []  # not downloadable, nobody holds it


def test_dead_hives_are_never_asked() -> None:
    clock = Clock()
    hives = HiveRegistry(timeout=5, clock=clock)
    hives.register(reg("old", ["hf:org/repo:model.gguf"]))
    clock.now += 6
    assert hives.candidates("hf:org/repo:model.gguf") == []

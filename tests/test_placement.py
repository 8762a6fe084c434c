"""Placement by memory and eviction, as policies: the hive's ledger and device choice, which idle
workers it evicts, the queen's choice of hive, and holding workers in the way of a waiting model."""

from __future__ import annotations

import asyncio

import pytest

from rbee.errors import ErrorCode, RbeeError
from rbee.hive import eviction, memory
from rbee.hive.footprint import LoadSettings, estimate, read_shape
from rbee.hive.spawn_plan import Ask, plan
from rbee.hive.supervisor import ManagedWorker, WorkerSpec
from rbee.models import default_model_path
from rbee.protocol import DeviceMemory, SpawnPlan, WorkerRegistration
from rbee.queen import placement
from rbee.queen.admission import AdmissionQueue
from rbee.queen.registry import Registry

MIB = 1024 * 1024
GPUS = [{"backend": "cpu", "index": 0, "name": "CPU", "memory_total": 0, "memory_free": 0},
        {"backend": "cuda", "index": 0, "name": "A", "memory_total": 24_000 * MIB, "memory_free": 6_000 * MIB},
        {"backend": "cuda", "index": 1, "name": "B", "memory_total": 24_000 * MIB, "memory_free": 20_000 * MIB},
        {"backend": "cuda", "index": 2, "name": "C", "memory_total": 16_000 * MIB, "memory_free": 9_000 * MIB}]


NO_BUDGETS = memory.Budgets()


def _rows(held=(), *, ram=8_000 * MIB, budgets=NO_BUDGETS, devices=GPUS):
    return memory.ledger(devices, held, ram_total=16_000 * MIB, ram_available=ram, budgets=budgets)


# ---------------------------------------------------------------- the hive's ledger


def test_the_ledger_reports_total_free_and_reserved_per_device():
    rows = _rows([memory.Held("cuda", 1, 300 * MIB, 4_000 * MIB)], budgets=memory.Budgets(ram_bytes=1_000 * MIB))
    host, gpu1 = memory.row(rows, "cpu", 0), memory.row(rows, "cuda", 1)
    assert (host.total_bytes, host.free_bytes, host.reserved_bytes) == (16_000 * MIB, 8_000 * MIB, 300 * MIB)
    assert host.headroom_bytes == 700 * MIB  # within the budget: what the workers here have not reserved
    assert (gpu1.total_bytes, gpu1.reserved_bytes, gpu1.free_bytes) == (24_000 * MIB, 4_000 * MIB, 16_000 * MIB)
    assert gpu1.headroom_bytes == 16_000 * MIB and len(rows) == 4


def test_a_vram_budget_caps_each_device():
    rows = _rows([memory.Held("cuda", 1, 0, 3_000 * MIB)], budgets=memory.Budgets(vram_bytes=5_000 * MIB))
    assert memory.row(rows, "cuda", 1).headroom_bytes == 2_000 * MIB
    assert memory.row(rows, "cuda", 0).headroom_bytes == 5_000 * MIB


def test_without_a_device_the_spawn_takes_the_gpu_with_most_free_memory_that_fits():
    assert memory.pick_device(_rows(), "cuda", 8_000 * MIB) == 1
    # cuda:1 mostly taken by a worker of ours: cuda:2 has the most left now
    assert memory.pick_device(_rows([memory.Held("cuda", 1, 0, 15_000 * MIB)]), "cuda", 8_000 * MIB) == 2
    assert memory.pick_device(_rows(), "cpu", 0) == 0


def test_a_spawn_plan_without_a_device_lands_on_the_roomiest_gpu_and_refuses_with_numbers_when_none_fits():
    need = estimate(read_shape(default_model_path()), LoadSettings(ctx_size=2048, n_gpu_layers=999))
    got = plan(Ask("m", backend="cuda"), need, local=True, devices=GPUS, workers=[], budgets=memory.Budgets(),
               min_resident=0)
    assert got.device == 1 and got.fits and got.wire().needed_device_bytes == need.device_bytes
    tight = [{**d, "memory_free": 50 * MIB} if d["backend"] == "cuda" else d for d in GPUS]
    refused = plan(Ask("m", backend="cuda"), need, local=True, devices=tight, workers=[],
                   budgets=memory.Budgets(), min_resident=0)
    assert not refused.fits
    err = refused.refusal()
    assert err.code == ErrorCode.INSUFFICIENT_VRAM and err.details["needed_bytes"] == need.device_bytes
    assert err.details["available_bytes"] == 50 * MIB and "MiB available" in err.message


def test_a_ram_budget_refuses_with_needed_and_free():
    rows = _rows(budgets=memory.Budgets(ram_bytes=200 * MIB))
    missing = memory.shortfall(rows, "cpu", 0, 250 * MIB, 0)
    assert missing == {"host": 50 * MIB}
    err = memory.refusal("m", rows, "cpu", 0, 250 * MIB, 0, missing)
    assert err.code == ErrorCode.INSUFFICIENT_RAM
    assert (err.details["needed_bytes"], err.details["available_bytes"]) == (250 * MIB, 200 * MIB)


# ---------------------------------------------------------------- eviction


def _c(worker_id, model="other", *, busy=False, started=0.0, active=0.0, host=100 * MIB):
    return eviction.Candidate(worker_id, model, busy, started, active, host, 0, ("cpu", 0))


def test_eviction_takes_the_least_recently_used_idle_worker_first():
    workers = [_c("recent", active=90.0), _c("old", active=10.0), _c("middle", active=50.0)]
    assert eviction.choose(workers, "m", {"host": 80 * MIB}, ("cpu", 0), now=100.0, min_resident=5).evict == ("old",)
    both = eviction.choose(workers, "m", {"host": 150 * MIB}, ("cpu", 0), now=100.0, min_resident=5)
    assert both.evict == ("old", "middle")


def test_eviction_never_takes_a_busy_or_young_worker_nor_one_of_the_same_model():
    workers = [_c("busy", busy=True), _c("young", started=98.0), _c("same", model="m")]
    choice = eviction.choose(workers, "m", {"host": 80 * MIB}, ("cpu", 0), now=100.0, min_resident=5)
    assert choice.evict == () and choice.later  # it fits once the busy or the young one may go
    assert set(choice.blocking) <= {"busy", "young"} and choice.blocking
    never = eviction.choose(workers, "m", {"host": 500 * MIB}, ("cpu", 0), now=100.0, min_resident=5)
    assert never == eviction.Choice()  # even with every other model's worker gone it would not fit


def test_a_worker_being_stopped_makes_a_spawn_wait_even_of_its_own_model():
    leaving = eviction.Candidate("w", "m", False, 0.0, 0.0, 100 * MIB, 0, ("cpu", 0), leaving=True)
    choice = eviction.choose([leaving], "m", {"host": 80 * MIB}, ("cpu", 0), now=100.0, min_resident=5)
    assert choice.evict == () and choice.later and choice.blocking == ("w",)
    assert eviction.reclaimable([leaving], 100.0, 5) == {}


def _managed(worker_id: str, model: str, ram: int, *, started: float, busy: bool = False) -> ManagedWorker:
    w = ManagedWorker(worker_id=worker_id, spec=WorkerSpec(model_ref=model, model_arg=None, ram_bytes=ram),
                      port=1, host="127.0.0.1", process=None, log_path=None, state="ready")  # type: ignore[arg-type]
    w.started_at, w.last_active, w.busy = started, started, busy
    return w


def test_a_hive_plan_evicts_an_idle_worker_of_another_model_when_the_budget_is_full():
    need = estimate(read_shape(default_model_path()), LoadSettings(ctx_size=2048))
    budget = memory.Budgets(ram_bytes=need.host_bytes + 50 * MIB)
    workers = [_managed("w-a", "model-a", need.host_bytes, started=0.0)]
    got = plan(Ask("model-b"), need, local=True, devices=GPUS[:1], workers=workers, budgets=budget,
               min_resident=10, now=100.0)
    assert got.fits and got.choice.evict == ("w-a",)
    young = plan(Ask("model-b"), need, local=True, devices=GPUS[:1], workers=workers, budgets=budget,
                 min_resident=200, now=100.0)
    assert not young.fits and young.choice.later and young.refusal().details["later"] is True


# ---------------------------------------------------------------- the queen's choice of hive


def _plan(free: int, need: int | None, *, evict=(), later=False, fits=True, local=True) -> SpawnPlan:
    return SpawnPlan(model_ref="m", local=local, backend="cpu", device=0, needed_host_bytes=need,
                     needed_device_bytes=0, fits=fits, later=later, evict=list(evict), free_bytes=free,
                     memory=[DeviceMemory(backend="cpu", index=0, headroom_bytes=free)])


def test_the_queen_prefers_the_hive_with_most_headroom_after_the_estimate():
    offers = [placement.Offer("small", _plan(300 * MIB, 250 * MIB)), placement.Offer("big", _plan(900 * MIB, 250 * MIB)),
              placement.Offer("evicting", _plan(100 * MIB, 250 * MIB, evict=["w1"])),
              placement.Offer("fetching", _plan(2_000 * MIB, None, local=False))]
    assert placement.decide(offers).order == ["big", "small", "evicting", "fetching"]


def test_a_hive_that_must_download_is_judged_by_another_hives_estimate():
    offers = [placement.Offer("holds", _plan(100 * MIB, 250 * MIB, fits=False)),
              placement.Offer("fetch-small", _plan(200 * MIB, None, local=False)),
              placement.Offer("fetch-big", _plan(400 * MIB, None, local=False))]
    decision = placement.decide(offers)
    assert decision.order == ["fetch-big"] and len(decision.refused) == 2


def test_nothing_fitting_anywhere_is_507_with_needed_and_free_per_hive():
    offers = [placement.Offer("a", _plan(100 * MIB, 250 * MIB, fits=False)),
              placement.Offer("b", _plan(50 * MIB, 250 * MIB, fits=False))]
    decision = placement.decide(offers)
    assert decision.order == [] and decision.later == []
    err = placement.no_room("m", offers)
    assert err.code == ErrorCode.INSUFFICIENT_RESOURCES and err.status == 507
    assert [(h["hive_id"], h["needed_bytes"], h["free_bytes"]) for h in err.details["hives"]] == [
        ("a", 250 * MIB, 100 * MIB), ("b", 250 * MIB, 50 * MIB)]


def test_a_hive_where_it_fits_later_is_waited_for():
    decision = placement.decide([placement.Offer("a", SpawnPlan(
        model_ref="m", local=True, backend="cpu", needed_host_bytes=250 * MIB, fits=False, later=True,
        blocking=["w-a"], free_bytes=0))])
    assert decision.order == [] and decision.later == ["a"] and decision.blocking == {"a": ["w-a"]}


# ---------------------------------------------------------------- holding workers in the way


def _registry() -> Registry:
    r = Registry()
    r.register(WorkerRegistration(worker_id="w-a", url="http://127.0.0.1:1", model_ref="model-a", backend="cpu",
                                  device=0, node_name="h", slots_total=1))
    return r


def test_a_held_worker_takes_no_new_request_and_its_queue_hears_when_it_is_gone():
    async def scenario():
        registry = _registry()
        queue = AdmissionQueue(registry, max_size=8, timeout=30)
        registry.hold({"w-a"})
        assert not registry.has_room("model-a")
        waiting = asyncio.ensure_future(queue.admit("model-a"))
        await asyncio.sleep(0)
        assert not waiting.done() and len(queue) == 1  # held: it waits, in order, rather than landing there
        registry.remove("w-a")  # evicted by its hive for another model
        with pytest.raises(RbeeError) as gone:
            await asyncio.wait_for(waiting, 5)
        assert gone.value.code == ErrorCode.MODEL_NOT_FOUND  # so the dispatcher cold-starts it again

    asyncio.run(scenario())


def test_letting_go_of_a_hold_hands_the_worker_to_the_first_waiter():
    async def scenario():
        registry = _registry()
        queue = AdmissionQueue(registry, max_size=8, timeout=30)
        registry.hold({"w-a"})
        waiting = asyncio.ensure_future(queue.admit("model-a"))
        await asyncio.sleep(0)
        registry.hold(set())
        lease, _ = await asyncio.wait_for(waiting, 5)
        assert lease.worker_id == "w-a"

    asyncio.run(scenario())

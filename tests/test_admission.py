"""The queen's admission queue: bounded, FIFO per key, fair across keys, a freed lease handed to the
first in line. Pure asyncio over a real Registry: no processes, no sleeps (waiters are observed
through the ``on_wait`` note each one gets as it starts waiting)."""

from __future__ import annotations

import asyncio

import pytest

from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import WorkerRegistration
from rbee.queen.admission import AdmissionQueue
from rbee.queen.registry import Lease, Registry


def registry_with(slots: int = 1, model: str = "tinyllama-q4") -> Registry:
    registry = Registry()
    registry.register(WorkerRegistration(worker_id="w1", url="http://127.0.0.1:9001", model_ref=model,
                                         slots_total=slots))
    return registry


class Line:
    """Clients queueing at one AdmissionQueue, each a task; ``join`` returns once it is waiting in line."""

    def __init__(self, queue: AdmissionQueue) -> None:
        self.queue = queue
        self.notes: dict[str, list[str]] = {}
        self.served: list[str] = []

    async def join(self, name: str, key: str = "", model: str | None = None, *, then_release: bool = False
                   ) -> asyncio.Task[tuple[Lease, float]]:
        waiting = asyncio.Event()

        async def on_wait(note) -> None:
            # the note as the client reads it (a typed note renders itself as its SSE comment)
            self.notes.setdefault(name, []).append(note.comment() if hasattr(note, "comment") else note)
            waiting.set()

        async def client() -> tuple[Lease, float]:
            lease, waited = await self.queue.admit(model, key, on_wait=on_wait)
            self.served.append(name)
            if then_release:  # done at once: the slot goes back, as the dispatcher gives it back
                self.release(lease)
            return lease, waited

        task = asyncio.create_task(client())
        await asyncio.wait({task, asyncio.create_task(waiting.wait())}, return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), f"{name} was not queued, but answered: {task.exception() or task.result()}"
        return task

    def release(self, lease: Lease) -> None:
        self.queue.registry.release(lease)
        self.queue.slot_freed()


def refused(info: pytest.ExceptionInfo[RbeeError], code: ErrorCode) -> RbeeError:
    err = info.value
    assert err.code == code and err.status == 503 and err.retry_after and err.retry_after >= 1, err
    return err


# ---------------------------------------------------------------- no waiting


def test_a_free_slot_is_taken_at_once_without_waiting():
    async def scenario():
        queue = AdmissionQueue(registry_with(slots=1), max_size=4, timeout=10)
        lease, waited = await queue.admit(None)
        assert lease.worker_id == "w1" and waited == 0.0
        assert len(queue) == 0 and queue.registry.get("w1").slots_available == 0

    asyncio.run(scenario())


def test_without_a_queue_timeout_a_busy_fleet_refuses_at_once():
    async def scenario():
        queue = AdmissionQueue(registry_with(slots=1), max_size=4, timeout=0)
        await queue.admit(None)
        with pytest.raises(RbeeError) as info:
            await queue.admit(None)
        refused(info, ErrorCode.NO_IDLE_WORKERS)
        assert len(queue) == 0

    asyncio.run(scenario())


def test_a_model_nobody_serves_is_not_found_even_while_others_wait():
    async def scenario():
        queue = AdmissionQueue(registry_with(slots=1), max_size=4, timeout=30)
        held, _ = await queue.admit(None)
        line = Line(queue)
        waiting = await line.join("a")
        with pytest.raises(RbeeError) as info:
            await queue.admit("no-such-model")
        assert info.value.code == ErrorCode.MODEL_NOT_FOUND and info.value.status == 404
        assert len(queue) == 1  # the refusal took no place in line
        line.release(held)
        await waiting

    asyncio.run(scenario())


# ---------------------------------------------------------------- bounded


def test_a_full_queue_refuses_at_once_and_keeps_those_already_waiting():
    async def scenario():
        queue = AdmissionQueue(registry_with(slots=1), max_size=1, timeout=30)
        held, _ = await queue.admit(None)
        line = Line(queue)
        first = await line.join("first")
        with pytest.raises(RbeeError) as info:
            await queue.admit(None)
        err = refused(info, ErrorCode.NO_IDLE_WORKERS)
        assert "queue is full" in err.message and err.details == {"queued": 1}, err
        line.release(held)
        lease, _ = await first
        assert lease.worker_id == "w1" and line.served == ["first"]

    asyncio.run(scenario())


# ---------------------------------------------------------------- hand-off


def test_a_freed_lease_goes_to_the_first_waiter_and_a_newcomer_cannot_overtake():
    async def scenario():
        queue = AdmissionQueue(registry_with(slots=1), max_size=4, timeout=30)
        held, _ = await queue.admit(None)
        line = Line(queue)
        first = await line.join("first")
        line.release(held)
        # The slot is already the first waiter's, though its task has not run yet: a newcomer arriving
        # now finds no room and has to queue behind.
        assert queue.registry.get("w1").slots_available == 0
        newcomer = await line.join("newcomer")
        lease, waited = await first
        assert lease.worker_id == "w1" and waited > 0 and line.served == ["first"]
        assert not newcomer.done() and len(queue) == 1
        line.release(lease)
        await newcomer
        assert line.served == ["first", "newcomer"]

    asyncio.run(scenario())


def test_one_key_is_served_in_arrival_order_and_told_its_place():
    async def scenario():
        queue = AdmissionQueue(registry_with(slots=1), max_size=8, timeout=30)
        held, _ = await queue.admit(None, "alice")
        line = Line(queue)
        tasks = [await line.join(name, "alice", then_release=True) for name in ("a1", "a2", "a3")]
        assert {name: notes[0] for name, notes in line.notes.items()} == {
            "a1": "queued position=1", "a2": "queued position=2", "a3": "queued position=3"}
        line.release(held)
        await asyncio.gather(*tasks)
        assert line.served == ["a1", "a2", "a3"]
        assert len(queue) == 0 and queue.registry.get("w1").slots_available == 1

    asyncio.run(scenario())


def test_waiting_keys_take_turns_each_keys_requests_in_arrival_order():
    async def scenario():
        queue = AdmissionQueue(registry_with(slots=1), max_size=8, timeout=30)
        held, _ = await queue.admit(None, "alice")
        line = Line(queue)
        tasks = [await line.join(name, key, then_release=True)
                 for name, key in (("a1", "alice"), ("a2", "alice"), ("a3", "alice"), ("b1", "bob"),
                                   ("c1", "carol"), ("b2", "bob"))]
        # Each is told the place the rotation will serve it at, not how many came before it.
        told = {name: int(notes[0].rsplit("=", 1)[1]) for name, notes in line.notes.items()}
        assert told == {"a1": 1, "a2": 2, "a3": 3, "b1": 2, "c1": 3, "b2": 5}
        line.release(held)
        await asyncio.gather(*tasks)
        # alice's a1 first (she came first), then bob, carol, alice, bob, alice: one each per round.
        assert line.served == ["a1", "b1", "c1", "a2", "b2", "a3"]

    asyncio.run(scenario())


def two_models() -> Registry:
    registry = registry_with(slots=1, model="model-a")
    registry.register(WorkerRegistration(worker_id="w2", url="http://127.0.0.1:9002", model_ref="model-b",
                                         slots_total=1))
    return registry


def test_waiters_are_served_only_by_a_worker_of_their_model():
    async def scenario():
        queue = AdmissionQueue(two_models(), max_size=8, timeout=30)
        held_a, _ = await queue.admit("model-a")
        held_b, _ = await queue.admit("model-b")
        line = Line(queue)
        wants_a = await line.join("wants-a", "alice", model="model-a")
        wants_b = await line.join("wants-b", "bob", model="model-b")
        line.release(held_b)  # only the one waiting for model-b can use this slot, though it came second
        lease_b, _ = await wants_b
        assert lease_b.worker_id == "w2" and not wants_a.done()
        line.release(held_a)
        lease_a, _ = await wants_a
        assert lease_a.worker_id == "w1"

    asyncio.run(scenario())


def test_one_keys_waiter_for_another_model_is_not_held_up_by_its_first():
    async def scenario():
        queue = AdmissionQueue(two_models(), max_size=8, timeout=0.2)
        await queue.admit("model-a")  # w1 stays busy
        held_b, _ = await queue.admit("model-b")
        line = Line(queue)
        await line.join("wants-a", "alice", model="model-a")
        wants_b = await line.join("wants-b", "alice", model="model-b")
        line.release(held_b)
        lease_b, _ = await wants_b  # it was QUEUE_TIMEOUT, with w2 idle all along
        assert lease_b.worker_id == "w2"

    asyncio.run(scenario())


# ---------------------------------------------------------------- leaving the line


def test_a_waiter_that_waits_too_long_is_refused_with_queue_timeout_and_leaves_the_line():
    async def scenario():
        queue = AdmissionQueue(registry_with(slots=1), max_size=4, timeout=0.05)
        held, _ = await queue.admit(None)
        line = Line(queue)
        late = await line.join("late")
        with pytest.raises(RbeeError) as info:
            await late
        err = refused(info, ErrorCode.QUEUE_TIMEOUT)
        assert err.details == {"queue_timeout_s": 0.05} and "0.05s" in err.message, err
        assert len(queue) == 0 and line.served == []
        line.release(held)  # nobody left to hand it to: the slot is simply free again
        assert queue.registry.get("w1").slots_available == 1

    asyncio.run(scenario())


def test_a_waiter_whose_client_leaves_gives_its_place_to_the_next():
    async def scenario():
        queue = AdmissionQueue(registry_with(slots=1), max_size=4, timeout=30)
        held, _ = await queue.admit(None)
        line = Line(queue)
        gone = await line.join("gone")
        stays = await line.join("stays")
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert len(queue) == 1
        line.release(held)
        lease, _ = await stays
        assert lease.worker_id == "w1" and line.served == ["stays"]

    asyncio.run(scenario())


# ---------------------------------------------------------------- Retry-After


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def monotonic(self) -> float:
        return self.now


def test_retry_after_follows_how_fast_slots_have_been_freeing():
    clock = FakeClock()
    queue = AdmissionQueue(registry_with(slots=1), max_size=4, timeout=30, clock=clock.monotonic)
    assert queue.retry_after() == 2  # nothing known yet
    for _ in range(2):
        queue.slot_freed()
        clock.now += 10
    # 2 slots freed in the last 20 s: one every 10 s, so the next one (for 1 caller) in 10 s
    assert queue.retry_after() == 10
    clock.now += 61
    assert queue.retry_after() == 2  # what is over a minute old says nothing any more

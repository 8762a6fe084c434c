"""Slot allocation on the worker is atomic and truthful; cancel returns once the slot is free."""

import asyncio
import threading
import time

import pytest

from rbee.errors import ErrorCode, RbeeError
from rbee.events import Done, Token
from rbee.worker.engine_api import Job, Sampling, Work
from rbee.worker.slots import Outbox, SlotPool, SlotTable


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


# ---------------------------------------------------------------- the async bridge (SlotPool)


class ThreadedBackend:
    """Stands in for the engine: a thread that emits a token every few ms until told to stop."""

    def __init__(self) -> None:
        self.jobs: dict[str, tuple] = {}
        self.lock = threading.Lock()

    def submit(self, job: Job) -> None:
        self.run(job.work.request_id, job.emit, job.on_finish, job.work.max_tokens)

    def run(self, request_id, emit, on_finish, n) -> None:
        stop = threading.Event()
        with self.lock:
            self.jobs[request_id] = (stop, emit, on_finish)

        def run() -> None:
            for i in range(n):
                if stop.wait(0.002):
                    break
                emit(Token("x", i))
            time.sleep(0.02)  # freeing the slot takes a while: cancel must still wait for it
            on_finish()
            emit(Done(0, 0, "cancelled" if stop.is_set() else "length"))

        threading.Thread(target=run, daemon=True).start()

    def cancel(self, request_id, on_done) -> None:
        with self.lock:
            entry = self.jobs.get(request_id)
        if entry:
            entry[0].set()
        threading.Thread(target=lambda: (time.sleep(0.03), on_done(entry is not None)), daemon=True).start()


def _job(request_id: str, n: int) -> Work:
    return Work(request_id=request_id, prompt_tokens=[1], max_tokens=n, sampling=Sampling(), stop=[])


def test_cancel_returns_once_the_slot_is_free_and_the_stream_ends_cancelled():
    async def scenario():
        pool = SlotPool(ThreadedBackend(), 2)
        gen = pool.start(_job("a", 10_000))
        events = gen.events()
        assert isinstance(await events.__anext__(), Token)
        assert await pool.cancel("a") is True
        assert pool.table.available == 2 and pool.running == 0
        rest = [e async for e in events]
        assert rest[-1] == Done(0, 0, "cancelled")
        assert await pool.cancel("a") is False  # idempotent
        assert await pool.cancel("never-seen") is False

    asyncio.run(scenario())


def test_events_arrive_in_order_and_grouped_when_the_reader_is_slow():
    async def scenario():
        pool = SlotPool(ThreadedBackend(), 1)
        gen = pool.start(_job("a", 50))
        await asyncio.sleep(0.2)  # let events pile up
        batches = [b async for b in gen.batches()]
        flat = [e for b in batches for e in b]
        assert [e.index for e in flat if isinstance(e, Token)] == list(range(50))
        assert isinstance(flat[-1], Done) and len(batches) < len(flat)

    asyncio.run(scenario())


def test_draining_refuses_new_work_and_cancel_all_stops_the_rest():
    async def scenario():
        pool = SlotPool(ThreadedBackend(), 2)
        pool.start(_job("a", 10_000))
        pool.start(_job("b", 10_000))
        pool.draining = True
        with pytest.raises(RbeeError) as e:
            pool.start(_job("c", 1))
        assert e.value.code == ErrorCode.DRAINING
        assert await pool.wait_idle(0.05) is False
        assert await pool.cancel_all() == 2
        assert pool.table.available == 2 and await pool.wait_idle(0) is True

    asyncio.run(scenario())


def test_outbox_wakes_the_loop_once_per_burst():
    async def scenario():
        loop = asyncio.get_running_loop()
        outbox, seen = Outbox(loop), []
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counting(*args):
            nonlocal wakeups
            wakeups += 1
            return original(*args)

        loop.call_soon_threadsafe = counting
        try:
            t = threading.Thread(target=lambda: [outbox.put(seen.append, i) for i in range(100)])
            t.start()
            t.join()
            await asyncio.sleep(0.01)
        finally:
            del loop.call_soon_threadsafe
        assert seen == list(range(100)) and wakeups == 1

    asyncio.run(scenario())


def test_deferred_outbox_delivers_only_on_flush_in_order_and_once_per_flush():
    async def scenario():
        loop = asyncio.get_running_loop()
        outbox, seen, delivered = Outbox(loop, deferred=True), [], asyncio.Event()

        def decode_thread() -> None:  # as the engine: a step's events, then a flush, three times
            for step in range(3):
                for i in range(4):
                    outbox.put(seen.append, (step, i))
                outbox.flush()
                outbox.flush()  # nothing new: no second wake-up
            outbox.put(lambda: loop.call_soon(delivered.set))
            outbox.flush()

        outbox.put(seen.append, "early")
        await asyncio.sleep(0.05)
        assert seen == []  # nothing reaches the loop before a flush
        t = threading.Thread(target=decode_thread)
        t.start()
        await asyncio.wait_for(delivered.wait(), 5)
        t.join()
        assert seen == ["early"] + [(s, i) for s in range(3) for i in range(4)]
        outbox.close()
        outbox.close()  # idempotent

    asyncio.run(scenario())


def test_pool_with_a_flushing_engine_streams_every_event():
    class FlushingBackend(ThreadedBackend):
        """Emits as the engine does: events queue, and a flush after each one sends them."""

        def set_flush(self, flush) -> None:
            self.flush = flush

        def submit(self, job: Job) -> None:
            def emit_and_flush(event) -> None:
                job.emit(event)
                self.flush()

            self.run(job.work.request_id, emit_and_flush, lambda: (job.on_finish(), self.flush()), job.work.max_tokens)

    async def scenario():
        pool = SlotPool(FlushingBackend(), 2)
        gens = [pool.start(_job(r, 20)) for r in ("a", "b")]
        async def collect(gen):
            return [e async for e in gen.events()]

        streams = await asyncio.wait_for(asyncio.gather(*map(collect, gens)), 10)
        for events in streams:
            assert [e.index for e in events if isinstance(e, Token)] == list(range(20))
            assert isinstance(events[-1], Done)
        assert pool.table.available == 2
        pool.close()

    asyncio.run(scenario())

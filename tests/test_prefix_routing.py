"""Cache-aware routing: prefix hashes cut where the queen can cut without a tokenizer, the index's
depth per worker, and the pick's load bound (a miss never goes to the busiest worker by habit)."""

from __future__ import annotations

from dataclasses import dataclass

from rbee.prefix import BLOCK_CHARS, from_wire, prefix_hashes, to_wire
from rbee.protocol import InferenceRequest, WorkerRegistration
from rbee.queen.prefix_index import PrefixIndex
from rbee.queen.registry import Registry
from rbee.queen.scheduler import Route, pick
from rbee.worker.prompt_cache import Holdings


def chat(*turns: str) -> InferenceRequest:
    roles = ["user", "assistant"]
    return InferenceRequest(messages=[{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)])


def test_a_conversations_next_turn_extends_its_hashes():
    one, three = prefix_hashes(chat("hi")), prefix_hashes(chat("hi", "hello!", "how are you?"))
    assert three[:1] == one and len(three) == 3
    assert prefix_hashes(chat("ho", "hello!", "how are you?"))[1:] != three[1:]  # chained: a change early changes all


def test_raw_prompts_are_cut_in_blocks():
    text = "x" * (BLOCK_CHARS * 2 + 5)
    hashes = prefix_hashes(InferenceRequest(prompt=text))
    assert len(hashes) == 3 and prefix_hashes(InferenceRequest(prompt=text[:BLOCK_CHARS]))[0] == hashes[0]


def test_depth_counts_the_leading_blocks_a_worker_was_sent():
    index = PrefixIndex()
    index.record("w1", prefix_hashes(chat("a", "b")))
    assert index.depth("w1", prefix_hashes(chat("a", "b", "c", "d"))) == 2
    assert index.depth("w1", prefix_hashes(chat("z", "b"))) == 0
    assert index.depth("w2", prefix_hashes(chat("a"))) == 0


def test_the_index_is_bounded_per_worker():
    index = PrefixIndex(per_worker=4)
    for i in range(10):
        index.record("w1", prefix_hashes(chat(f"turn {i}")))
    assert index.depth("w1", prefix_hashes(chat("turn 0"))) == 0
    assert index.depth("w1", prefix_hashes(chat("turn 9"))) == 1


@dataclass
class W:
    name: str
    slots_available: int


def test_a_match_wins_unless_it_carries_clearly_more_load():
    a, b = W("a", 2), W("b", 4)
    depth = {"a": 3, "b": 0}
    assert pick([a, b], 0, lambda w: depth[w.name], max_load_gap=2) == (a, Route.CACHE)
    assert pick([a, b], 0, lambda w: depth[w.name], max_load_gap=1) == (b, Route.LOAD)


def test_a_miss_goes_to_the_least_loaded_and_rotates_among_equals():
    a, b, c = W("a", 1), W("b", 3), W("c", 3)
    assert pick([a, b, c], 0, lambda w: 0) == (b, Route.LOAD)
    assert pick([a, b, c], 1, lambda w: 0) == (c, Route.LOAD)
    assert pick([a, b, c], 0, None) == (b, Route.LOAD)


def test_the_registry_routes_a_conversation_back_to_its_worker():
    registry, index = Registry(), PrefixIndex()
    for wid in ("w1", "w2"):
        registry.register(WorkerRegistration(worker_id=wid, url=f"http://127.0.0.1:1/{wid}", model_ref="m",
                                             slots_total=4))
    placed = {}
    for conv in range(4):  # first turns: no match, spread by load
        hashes = prefix_hashes(chat(f"conversation {conv}"))
        lease = registry.acquire(affinity=lambda w, h=hashes: index.depth(w.worker_id, h))
        assert lease.route == Route.LOAD
        index.record(lease.worker_id, hashes)
        placed[conv] = lease.worker_id
        registry.release(lease)
    assert set(placed.values()) == {"w1", "w2"}
    for conv in range(4):  # later turns: back where the prefix is
        hashes = prefix_hashes(chat(f"conversation {conv}", "sure", "and then?"))
        lease = registry.acquire(affinity=lambda w, h=hashes: index.depth(w.worker_id, h))
        assert (lease.worker_id, lease.route) == (placed[conv], Route.CACHE)
        registry.release(lease)


def test_misses_take_turns_however_many_cache_hits_come_between():
    registry, index = Registry(), PrefixIndex()
    for wid in ("w1", "w2"):
        registry.register(WorkerRegistration(worker_id=wid, url=f"http://127.0.0.1:1/{wid}", model_ref="m",
                                             slots_total=4))
    homes = []
    for conv in range(4):
        turns = [chat(f"c{conv}", *"abcdef"[:2 * t]) for t in range(4)]
        for t, job in enumerate(turns):  # one turn at a time: a miss, then hits on the same worker
            hashes = prefix_hashes(job)
            lease = registry.acquire(affinity=lambda w, h=hashes: index.depth(w.worker_id, h))
            index.record(lease.worker_id, hashes)
            registry.release(lease)
            if t == 0:
                homes.append(lease.worker_id)
    assert homes == ["w1", "w2", "w1", "w2"]


def test_a_workers_report_replaces_what_the_queen_sent_it():
    """Once a worker reports what it holds, what it evicted stops counting, whatever was sent there."""
    index = PrefixIndex()
    old, new = prefix_hashes(chat("old chat")), prefix_hashes(chat("new chat"))
    index.record("w1", old)
    assert index.depth("w1", old) == 1
    assert index.report("w1", 5, [new])
    assert index.depth("w1", old) == 0 and index.depth("w1", new) == 1


def test_an_older_report_arriving_late_is_ignored():
    index = PrefixIndex()
    a, b = prefix_hashes(chat("a")), prefix_hashes(chat("b"))
    assert index.report("w1", 7, [b])
    assert not index.report("w1", 6, [a])  # sent before the newer one, relayed after it
    assert not index.report("w1", 7, [a])
    assert index.depth("w1", a) == 0 and index.depth("w1", b) == 1


def test_a_request_under_way_counts_as_held_until_it_ends():
    """Between routing a turn and its done event, its prefix is where it was sent: the next turn sent
    meanwhile follows it, even across a report made before it arrived."""
    index = PrefixIndex()
    turn = prefix_hashes(chat("q", "a", "q2"))
    index.report("w1", 1, [])
    index.record("w1", turn, "r1")
    index.report("w1", 2, [])  # another request's done, reported before r1 took its slot
    assert index.depth("w1", turn) == 3
    index.record("w1", turn[:1], "r2")
    index.settle("r1")
    assert index.depth("w1", turn) == 1  # r2, still under way, carries the first block
    index.settle("r2")
    index.settle("r2")  # idempotent
    assert index.depth("w1", turn) == 0


def test_forgetting_a_worker_drops_its_report_and_its_requests():
    index = PrefixIndex()
    hashes = prefix_hashes(chat("x"))
    index.report("w1", 1, [hashes])
    index.record("w1", hashes, "r1")
    index.forget("w1")
    assert index.depth("w1", hashes) == 0
    index.settle("r1")  # the request ending later is no error


def test_held_prompts_travel_as_hex_and_anything_else_is_refused():
    hashes = prefix_hashes(chat("a", "b", "c"))
    assert from_wire(to_wire(hashes)) == hashes
    assert from_wire("") == [] and from_wire(None) is None and from_wire(12) is None
    assert from_wire("abc") is None and from_wire("zz" * 8) is None


def test_the_workers_holdings_follow_its_slots_and_its_host_ram():
    holdings = Holdings(2, clock=100)
    a, b = tuple(prefix_hashes(chat("a"))), tuple(prefix_hashes(chat("b")))
    holdings.tag(0, a)
    holdings.tag(1, a)
    version, held = holdings.report()
    assert version == 101 and held == [to_wire(a)]  # one entry per distinct prompt
    holdings.tag(1, ())
    version, held = holdings.report(kept=[b, ()])
    assert version == 102 and sorted(held) == sorted([to_wire(a), to_wire(b)])

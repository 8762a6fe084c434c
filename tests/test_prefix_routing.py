"""Cache-aware routing: prefix hashes cut where the queen can cut without a tokenizer, the index's
depth per worker, and the pick's load bound (a miss never goes to the busiest worker by habit)."""

from __future__ import annotations

from dataclasses import dataclass

from rbee.protocol import InferenceRequest, WorkerRegistration
from rbee.queen.prefix_index import BLOCK_CHARS, PrefixIndex, prefix_hashes
from rbee.queen.registry import Registry
from rbee.queen.scheduler import Route, pick


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

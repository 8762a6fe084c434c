"""The llama.cpp engine in process, on the default model (it loads in well under a second)."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from rbee.events import Event, Prefilling, is_last
from rbee.models import default_model_path
from rbee.worker.engine import Engine, EngineConfig, EngineError, Job, Sampling, Work

COUNTING = "1, 2, 3, 4, 5,"
_ids = itertools.count()


@dataclass
class Run:
    """One job's events as the engine emits them, and the order of its callbacks."""

    events: list[dict[str, Any]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: Event | Prefilling) -> None:
        if isinstance(event, Prefilling):  # progress through a long prompt, a comment on the wire
            return
        self.events.append(event.wire())  # the wire form: what a client of the worker would see
        if is_last(event):
            self.order.append("done")
            self.ended.set()

    def finished(self) -> None:
        self.order.append("slot free")

    @property
    def text(self) -> str:
        return "".join(e["token"] for e in self.events if "token" in e)

    @property
    def done(self) -> dict[str, Any]:
        assert self.ended.wait(240), "no done event within 240 s"  # a deadline, not a timing: loaded 2-core CI
        return self.events[-1]


@pytest.fixture(scope="module")
def engine():
    e = Engine(EngineConfig(model_path=default_model_path(), slots=4, ctx_size=256, threads=2))
    e.load()
    e.start()
    yield e
    e.close()


def submit(engine: Engine, slot: int, prompt: str, max_tokens: int, stop: tuple[str, ...] = (), **sampling) -> Run:
    run = Run()
    work = Work(request_id=f"r{next(_ids)}", prompt_tokens=engine.tokenize(prompt), max_tokens=max_tokens,
                sampling=Sampling(**sampling), stop=list(stop))
    engine.submit(Job(work, slot, run.emit, run.finished))
    return run


def test_greedy_straight_from_the_logits_equals_llama_cpps_greedy_chain_several_at_once(engine):
    """logprobs=0 keeps a greedy request on llama.cpp's sampler chain; without it the engine takes the
    argmax of its logits itself (rbee.worker.direct_sampling). Four of each at once, one per slot."""
    prompts = ["Tell me about bees.", "Write a haiku about rain.", "What is 12 times 7?", "Name three colours."]
    waves = []
    for logprobs in (0, None):
        runs = [submit(engine, slot, p, 48, temperature=0, ignore_eos=True, logprobs=logprobs)
                for slot, p in enumerate(prompts)]
        waves.append([(r.done["total_tokens"], r.text) for r in runs])
    chain, direct = waves
    assert all(tokens == 48 and text for tokens, text in chain)
    assert direct == chain


def test_a_persistent_threadpool_is_attached(engine):
    assert engine._pool is not None and engine._pool.handle


def test_greedy_counting_continues_the_count(engine):
    run = submit(engine, 0, COUNTING, 12, temperature=0, ignore_eos=True)
    assert run.done["finish_reason"] == "length" and run.done["total_tokens"] == 12
    assert run.text == " 6, 7, 8, 9,"
    assert [e["index"] for e in run.events if "token" in e] == list(range(12))


def test_same_seed_same_text_alone_and_among_other_sequences(engine):
    alone = submit(engine, 0, "Tell me about bees.", 32, temperature=0.9, seed=7)
    assert alone.done["total_tokens"] > 0
    # Every step decodes one token of every running sequence, so 64-token neighbours outlast this one.
    others = [submit(engine, s, COUNTING, 64, temperature=0, ignore_eos=True) for s in (1, 2, 3)]
    crowded = submit(engine, 0, "Tell me about bees.", 32, temperature=0.9, seed=7)
    assert crowded.done["finish_reason"] == alone.done["finish_reason"] and crowded.text == alone.text
    for run in others:
        assert run.done["finish_reason"] == "length"


def test_sequences_admitted_out_of_slot_order_decode_as_one_batch(engine):
    # With a KV stream per slot, llama.cpp puts only consecutive, increasing sequence ids in one
    # ubatch: rows in admission order (slot 2, then 0, then 1) split every step in two, and a graph
    # that changes every step is never reused. In slot order each step reuses the one before's.
    before = engine.graphs_reused
    runs = [submit(engine, slot, f"Count: {slot * 40 + 100}, {slot * 40 + 101},", 40, temperature=0, ignore_eos=True)
            for slot in (2, 0, 1)]
    assert all(run.done["total_tokens"] == 40 for run in runs)
    # 40 steps decode all three together, less the few while the prompts are taken in.
    assert engine.graphs_reused - before >= 30


def test_cancel_frees_the_slot_before_the_done_event(engine):
    run = Run()
    work = Work(request_id="cancel-me", prompt_tokens=engine.tokenize(COUNTING), max_tokens=10_000,
                sampling=Sampling(temperature=0, ignore_eos=True), stop=[])
    job = Job(work, 1, run.emit, run.finished)
    engine.submit(job)
    answers: list[bool] = []
    acknowledged = threading.Event()
    engine.cancel("cancel-me", lambda found: (answers.append(found), acknowledged.set()))
    assert acknowledged.wait(30)
    assert answers == [True] and run.order == ["slot free", "done"]
    assert run.done["finish_reason"] == "cancelled"
    acknowledged.clear()
    engine.cancel("cancel-me", lambda found: (answers.append(found), acknowledged.set()))
    assert acknowledged.wait(30) and answers == [True, False]


def test_stop_string_split_across_tokens_never_reaches_the_client(engine):
    run = submit(engine, 2, COUNTING, 64, stop=("9,",), temperature=0)
    assert run.done["finish_reason"] == "stop"
    assert run.text == " 6, 7, 8, "


def test_generation_ends_where_the_context_ends():
    e = Engine(EngineConfig(model_path=default_model_path(), slots=1, ctx_size=32, threads=2))
    e.load()
    e.start()
    try:
        prompt = e.tokenize(COUNTING)
        run = submit(e, 0, COUNTING, 1000, temperature=0, ignore_eos=True)
        assert run.done["finish_reason"] == "length" and run.done["total_tokens"] == 32 - len(prompt)
    finally:
        e.close()
    with pytest.raises(EngineError):
        submit(e, 0, COUNTING, 4)
    answered = threading.Event()
    e.cancel("anything", lambda found: answered.set())  # a stopped engine still answers at once
    assert answered.is_set()


def test_model_metadata_comes_from_the_gguf(engine):
    meta = engine.metadata
    assert meta["architecture"] == "llama" and meta["quantization"] == "Q4_1"
    assert meta["vocab_size"] == 49152 and meta["eos_token_id"] == 2 and meta["context_trained"] == 8192
    assert meta["file_bytes"] == default_model_path().stat().st_size

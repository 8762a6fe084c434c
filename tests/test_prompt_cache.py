"""The prompt cache: the pure slot choice, and the engine in process on the default model reusing a
slot's KV with answers identical, token for token, to those decoded from scratch."""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass, field

import pytest
from prometheus_client import generate_latest

from rbee import chat
from rbee.events import Done, Event, Prefilling, Token
from rbee.models import default_model_path
from rbee.prefix import prefix_hashes, to_wire
from rbee.protocol import InferenceRequest
from rbee.worker import engine as engine_module
from rbee.worker.engine import Engine, EngineConfig, Job, Sampling, Work
from rbee.worker.metrics import WorkerMetrics
from rbee.worker.prompt_cache import Exactness, Held, common_prefix, rank_slots, reusable
from rbee.worker.ram_cache import RamCache, best_published
from rbee.worker.slots import SlotPool, SlotTable

_ids = itertools.count()

# ---------------------------------------------------------------- the pure part


@pytest.mark.parametrize("split", [0, 1, 255, 256, 257, 511, 599])
def test_common_prefix_finds_the_first_difference_within_and_across_chunks(split):
    a = list(range(600))
    b = a[:split] + [-1] + a[split + 1:]
    assert common_prefix(a, b) == split
    assert common_prefix(tuple(a), b) == split  # tuples and lists compare alike


def test_common_prefix_of_a_prefix_is_its_length():
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([], [1]) == 0
    assert common_prefix([5, 6], [5, 6]) == 2


def test_the_last_prompt_token_is_always_decoded_again():
    assert reusable((1, 2, 3, 4), [1, 2, 3]) == 2  # the whole prompt cached: its last token still needs logits
    assert reusable((1, 2), [1, 2, 3]) == 2
    assert reusable((9,), [1, 2, 3]) == 0
    assert reusable((1, 2), []) == 0


def test_the_slot_with_the_longest_shared_prefix_is_taken_first():
    prompt = list(range(100))
    free = {0: Held(tuple(range(20)), 5), 1: Held(tuple(range(90)), 1), 2: Held(tuple(range(50)), 2)}
    assert rank_slots(prompt, free) == [1, 2, 0]


def test_equal_matches_go_to_the_least_recently_used_slot():
    prompt = list(range(100))
    free = {0: Held(tuple(range(60)), 7), 1: Held(tuple(range(60)), 3)}
    assert rank_slots(prompt, free) == [1, 0]


def test_a_new_conversation_sharing_only_a_system_prompt_takes_an_empty_then_the_oldest_slot():
    system = list(range(10))  # 10 of a 200-token prompt: below the 0.1 similarity llama-server asks for
    prompt = system + list(range(1000, 1190))
    chat_a = Held(tuple(system + list(range(500, 900))), released=4)
    chat_b = Held(tuple(system + list(range(2000, 2300))), released=2)
    assert rank_slots(prompt, {0: chat_a, 1: chat_b, 2: Held()}) == [2, 1, 0]
    assert rank_slots(prompt, {0: chat_a, 1: chat_b}) == [1, 0]


def test_opting_out_ignores_what_the_slots_hold():
    prompt = list(range(100))
    free = {0: Held(tuple(range(99)), 9), 1: Held((), 0), 2: Held(tuple(range(5)), 4)}
    assert rank_slots(prompt, free, use_cache=False) == [1, 2, 0]


def test_a_better_match_in_host_ram_sends_the_request_to_the_slot_whose_loss_costs_least():
    prompt = list(range(300))
    free = {0: Held(tuple(range(100)), 9), 1: Held(tuple(range(500, 600)), 2)}
    assert rank_slots(prompt, free) == [0, 1]
    assert rank_slots(prompt, free, elsewhere=250) == [1, 0]  # slot 1 is restored into; slot 0 keeps its chat


def test_host_ram_keeps_states_within_its_budget_least_recently_used_out():
    ram = RamCache(budget_bytes=100)
    assert ram.put((1, 2, 3), b"a" * 40) and ram.put((7, 8), b"b" * 40)
    assert ram.put((4, 5, 6), b"c" * 40)  # 120 bytes: the oldest goes
    assert ram.published == ((7, 8), (4, 5, 6)) and ram.size == 80
    assert not ram.put((9,), b"x" * 101)  # can never fit


def test_host_ram_finds_the_longest_shared_prefix_and_gives_it_up_when_restored():
    ram = RamCache(budget_bytes=1000)
    ram.put((1, 2, 3, 4), b"s" * 10)
    ram.put((1, 2, 9, 9, 9), b"t" * 10)
    index, shared = ram.best([1, 2, 3, 4, 5])
    assert shared == 4 and ram.take(index).tokens == (1, 2, 3, 4)
    assert ram.published == ((1, 2, 9, 9, 9),) and best_published(ram.published, [1, 2, 9, 9]) == 3
    assert ram.best([5, 6]) == (-1, 0)


def test_host_ram_keeps_one_entry_for_a_history_and_its_continuation():
    ram = RamCache(budget_bytes=1000)
    ram.put((1, 2, 3), b"s" * 10)
    assert ram.put((1, 2, 3, 4, 5), b"t" * 10)  # holds all the first one did: it replaces it
    assert not ram.put((1, 2), b"u" * 10)  # adds nothing
    assert ram.published == ((1, 2, 3, 4, 5),)


def test_exactness_counts_the_leading_cells_computed_on_the_reference_kernels():
    ex = Exactness(2, tracking=True)
    ex.wrote(0, 0, 10, exact=True)
    ex.wrote(0, 10, 5, exact=False)  # a sampled answer on the fast kernels
    assert ex.of(0, 15) == 10
    ex.wrote(0, 15, 5, exact=True)  # exact again, but after a fast gap: still 10
    assert ex.of(0, 20) == 10 and ex.of(0, 8) == 8  # cut back to 8 cells: all exact
    ex.wrote(0, 8, 4, exact=True)  # rewritten exactly from there on
    assert ex.of(0, 12) == 12
    ex.restored(1, 3)
    assert ex.of(1, 50) == 3
    assert Exactness(1, tracking=False).of(0, 50) == 50  # no switch: no guarantee to keep, all counts


def test_a_reproducible_request_reuses_only_the_exactly_computed_part_of_a_slot_or_a_saved_state():
    held = Held((1, 2, 3, 4, 5), released=1, exact=3)
    assert held.for_request(True).tokens == (1, 2, 3) and held.for_request(False) is held
    assert rank_slots([1, 2, 3, 4, 5, 6], {0: held.for_request(True), 1: Held((1, 2, 3, 4), 2, 4)}) == [1, 0]
    ram = RamCache(budget_bytes=1000)
    ram.put((1, 2, 3, 4, 5), b"s" * 10, exact=2)
    assert ram.best([1, 2, 3, 4, 5, 6]) == (0, 5) and ram.best([1, 2, 3, 4, 5, 6], reproducible=True) == (0, 2)
    assert ram.published_exact == ((1, 2),) and ram.published == ((1, 2, 3, 4, 5),)


def test_the_slot_table_takes_the_first_slot_the_ranking_names():
    table = SlotTable(4)
    table.acquire("a")
    seen: list[list[int]] = []
    slot = table.acquire("b", lambda free: seen.append(free) or sorted(free, reverse=True))
    assert seen == [[1, 2, 3]] and slot == 3
    assert table.acquire("c") == 1  # without a ranking: the lowest free slot, as before


class _RankingBackend:
    """Enough of the engine for the pool: it ranks slots and finishes every job at once."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, list[int]]] = []

    def prefer_slots(self, work: Work, free: list[int]) -> list[int]:
        self.asked.append((work.request_id, free))
        return free[::-1]

    def submit(self, job: Job) -> None:
        job.on_finish()
        job.emit(Done(0, 0, "length"))

    def cancel(self, request_id, on_done) -> None:
        on_done(False)


def test_the_pool_asks_the_engine_which_free_slot_suits_the_work():
    async def scenario():
        backend = _RankingBackend()
        pool = SlotPool(backend, 3)
        gen = pool.start(Work(request_id="w1", prompt_tokens=[1, 2], max_tokens=1, sampling=Sampling(), stop=[]))
        assert [e async for e in gen.events()] == [Done(0, 0, "length")]
        assert backend.asked == [("w1", [0, 1, 2])]

    asyncio.run(scenario())


def test_metrics_count_cached_prompt_tokens_and_serve_the_model_server_protocol_gauges():
    metrics = WorkerMetrics(lambda: (4, 1), lambda: 0.25)
    emit = metrics.observe(lambda event: None, "r1")
    emit(Done(5, 100, "stop", prompt_tokens=120, cached_tokens=90))
    text = generate_latest(metrics.registry).decode()
    assert "rbee_worker_prompt_tokens_total 120.0" in text
    assert "rbee_worker_prompt_cache_hit_tokens_total 90.0" in text
    assert "vllm:num_requests_waiting 0.0" in text
    assert "vllm:num_requests_running 1.0" in text
    assert "vllm:kv_cache_usage_perc 0.25" in text


# ---------------------------------------------------------------- the engine, in process


@dataclass
class Run:
    request_id: str = ""
    tokens: list[str] = field(default_factory=list)
    events: list[Token] = field(default_factory=list)
    done: Done | None = None
    first: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: Event) -> None:
        if isinstance(event, Token):
            self.tokens.append(event.text)
            self.events.append(event)
            self.first.set()
        elif not isinstance(event, Prefilling):  # progress through a long prompt
            assert isinstance(event, Done), event
            self.done = event
            self.ended.set()

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def result(self) -> Run:
        assert self.ended.wait(120), "no done event within 120 s"
        return self


@pytest.fixture(scope="module")
def engine():
    e = Engine(EngineConfig(model_path=default_model_path(), slots=4, ctx_size=1024, threads=2))
    e.load()
    e.start()
    assert e.batch_invariant
    yield e
    e.close()


def submit(engine: Engine, slot: int, prompt: list[int], max_tokens: int, cache: bool = True,
           resume: tuple[list[int], int] | None = None, prefix: tuple[bytes, ...] | None = None, **sampling) -> Run:
    """``resume``: (answer token ids already sent, the next event index), decoded after ``prompt``;
    ``prefix``: the queen's hashes of the prompt, for a report of what the cache holds."""
    run = Run(request_id=f"pc{next(_ids)}")
    sampling.setdefault("temperature", 0)
    ids, index = resume or ([], 0)
    work = Work(request_id=run.request_id, prompt_tokens=prompt + ids, max_tokens=max_tokens,
                sampling=Sampling(**sampling), stop=[], cache_prompt=cache, token_ids=True, resumed=len(ids),
                first_index=index, prefix=prefix)
    engine.submit(Job(work, slot, run.emit, lambda: None))
    return run


def turn(engine: Engine, history: list[int], answer: str, question: str) -> list[int]:
    """The next prompt of a chat: what came before, the answer as text, a new question."""
    return (history + engine.tokenize(answer, add_special=False)
            + engine.tokenize(f"<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
                              add_special=False))


def opening(engine: Engine, question: str) -> list[int]:
    return engine.tokenize(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")


COUNTING = "1, 2, 3, 4, 5,"


def test_the_second_turn_reuses_the_first_turns_prompt_and_answer(engine):
    first_prompt = engine.tokenize(COUNTING)
    first = submit(engine, 0, first_prompt, 12, ignore_eos=True).result()
    assert first.text == " 6, 7, 8, 9," and first.done.cached_tokens == 0
    answer = engine.tokenize(first.text, add_special=False)
    assert len(answer) == 12  # the text retokenizes into the very tokens generated
    second_prompt = first_prompt + answer + engine.tokenize(" 10,", add_special=False)
    second = submit(engine, 0, second_prompt, 8, ignore_eos=True).result()
    # Every cell the first request wrote: its prompt and its answer but the last token, never decoded.
    assert second.done.cached_tokens == len(first_prompt) + 12 - 1
    assert second.done.prompt_tokens == len(second_prompt)
    fresh = submit(engine, 1, second_prompt, 8, cache=False, ignore_eos=True).result()
    assert fresh.done.cached_tokens == 0 and fresh.text == second.text


def test_a_cached_chat_answers_as_one_decoded_from_scratch_greedy_and_seeded(engine):
    prompt = opening(engine, "What do bees make?")
    for question in ("Why?", "And wasps?"):
        answer = submit(engine, 2, prompt, 16).result()
        prompt = turn(engine, prompt, answer.text, question)
    cached = submit(engine, 2, prompt, 16).result()
    assert cached.done.cached_tokens > len(prompt) // 2
    fresh = submit(engine, 3, prompt, 16, cache=False).result()
    assert cached.text == fresh.text and cached.done.total_tokens == fresh.done.total_tokens
    # With a seed, sampling at a temperature draws the same tokens from the same logits.
    seeded = submit(engine, 2, prompt, 16, temperature=0.9, seed=11).result()
    assert seeded.done.cached_tokens > len(prompt) // 2
    seeded_fresh = submit(engine, 3, prompt, 16, cache=False, temperature=0.9, seed=11).result()
    assert seeded.text == seeded_fresh.text


def test_a_chat_turn_whose_prompt_crosses_attentions_tiled_kernel_answers_as_a_fresh_decode(engine):
    """Turn two's 76-token prompt, decoded fresh, is one batch of over 64 rows (ggml's tiled attention);
    cached, it is 59 cells from turn one (a prompt batch, then one token at a time) and a 17-token
    suffix. With ggml's fast kernels the two differ slightly, and here that flips the third word."""
    messages = [{"role": "user", "content": "Tell me about honey bees."}]
    first = submit(engine, 0, engine.tokenize(chat.render(messages, engine.chat_template())), 24).result()
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "What do they eat?"}]
    prompt = engine.tokenize(chat.render(messages, engine.chat_template()))
    assert len(prompt) >= 64
    cached = submit(engine, 0, prompt, 24).result()
    fresh = submit(engine, 1, prompt, 24, cache=False).result()
    assert cached.done.cached_tokens >= 36 and cached.text == fresh.text


def test_a_long_context_answers_the_same_alone_and_beside_other_sequences(engine):
    """One query over 512 or more cells alone takes ggml's KV-split attention; beside others it does not."""
    places, crops, months = ["north", "south", "east", "west"], ["clover", "heather", "lime", "acacia"], ["May", "July"]
    notes = " ".join(f"Hive {n} sits {places[n % 4]} of the river, keeps {n * 7 % 50 + 10} frames of "
                     f"{crops[n % 4]} honey and was last inspected in {months[n % 2]}." for n in range(1, 20))
    messages = [{"role": "user", "content": notes + " Which hives should be inspected first, and why?"}]
    prompt = engine.tokenize(chat.render(messages, engine.chat_template()))
    assert 512 < len(prompt) < 1000
    alone = submit(engine, 2, prompt, 16, cache=False).result()
    neighbours = [submit(engine, s, engine.tokenize(COUNTING), 64, ignore_eos=True) for s in (0, 1, 3)]
    crowded = submit(engine, 2, prompt, 16, cache=False).result()
    assert [r.result().done.finish_reason for r in neighbours] == ["length"] * 3
    assert crowded.text == alone.text


def test_a_prompt_that_diverges_early_keeps_only_the_shared_prefix(engine):
    long_prompt = opening(engine, "Tell me everything about the life of honey bees in winter.")
    submit(engine, 1, long_prompt, 4).result()
    shared = len(engine.tokenize("<|im_start|>user\nTell me"))
    other = opening(engine, "Tell me a joke about ants.")
    assert common_prefix(long_prompt, other) == shared
    diverged = submit(engine, 1, other, 8).result()
    assert diverged.done.cached_tokens == shared
    # The old tail is gone for good: asking the long prompt again reuses only the shared part,
    # and answers exactly as a fresh decode does (no stale cells leak into attention).
    again = submit(engine, 1, long_prompt, 12).result()
    assert again.done.cached_tokens == shared
    fresh = submit(engine, 0, long_prompt, 12, cache=False).result()
    assert again.text == fresh.text


def test_an_opted_out_request_decodes_everything(engine):
    prompt = engine.tokenize("The quick brown fox")
    submit(engine, 3, prompt, 4).result()
    again = submit(engine, 3, prompt, 4, cache=False).result()
    assert again.done.cached_tokens == 0


def test_kv_usage_counts_running_sequences_only(engine):
    run = submit(engine, 0, engine.tokenize(COUNTING), 400, ignore_eos=True)
    assert run.first.wait(60)
    assert 0 < engine.kv_usage() <= 1
    answered = threading.Event()
    engine.cancel(run.request_id, lambda found: answered.set())
    assert answered.wait(30) and run.result().done.finish_reason == "cancelled"
    assert engine.kv_usage() == 0  # the slot keeps its cells for the cache; they count as free


def test_concurrent_conversations_each_continue_their_own_history(engine):
    """Four chats at once, three turns, slots chosen by the engine as the worker's pool does: every
    later turn finds its own chat's history, reuses it, and answers exactly as a fresh decode does
    (a turn that continued another chat's cells would answer differently)."""
    table = SlotTable(engine.config.slots)
    questions = ["What is a queen bee?", "Name a red fruit.", "How far is the moon?", "Why is the sky blue?"]
    prompts = [opening(engine, q) for q in questions]
    follow_ups = ["Tell me more.", "Say it shorter."]

    def ask(i: int, cache: bool) -> Run:
        work = Work(request_id=f"chat{i}-{next(_ids)}", prompt_tokens=prompts[i], max_tokens=12,
                    sampling=Sampling(temperature=0), stop=[], cache_prompt=cache)
        slot = table.acquire(work.request_id, lambda free: engine.prefer_slots(work, free))
        run = Run(request_id=work.request_id)
        engine.submit(Job(work, slot, run.emit, lambda: None))
        return run

    def all_at_once(cache: bool) -> list[Run]:
        runs = [ask(i, cache) for i in range(len(questions))]  # all four decode together, step by step
        results = [r.result() for r in runs]
        for slot in range(engine.config.slots):
            table.release(slot)
        return results

    for round_ in range(3):
        results = all_at_once(cache=True)
        fresh_results = all_at_once(cache=False)
        for i, (cached, uncached) in enumerate(zip(results, fresh_results, strict=True)):
            assert cached.text == uncached.text, (i, round_, cached.text, uncached.text)
            if round_:
                assert cached.done.cached_tokens > len(prompts[i]) // 2, (i, round_, cached.done)
        if round_ < 2:
            prompts = [turn(engine, prompts[i], results[i].text, follow_ups[round_]) for i in range(len(questions))]


def test_a_conversation_evicted_from_its_slot_comes_back_from_host_ram():
    """One slot, two chats taking turns: each turn finds its own history in host RAM (saved when the
    other chat took the slot), reuses it, and answers as a fresh decode does."""
    e = Engine(EngineConfig(model_path=default_model_path(), slots=1, ctx_size=1024, threads=2, cache_ram_mb=64))
    e.load()
    e.start()
    try:
        # Longer than RAM_MIN_SAVE: shorter histories are not worth a save.
        prompts = [opening(e, "My bees sit in four hives by the river, two on the north bank and two on the "
                              "south bank, and every spring the southern ones swarm first. " * 3 + "Why?"),
                   opening(e, "Our orchard has apples, pears and plums; the plums flower first, then the "
                              "pears, and the apples last of all, in early May. " * 3 + "Which fruit needs bees most?")]
        assert all(len(p) > engine_module.RAM_MIN_SAVE for p in prompts)
        tags = [tuple(prefix_hashes(InferenceRequest(prompt=f"chat {i}"))) for i in range(2)]
        answers = [submit(e, 0, p, 16, prefix=t).result() for p, t in zip(prompts, tags, strict=True)]
        assert answers[1].done.cached_tokens < 8  # the second chat shares only the template's start
        # One slot, yet the worker reports both: the first chat's state went to host RAM.
        assert answers[0].done.cache_held == [to_wire(tags[0])]
        assert sorted(answers[1].done.cache_held) == sorted(map(to_wire, tags))
        for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
            follow_up = turn(e, prompt, answer.text, "Tell me more.")
            cached = submit(e, 0, follow_up, 16).result()
            assert cached.done.cached_tokens >= len(prompt), (i, cached.done)
            fresh = submit(e, 0, follow_up, 16, cache=False).result()
            assert fresh.done.cached_tokens == 0 and cached.text == fresh.text, i
    finally:
        e.close()


def test_done_events_report_what_the_slots_hold_when_the_queen_asks(engine):
    """The queen's hashes of a prompt tag the slot it runs in; each done event says what is held now."""
    a, b = (tuple(prefix_hashes(InferenceRequest(prompt=text))) for text in ("alpha " * 60, "beta"))
    assert len(a) == 2 and len(b) == 1
    plain = submit(engine, 1, opening(engine, "Hi"), 2).result()
    assert plain.done.cache_held is None and plain.done.cache_version is None  # nobody asked
    first = submit(engine, 1, opening(engine, "Hello"), 2, prefix=a).result()
    assert to_wire(a) in first.done.cache_held
    second = submit(engine, 1, opening(engine, "Goodbye"), 2, prefix=b).result()
    assert to_wire(b) in second.done.cache_held and to_wire(a) not in second.done.cache_held  # evicted, no RAM
    assert second.done.cache_version > first.done.cache_version
    # A request stopped before its prompt was decoded whole leaves no claim on the slot.
    long = opening(engine, "Count the bees. " * 200)
    assert len(long) > engine.config.batch_size  # more than one step: the cancel comes between them
    run = submit(engine, 1, long, 4, cache=False, prefix=a)
    engine.cancel(run.request_id, lambda found: None)
    cancelled = run.result().done
    assert cancelled.finish_reason == "cancelled" and to_wire(a) not in cancelled.cache_held, cancelled


def test_a_greedy_turn_after_a_sampled_one_reuses_only_what_the_reference_kernels_computed(engine):
    """Sampled answers run on the fast kernels; a greedy turn after one keeps only the cells computed
    exactly (the greedy turn before), decodes the rest again, and answers as a fresh decode does."""
    prompt = opening(engine, "Name three animals that live in rivers.")
    first = submit(engine, 3, prompt, 16).result()  # greedy: on the reference kernels
    prompt = turn(engine, prompt, first.text, "And in the sea?")
    sampled = submit(engine, 3, prompt, 16, temperature=0.9).result()  # unseeded: on the fast ones
    assert sampled.done.cached_tokens > len(prompt) // 2  # a sampled request reuses what the slot holds
    prompt = turn(engine, prompt, sampled.text, "Which of them is the largest?")
    greedy = submit(engine, 3, prompt, 16).result()
    assert greedy.done.cached_tokens == sampled.done.cached_tokens  # the first turn's exact cells, no more
    fresh = submit(engine, 2, prompt, 16, cache=False).result()
    assert greedy.text == fresh.text


@pytest.mark.parametrize("cache", [True, False])
def test_an_answer_resumed_from_its_token_ids_goes_on_as_the_unbroken_one_did(engine, cache):
    """What a worker taking over a broken stream does: the prompt plus the ids already sent, then on."""
    prompt = opening(engine, "Write a story about a lighthouse keeper and her cat.")
    whole = submit(engine, 0, prompt, 48, cache=False, ignore_eos=True).result()
    sent = whole.events[:17]
    ids = [i for e in sent for i in e.ids]
    rest = submit(engine, 1 if cache else 2, prompt, 48, cache=cache, ignore_eos=True,
                  resume=(ids, len(sent))).result()
    assert [e.index for e in rest.events] == list(range(len(sent), len(whole.events)))
    assert "".join(e.text for e in sent) + rest.text == whole.text
    assert rest.done.total_tokens == 48 and rest.done.prompt_tokens == len(prompt)

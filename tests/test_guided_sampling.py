"""The engine's per-sequence sampling options on the default model, in process: a grammar, logprobs,
OpenAI's penalties and logit bias — each acting on its own sequence while others run beside it."""

from __future__ import annotations

import itertools
import json
import math
import threading
from dataclasses import dataclass, field

import pytest

from rbee import chat, grammar
from rbee.events import Event, Token, is_last
from rbee.models import default_model_path
from rbee.worker.engine import Engine, EngineConfig, Job, Sampling, Work

_ids = itertools.count()
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}
COUNT = "Count from 1 to 20, separated by commas."


@dataclass
class Run:
    events: list[Event] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: Event) -> None:
        self.events.append(event)
        if is_last(event):
            self.ended.set()

    @property
    def tokens(self) -> list[Token]:
        assert self.ended.wait(120), "no done event within 120 s"
        return [e for e in self.events if isinstance(e, Token)]

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    @property
    def done(self):
        assert self.ended.wait(120), "no done event within 120 s"
        return self.events[-1]


@pytest.fixture(scope="module")
def engine():
    e = Engine(EngineConfig(model_path=default_model_path(), slots=2, ctx_size=512, threads=2))
    e.load()
    e.start()
    yield e
    e.close()


def submit(engine: Engine, slot: int, question: str, max_tokens: int, **sampling) -> Run:
    run = Run()
    prompt = chat.render([{"role": "user", "content": question}], engine.chat_template())
    work = Work(request_id=f"g{next(_ids)}", prompt_tokens=engine.tokenize(prompt), max_tokens=max_tokens,
                sampling=Sampling(**sampling), stop=[])
    engine.submit(Job(work, slot, run.emit, lambda: None))
    return run


def _valid_person(text: str) -> dict:
    person = json.loads(text)
    assert set(person) == {"name", "age"} and isinstance(person["name"], str), person
    assert isinstance(person["age"], int) and 0 <= person["age"] <= 150, person
    return person


def test_a_constrained_answer_is_json_valid_under_its_schema(engine):
    run = submit(engine, 0, "Who are you? Answer in one sentence.", 80, temperature=0,
                 grammar=grammar.from_json_schema(PERSON))
    assert run.done.finish_reason == "stop", run.text
    _valid_person(run.text)


def test_sampled_at_a_temperature_it_still_validates(engine):
    run = submit(engine, 0, "Make up a person.", 80, temperature=1.0, seed=11, grammar=grammar.from_json_schema(PERSON))
    assert run.done.finish_reason == "stop", run.text
    _valid_person(run.text)


def test_constrained_and_unconstrained_sequences_run_together_each_as_alone(engine):
    alone = submit(engine, 1, COUNT, 24, temperature=0).text
    constrained = submit(engine, 0, "Describe a person.", 80, temperature=0, grammar=grammar.from_json_schema(PERSON))
    free = submit(engine, 1, COUNT, 24, temperature=0)
    assert free.text == alone and not free.text.lstrip().startswith("{")
    assert constrained.done.finish_reason == "stop"
    _valid_person(constrained.text)


def test_a_grammar_that_is_done_ends_the_answer_even_when_eos_is_banned(engine):
    run = submit(engine, 0, "Yes or no?", 48, temperature=0, ignore_eos=True,
                 grammar=grammar.from_json_schema({"enum": ["yes", "no"]}))
    # With the end banned the model pads with the little whitespace the grammar allows, then must stop.
    assert run.done.finish_reason == "stop" and run.text.strip() in ('"yes"', '"no"'), run.text


def test_logprobs_come_with_each_token_and_greedy_picks_the_likeliest(engine):
    run = submit(engine, 0, COUNT, 12, temperature=0, logprobs=3)
    entries = [lp for t in run.tokens for lp in t.logprobs]
    assert len(entries) == run.done.total_tokens
    assert "".join(e.chosen.token for e in entries) == run.text
    for e in entries:
        assert len(e.top) == 3 and e.top[0].token == e.chosen.token and e.top[0].logprob == e.chosen.logprob
        assert all(a.logprob <= 0 for a in e.top) and sum(math.exp(a.logprob) for a in e.top) <= 1 + 1e-6
        assert [a.logprob for a in e.top] == sorted((a.logprob for a in e.top), reverse=True)
        assert bytes(e.chosen.bytes).decode() == e.chosen.token


def test_logprobs_leave_the_text_as_it_was(engine):
    plain = submit(engine, 0, COUNT, 16, temperature=0).text
    assert submit(engine, 0, COUNT, 16, temperature=0, logprobs=0).text == plain
    assert all(t.logprobs is None for t in submit(engine, 0, COUNT, 4, temperature=0).tokens)


def test_a_constrained_answers_logprobs_are_the_models_own(engine):
    run = submit(engine, 0, "Describe a person.", 80, temperature=0, logprobs=1,
                 grammar=grammar.from_json_schema(PERSON))
    entries = [lp for t in run.tokens for lp in t.logprobs]
    assert "".join(e.chosen.token for e in entries) == run.text
    # Where the grammar overrode the model, the token taken is not the model's favourite.
    assert any(e.chosen.logprob < e.top[0].logprob for e in entries)


def _repeats(text: str) -> int:
    words = text.split()
    return len(words) - len(set(words))


def test_frequency_and_presence_penalties_each_change_the_greedy_answer_towards_fewer_repeats(engine):
    poem = "Write a short poem about bees."
    plain = submit(engine, 0, poem, 30, temperature=0).text
    for penalty in ({"frequency_penalty": 1.5}, {"presence_penalty": 1.5}):
        penalised = submit(engine, 0, poem, 30, temperature=0, **penalty).text
        assert penalised != plain, penalty
        assert _repeats(penalised) <= _repeats(plain), (penalty, penalised, plain)


def test_logit_bias_bans_or_forces_a_token(engine):
    plain = submit(engine, 0, COUNT, 8, temperature=0)
    first = plain.tokens[0]
    token = engine.tokenize(first.text, add_special=False)[0]
    banned = submit(engine, 0, COUNT, 8, temperature=0, logit_bias=((token, -100.0),))
    assert not banned.text.startswith(first.text), (banned.text, first.text)
    bee = engine.tokenize(" bee", add_special=False)[0]
    forced = submit(engine, 0, COUNT, 3, temperature=0, logit_bias=((bee, 100.0),))
    assert forced.text == " bee" * 3


def test_a_grammar_llama_cpp_cannot_parse_is_named(engine):
    assert engine.grammar_error('root ::= "a" b') is not None  # b is not defined
    assert engine.grammar_error("start ::= \"a\"") is not None  # no root
    assert engine.grammar_error(grammar.from_json_schema(PERSON)) is None

"""Greedy straight from the logits (rbee.worker.direct_sampling): the choice llama.cpp's greedy chain
makes, on made-up rows and, token for token, on the model beside llama.cpp's own chain."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from rbee.events import Event, Token, is_last
from rbee.models import default_model_path
from rbee.worker import direct_sampling
from rbee.worker.direct_sampling import Greedy
from rbee.worker.engine import Engine, EngineConfig, Job, Sampling, Work

EOG = frozenset({0, 2})
_ids = itertools.count()


def greedy(**kw) -> Greedy:
    return Greedy.of(Sampling(temperature=0, **kw), EOG)


def test_only_plain_greedy_requests_skip_the_chain():
    assert direct_sampling.applies(Sampling(temperature=0))
    assert direct_sampling.applies(Sampling(temperature=0, ignore_eos=True, logit_bias=((5, 2.0),)))
    assert not direct_sampling.applies(Sampling(temperature=0.7))
    assert not direct_sampling.applies(Sampling(temperature=0, grammar='root ::= "a"'))
    assert not direct_sampling.applies(Sampling(temperature=0, logprobs=0))
    assert not direct_sampling.applies(Sampling(temperature=0, repeat_penalty=1.1))
    assert not direct_sampling.applies(Sampling(temperature=0, presence_penalty=0.5))
    assert not direct_sampling.applies(Sampling(temperature=0, frequency_penalty=0.5))


def test_greedy_takes_the_first_of_the_highest_logits():
    assert greedy().sample(np.array([1.0, 3.0, 2.0, 3.0], dtype=np.float32)) == 1
    rng = np.random.default_rng(0)
    for _ in range(50):
        row = rng.standard_normal(500).astype(np.float32)
        assert greedy().sample(row.copy()) == int(np.argmax(row))


def test_ignore_eos_never_picks_an_end_of_generation_token_and_logit_bias_is_added():
    row = np.array([9.0, 1.0, 8.0, 2.0], dtype=np.float32)
    assert greedy().sample(row.copy()) == 0
    assert greedy(ignore_eos=True).sample(row.copy()) == 3
    assert greedy(logit_bias=((1, 100.0),)).sample(row.copy()) == 1
    assert greedy(logit_bias=((0, -0.5),)).sample(row.copy()) == 0
    assert greedy(logit_bias=((0, -1.5),)).sample(row.copy()) == 2
    # A bias on an end-of-generation id does not bring it back when EOS is ignored.
    assert greedy(ignore_eos=True, logit_bias=((0, 100.0),)).sample(row.copy()) == 3


# ---------------------------------------------------------------- on the model, against llama.cpp


@dataclass
class Run:
    events: list[Event] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: Event) -> None:
        self.events.append(event)
        if is_last(event):
            self.ended.set()

    @property
    def ids(self) -> list[int]:
        assert self.ended.wait(240), "no done event within 240 s"  # a deadline, not a timing
        return [i for e in self.events if isinstance(e, Token) for i in (e.ids or ())]


@pytest.fixture(scope="module")
def engine():
    e = Engine(EngineConfig(model_path=default_model_path(), slots=4, ctx_size=256, threads=2))
    e.load()
    e.start()
    yield e
    e.close()


def test_greedy_answers_equal_llama_cpps_greedy_chain_token_for_token_several_at_once(engine):
    """logprobs=0 keeps a request on llama.cpp's chain (greedy sampler); without it the same
    request is sampled directly. Four of each run at once, in every slot."""
    prompts = ["Tell me about bees.", "Write a haiku about rain.", "What is 12 times 7?", "Name three colours."]
    runs = []
    for logprobs in (0, None):
        batch = []
        for slot, prompt in enumerate(prompts):
            run = Run()
            work = Work(request_id=f"d{next(_ids)}", prompt_tokens=engine.tokenize(prompt), max_tokens=48,
                        sampling=Sampling(temperature=0, ignore_eos=True, logprobs=logprobs), stop=[],
                        cache_prompt=False, token_ids=True)
            engine.submit(Job(work, slot, run.emit, lambda: None))
            batch.append(run)
        runs.append([r.ids for r in batch])
    chain, direct = runs
    assert all(len(ids) == 48 for ids in chain)
    assert direct == chain

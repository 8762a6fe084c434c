"""Greedy straight from the logits (rbee.worker.direct_sampling): the choice llama.cpp's greedy chain
makes, on made-up rows (on the model, beside llama.cpp's own chain: tests/test_worker_engine.py)."""

from __future__ import annotations

import numpy as np

from rbee.worker import direct_sampling
from rbee.worker.direct_sampling import Greedy
from rbee.worker.engine_api import Sampling

EOG = frozenset({0, 2})


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

"""Greedy sampling straight from a row of logits, without llama.cpp's sampler chain.

llama.cpp's chain starts each token by copying the whole vocabulary (SmolLM2: 49,152 ids and
logits) into a candidates array, and only then finds the best: ~105 µs a token on these cores,
spent on the decode thread between two ``llama_decode`` calls, so once per stream per step it is
pure wall time (at 4 streams 0.4 ms of a 23 ms step). For a greedy request the answer is just the
first id with the highest logit, as llama.cpp's greedy sampler picks it; numpy finds it on the
context's own output row in ~30 µs (measured right after a decode, when caches are cold: 6 µs warm).

``logit_bias`` and ``ignore_eos`` (a bias of -inf on the end-of-generation ids) are added to the row
first, as the chain's logit-bias sampler adds them; the row is the context's output buffer, read by
nobody else once this sequence has its token.

Sampling at a temperature stays on llama.cpp's chain: done here with numpy it took longer than the
chain (~160 µs against ~135 µs right after a decode: each small numpy call pays for cold caches),
and so do grammars, logprobs and penalties; :func:`applies` says which requests come here.

Pure numpy: this module imports no ``llama_cpp``; the engine hands over the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rbee.worker.engine_api import Sampling


def applies(s: Sampling) -> bool:
    """True when ``s`` is sampled here rather than on llama.cpp's chain."""
    return s.temperature <= 0 and not s.guided and s.repeat_penalty == 1.0 and not s.presence_penalty \
        and not s.frequency_penalty


@dataclass(frozen=True, slots=True)
class Greedy:
    """One sequence's greedy choice, with the biases its request adds to every row."""

    bias_ids: np.ndarray | None = None
    bias: np.ndarray | None = None

    @classmethod
    def of(cls, s: Sampling, eog: frozenset[int]) -> Greedy:
        biases = dict(s.logit_bias)
        if s.ignore_eos:
            biases.update((t, -math.inf) for t in eog)
        if not biases:
            return cls()
        return cls(np.fromiter(biases, dtype=np.intp, count=len(biases)),
                   np.fromiter(biases.values(), dtype=np.float32, count=len(biases)))

    def sample(self, row: np.ndarray) -> int:
        """The next token from ``row`` (float32 logits over the vocabulary; biased in place)."""
        if self.bias_ids is not None:
            row[self.bias_ids] += self.bias
        return int(row.argmax())

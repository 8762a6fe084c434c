"""Log-probabilities of one row of logits: the sampled token's and the likeliest alternatives'.

The model's own distribution (a log-softmax of the raw logits, before penalties, biases, grammar or
temperature), as OpenAI and llama-server report it. Computed only for sequences that ask: a pass
over the vocabulary (~50k floats) costs tens of microseconds.
"""

from __future__ import annotations

import math

import numpy as np


def rank(logits: np.ndarray, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """(``token``'s log-probability, the ``top`` likeliest tokens as (id, log-probability), best first)."""
    peak = float(logits.max())
    log_total = peak + math.log(float(np.exp(logits - peak).sum()))
    chosen = float(logits[token]) - log_total
    if top <= 0:
        return chosen, []
    best = np.argpartition(logits, -top)[-top:]
    best = best[np.argsort(-logits[best], kind="stable")]
    return chosen, [(int(t), float(logits[t]) - log_total) for t in best]

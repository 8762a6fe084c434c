"""An embeddings worker's answers: inputs checked against the model, vectors in OpenAI's list shape.

Plain logic over what the engine gives (token ids in, float32 vectors out), so it is tested without a
model. The vectors themselves come from :meth:`rbee.worker.engine.Engine.embed`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rbee.errors import ErrorCode, RbeeError


def token_inputs(inputs: Sequence[str | list[int]], tokenize: Callable[[str], list[int]], *, ctx_size: int,
                 n_vocab: int) -> list[list[int]]:
    """Each input as the token ids the model embeds; 400 naming the input that is empty, too long for the
    context, or holds a token id the vocabulary lacks."""
    out = []
    for i, item in enumerate(inputs):
        tokens = tokenize(item) if isinstance(item, str) else list(item)
        if not tokens:
            raise RbeeError(ErrorCode.INVALID_REQUEST, f"Input {i} has no tokens. Send non-empty text.",
                            {"field": "input", "index": i})
        if len(tokens) > ctx_size:
            raise RbeeError(ErrorCode.CONTEXT_OVERFLOW,
                            f"Input {i} is {len(tokens)} tokens; this worker embeds at most {ctx_size} "
                            "(its --ctx-size). Send shorter inputs, or start the worker with a larger --ctx-size.",
                            {"field": "input", "index": i, "tokens": len(tokens), "ctx_size": ctx_size})
        bad = next((t for t in tokens if t >= n_vocab), None)
        if bad is not None:
            raise RbeeError(ErrorCode.INVALID_REQUEST,
                            f"Input {i} holds token id {bad}; the model's vocabulary has {n_vocab} tokens "
                            f"(ids 0-{n_vocab - 1}). Send text, or ids of this model's tokenizer.",
                            {"field": "input", "index": i, "vocab_size": n_vocab})
        out.append(tokens)
    return out


def check_dimensions(dimensions: int | None, n_embd: int) -> None:
    """``dimensions`` is honoured only as the model's own length: shortening (Matryoshka models) is refused."""
    if dimensions is not None and dimensions != n_embd:
        raise RbeeError(ErrorCode.INVALID_REQUEST,
                        f"Invalid field 'dimensions': this model's vectors have {n_embd} dimensions and rbee does "
                        "not shorten them. Omit 'dimensions', or send it equal to that.",
                        {"field": "dimensions", "embedding_length": n_embd})


def encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """OpenAI's two encodings: a list of floats, or base64 of the little-endian float32 bytes (what the
    official client sends by default and decodes itself)."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def answer(vectors: Sequence[np.ndarray], prompt_tokens: int, model: str, encoding_format: str) -> dict[str, Any]:
    """OpenAI's embeddings list, the vectors in input order."""
    data = [{"object": "embedding", "index": i, "embedding": encode(v, encoding_format)}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}

"""From an inference request to the engine's :class:`Work`: the prompt rendered with the model's chat
template, tokenized, and fitted to the context (checked once, here)."""

from __future__ import annotations

import asyncio
import dataclasses

from rbee import chat
from rbee.errors import ErrorCode, RbeeError
from rbee.prefix import prefix_hashes
from rbee.protocol import InferenceRequest
from rbee.worker.engine_api import Sampling, Work

TOKENIZE_ON_LOOP_CHARS = 4096  # longer prompts take milliseconds to tokenize: not on the loop


class Tokenizer:
    """What this needs of the engine (``rbee.worker.engine.Engine``)."""

    metadata: dict

    def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...
    def chat_template(self) -> str | None: ...
    def grammar_error(self, grammar: str) -> str | None: ...


def sampling_of(req: InferenceRequest) -> Sampling:
    return Sampling(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
                    repeat_penalty=req.repeat_penalty, seed=req.seed, ignore_eos=req.ignore_eos,
                    presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                    logit_bias=tuple(sorted(req.logit_bias.items())), grammar=req.answer_grammar(),
                    logprobs=req.logprobs)


def check_sampling(sampling: Sampling, engine: Tokenizer) -> None:
    """What only the loaded model can tell: token ids in its vocabulary, a grammar llama.cpp parses."""
    vocab = engine.metadata.get("vocab_size")
    bad = [t for t, _ in sampling.logit_bias if vocab is not None and t >= vocab]
    if bad:
        raise RbeeError(ErrorCode.INVALID_REQUEST, f"Invalid field 'logit_bias': token id {bad[0]} is not in this "
                        f"model's vocabulary (ids 0-{vocab - 1}).", {"field": "logit_bias"})
    if sampling.grammar is not None:
        problem = engine.grammar_error(sampling.grammar)
        if problem is not None:
            raise RbeeError(ErrorCode.INVALID_REQUEST, f"Invalid field 'grammar': {problem}.", {"field": "grammar"})


def fit(req: InferenceRequest, request_id: str, prompt_tokens: list[int], ctx_size: int) -> Work:
    """The work for a tokenized prompt: refused when the prompt fills the context, ``max_tokens``
    clipped to what is left of it (the done event says so)."""
    prompt_tokens = prompt_tokens + req.resume_ids  # a resumption goes on after the answer so far
    if len(prompt_tokens) >= ctx_size:
        raise RbeeError(
            ErrorCode.CONTEXT_OVERFLOW,
            f"The prompt is {len(prompt_tokens)} tokens but the context holds {ctx_size}. "
            "Shorten the prompt or start the worker with a larger --ctx-size.",
            {"prompt_tokens": len(prompt_tokens), "ctx_size": ctx_size},
        )
    max_tokens = min(req.max_tokens, ctx_size - len(prompt_tokens) + len(req.resume_ids))
    return Work(request_id=request_id, prompt_tokens=prompt_tokens, max_tokens=max_tokens, sampling=sampling_of(req),
                stop=req.stop, max_tokens_clipped=max_tokens if max_tokens < req.max_tokens else None,
                cache_prompt=req.cache_prompt, token_ids=req.token_ids, resumed=len(req.resume_ids),
                first_index=req.resume_index)


async def prepare(req: InferenceRequest, request_id: str, engine: Tokenizer, ctx_size: int,
                  report_cache: bool = False) -> Work:
    """The work for ``req``; with ``report_cache`` (the queen asked), tagged with the queen's hashes of
    its prompt, so that its done event can say what this worker's cache holds (:mod:`rbee.prefix`)."""
    text = req.prompt if req.messages is None else chat.render(
        [m.model_dump(exclude_none=True) for m in req.messages], engine.chat_template())
    assert text is not None  # the request model holds exactly one of prompt and messages
    if len(text) <= TOKENIZE_ON_LOOP_CHARS:
        tokens = engine.tokenize(text)
    else:
        tokens = await asyncio.get_running_loop().run_in_executor(None, engine.tokenize, text)
    work = fit(req, request_id, tokens, ctx_size)
    check_sampling(work.sampling, engine)
    if report_cache:
        work = dataclasses.replace(work, prefix=tuple(prefix_hashes(req)))
    return work

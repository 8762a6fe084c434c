"""What the engine is asked to do: its settings, one request's sampling and work, the job in a slot.

Plain data, free of llama.cpp, so the app and the tests can build them without loading a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rbee.events import EngineEvent

Emit = Callable[[EngineEvent], None]


@dataclass(frozen=True)
class EngineConfig:
    model_path: Path
    slots: int = 1
    ctx_size: int = 2048  # per slot
    threads: int = 0  # 0 = one per core
    batch_size: int = 512  # most tokens one decode step takes (a long prompt goes in chunks)
    ubatch_size: int = 512
    n_gpu_layers: int = 0
    main_gpu: int = 0  # which GPU, when layers are offloaded
    flash_attn: bool = True
    kv_unified: bool = False  # one KV stream per slot, as llama-server --parallel N: attention reads only its own cells
    use_mmap: bool = True
    poll: int = 50  # ggml threadpool polling level (0-100), llama-server's default; -1 = no threadpool
    # ggml's reference CPU kernels (rbee.worker.cpu_reference): a token's logits never depend on the
    # rest of its batch, so a cached answer equals the uncached one token for token
    batch_invariant: bool = True
    cache_ram_mb: int = 0  # host RAM for slot states a new prompt took the slot from (0: none kept)
    # Load the model for pooled embeddings (Engine.embed) instead of generation; pooling: "mean", "cls" or
    # "last", None for the model's own (mean when its GGUF names none, as causal LMs' do not)
    embeddings: bool = False
    pooling: str | None = None


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0  # OpenAI's: subtracted from the logit of every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: times how often it was generated
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    grammar: str | None = None  # GBNF the answer must match (checked before it gets here)
    logprobs: int | None = None  # each token's log-probability and this many alternatives; None: none

    @property
    def guided(self) -> bool:
        """Sampled on the engine's guided path (grammar, logprobs) rather than in one llama.cpp call."""
        return self.grammar is not None or self.logprobs is not None

    @property
    def reproducible(self) -> bool:
        """The answer must not depend on what else is in the batch or the cache: greedy, seeded, or with
        logprobs (numbers people compare). Computed on the reference kernels (cpu_reference)."""
        return self.temperature <= 0 or self.seed is not None or self.logprobs is not None


@dataclass(frozen=True)
class Work:
    """One request as the engine is to run it: built by the worker's handler, before it has a slot."""

    request_id: str
    prompt_tokens: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    max_tokens_clipped: int | None = None  # the max_tokens asked for, when the context made it smaller
    cache_prompt: bool = True  # reuse the KV a slot holds of an earlier prompt with the same beginning
    deadline: float | None = None  # time.monotonic() at which it ends, finish reason "deadline" (rbee.deadline)
    token_ids: bool = False  # each token event carries the ids of the tokens it completes
    resumed: int = 0  # the last this many of prompt_tokens are answer tokens already sent (a resumption)
    first_index: int = 0  # the index of the first token event
    # The queen's hashes of the prompt (rbee.prefix), when the queen asked for reports of what is cached:
    # the slot is tagged with them, and the done event says what the worker holds.
    prefix: tuple[bytes, ...] | None = None


@dataclass(frozen=True)
class Job:
    """Work admitted into a slot. ``emit`` receives its events (on the decode thread); ``on_finish``
    runs once, when the slot is free again, before the last event is emitted."""

    work: Work
    slot: int
    emit: Emit
    on_finish: Callable[[], None]


class EngineError(Exception):
    pass

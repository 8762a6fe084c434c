"""What the engine is asked to do: its settings, one request's sampling, the job, the errors.

Plain data, free of llama.cpp, so the app and the tests can build them without loading a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class EngineConfig:
    model_path: Path
    slots: int = 1
    ctx_size: int = 2048  # per slot
    threads: int = 0  # 0 = one per core
    batch_size: int = 2048
    ubatch_size: int = 512
    n_gpu_layers: int = 0
    main_gpu: int = 0  # which GPU, when layers are offloaded
    flash_attn: bool = True
    kv_unified: bool = False  # one KV stream per slot, as llama-server --parallel N: attention reads only its own cells
    use_mmap: bool = True
    poll: int = 50  # ggml threadpool polling level (0-100), llama-server's default; -1 = no threadpool


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False


@dataclass
class Job:
    """One admitted request. ``emit`` receives token/done/error events; ``on_finish`` runs once, when
    the slot is free again, before the last event is emitted."""

    request_id: str
    slot: int
    prompt_tokens: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    emit: Emit
    on_finish: Callable[[], None]
    max_tokens_clipped: int | None = None


class EngineError(Exception):
    pass


class ContextOverflow(EngineError):
    def __init__(self, prompt_tokens: int, ctx_size: int) -> None:
        super().__init__(f"prompt is {prompt_tokens} tokens; the context holds {ctx_size}")
        self.prompt_tokens = prompt_tokens
        self.ctx_size = ctx_size

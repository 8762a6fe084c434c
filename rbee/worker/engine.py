"""The llama.cpp backend: one model, one context, N sequences decoded together each step.

This is the only module that imports ``llama_cpp``. It runs its own decode thread; the async world
talks to it through :meth:`Engine.submit` and :meth:`Engine.cancel`, and hears back through the
callbacks on each :class:`Job` (called from the decode thread: they must be thread-safe).

Continuous batching, as llama.cpp's ``llama-server`` does it: every step builds one ``llama_batch``
holding the next token of every generating sequence plus as much pending prompt as fits, decodes
it once, and samples each sequence from its own row of logits with its own sampler chain. New
sequences join at the next step; finished ones leave without disturbing the others, and their KV
cells are dropped at once.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp as lc

log = logging.getLogger(__name__)

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
    flash_attn: bool = True


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None


@dataclass
class Job:
    """One admitted request. ``emit`` receives token/done/error events; ``on_finish`` runs once at the end."""

    request_id: str
    slot: int
    prompt_tokens: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    emit: Emit
    on_finish: Callable[[], None]
    max_tokens_clipped: int | None = None


@dataclass
class _Sequence:
    job: Job
    sampler: Any
    pending: list[int]
    started: float
    n_past: int = 0
    generated: int = 0
    events: int = 0
    held: str = ""
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))


class EngineError(Exception):
    pass


class ContextOverflow(EngineError):
    def __init__(self, prompt_tokens: int, ctx_size: int) -> None:
        super().__init__(f"prompt is {prompt_tokens} tokens; the context holds {ctx_size}")
        self.prompt_tokens = prompt_tokens
        self.ctx_size = ctx_size


_backend_ready = threading.Lock()
_backend_initialised = False
_llama_log = logging.getLogger("llama.cpp")


@lc.llama_log_callback
def _forward_llama_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # llama.cpp is chatty at load time; keep its lines at debug, warnings and errors as such.
    if level in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
        _llama_log.log(logging.WARNING if level == 3 else logging.ERROR, text.decode("utf-8", "replace").rstrip())
    elif _llama_log.isEnabledFor(logging.DEBUG):
        _llama_log.debug(text.decode("utf-8", "replace").rstrip())


def _init_backend() -> None:
    global _backend_initialised
    with _backend_ready:
        if not _backend_initialised:
            lc.llama_log_set(_forward_llama_log, ctypes.c_void_p(0))
            lc.llama_backend_init()
            _backend_initialised = True


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.threads = config.threads or max(1, os.cpu_count() or 1)
        self._model: Any = None
        self._ctx: Any = None
        self._vocab: Any = None
        self._batch: Any = None
        self._mem: Any = None
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._active: dict[int, _Sequence] = {}
        self._thread: threading.Thread | None = None
        self._pieces: dict[int, bytes] = {}
        self._progress_cb: Any = None
        self.metadata: dict[str, Any] = {}

    # ------------------------------------------------------------ lifecycle (blocking: run off the loop)

    def load(self, on_progress: Callable[[float], None] | None = None) -> None:
        """Load the GGUF and create the context. Blocking; call it in an executor."""
        _init_backend()
        cfg = self.config
        if not cfg.model_path.is_file():
            raise EngineError(f"model file not found: {cfg.model_path}")
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = cfg.n_gpu_layers
        if on_progress is not None:

            def _progress(fraction: float, _user: ctypes.c_void_p) -> bool:
                on_progress(float(fraction))
                return True

            self._progress_cb = lc.llama_progress_callback(_progress)
            mparams.progress_callback = self._progress_cb
        model = lc.llama_model_load_from_file(str(cfg.model_path).encode(), mparams)
        if not model:
            raise EngineError(f"llama.cpp could not load {cfg.model_path}: is it a valid GGUF file?")
        self._model = model
        self._vocab = lc.llama_model_get_vocab(model)

        cparams = lc.llama_context_default_params()
        cparams.n_ctx = cfg.ctx_size * cfg.slots
        cparams.n_batch = cfg.batch_size
        cparams.n_ubatch = cfg.ubatch_size
        cparams.n_seq_max = cfg.slots
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        if hasattr(cparams, "kv_unified"):
            cparams.kv_unified = True
        if hasattr(cparams, "flash_attn_type"):
            cparams.flash_attn_type = 1 if cfg.flash_attn else 0
        elif hasattr(cparams, "flash_attn"):
            cparams.flash_attn = cfg.flash_attn
        ctx = lc.llama_init_from_model(model, cparams)
        if not ctx:
            raise EngineError("llama.cpp could not create a context; lower --ctx-size or --slots")
        self._ctx = ctx
        self._mem = lc.llama_get_memory(ctx)
        self._batch = lc.llama_batch_init(cfg.batch_size, 0, 1)
        self.metadata = self._read_metadata()
        if on_progress is not None:
            on_progress(1.0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rbee-decode", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the decode thread (cancelling what runs) and free llama.cpp's memory."""
        if self._thread is not None:
            self._inbox.put(("stop", None))
            self._thread.join(timeout=10)
            self._thread = None
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            lc.llama_model_free(self._model)
            self._model = None

    # ------------------------------------------------------------ thread-safe API

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        return list(buf[:n])

    def submit(self, job: Job) -> None:
        if len(job.prompt_tokens) >= self.config.ctx_size:
            raise ContextOverflow(len(job.prompt_tokens), self.config.ctx_size)
        self._inbox.put(("submit", job))

    def cancel(self, request_id: str, on_done: Callable[[bool], None]) -> None:
        """Stop a sequence; ``on_done(found)`` runs on the decode thread once its slot is free."""
        self._inbox.put(("cancel", (request_id, on_done)))

    # ------------------------------------------------------------ decode loop

    def _run(self) -> None:
        try:
            while True:
                if not self._drain_inbox(block=not self._active):
                    break
                if self._active:
                    self._step()
        except Exception:  # a bug here must not leave clients hanging
            log.exception("decode loop crashed")
            for seq in list(self._active.values()):
                self._fail(seq, "The worker's decode loop failed. Check the worker log and retry.")
        finally:
            for seq in list(self._active.values()):
                self._finish(seq, "cancelled")

    def _drain_inbox(self, block: bool) -> bool:
        """Apply queued commands; False when asked to stop."""
        while True:
            try:
                kind, arg = self._inbox.get() if block else self._inbox.get_nowait()
            except queue.Empty:
                return True
            block = False
            if kind == "stop":
                return False
            if kind == "submit":
                self._admit(arg)
            elif kind == "cancel":
                request_id, on_done = arg
                seq = next((s for s in self._active.values() if s.job.request_id == request_id), None)
                if seq is not None:
                    self._finish(seq, "cancelled")
                on_done(seq is not None)

    def _admit(self, job: Job) -> None:
        seq = _Sequence(job=job, sampler=self._make_sampler(job.sampling), pending=list(job.prompt_tokens),
                        started=time.perf_counter())
        lc.llama_memory_seq_rm(self._mem, job.slot, -1, -1)
        self._active[job.slot] = seq

    def _step(self) -> None:
        batch = self._batch
        n = 0
        budget = self.config.batch_size
        rows: list[tuple[_Sequence, int]] = []
        # Generating sequences first (one token each) so running streams never wait on a long prompt.
        order = sorted(self._active.values(), key=lambda s: len(s.pending) > 1)
        for seq in order:
            if budget <= 0:
                break
            take = seq.pending[:budget]
            slot = seq.job.slot
            for i, tok in enumerate(take):
                batch.token[n] = tok
                batch.pos[n] = seq.n_past + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot
                batch.logits[n] = 0
                n += 1
            seq.n_past += len(take)
            budget -= len(take)
            del seq.pending[: len(take)]
            if not seq.pending:
                batch.logits[n - 1] = 1
                rows.append((seq, n - 1))
        batch.n_tokens = n
        rc = lc.llama_decode(self._ctx, batch)
        if rc != 0:
            for seq, _ in rows:
                self._fail(seq, f"llama_decode failed (code {rc}); the context may be full. Retry with less text.")
            return
        for seq, row in rows:
            token = lc.llama_sampler_sample(seq.sampler, self._ctx, row)
            self._on_token(seq, token)

    def _on_token(self, seq: _Sequence, token: int) -> None:
        job = seq.job
        if lc.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop")
            return
        seq.generated += 1
        text = seq.held + seq.decoder.decode(self._piece(token))
        seq.held = ""
        stopped = False
        if job.stop:
            text, seq.held, stopped = _apply_stop(text, job.stop)
        if text:
            job.emit({"token": text, "index": seq.events})
            seq.events += 1
        if stopped:
            self._finish(seq, "stop")
        elif seq.generated >= job.max_tokens or seq.n_past + 1 >= self.config.ctx_size:
            self._finish(seq, "length")
        else:
            seq.pending.append(token)

    def _finish(self, seq: _Sequence, reason: str) -> None:
        job = seq.job
        if reason != "cancelled":
            tail = seq.held + seq.decoder.decode(b"", final=True)
            if tail and reason != "stop":
                job.emit({"token": tail, "index": seq.events})
                seq.events += 1
        done: dict[str, Any] = {
            "done": True,
            "total_tokens": seq.generated,
            "duration_ms": int((time.perf_counter() - seq.started) * 1000),
            "finish_reason": reason,
            "prompt_tokens": len(job.prompt_tokens),
        }
        if job.max_tokens_clipped is not None:
            done["max_tokens_clipped"] = job.max_tokens_clipped
        self._release(seq)
        job.emit(done)

    def _fail(self, seq: _Sequence, message: str) -> None:
        self._release(seq)
        seq.job.emit({"error": {"code": "INTERNAL", "message": message, "details": {}}})

    def _release(self, seq: _Sequence) -> None:
        if self._active.get(seq.job.slot) is not seq:
            return
        del self._active[seq.job.slot]
        lc.llama_memory_seq_rm(self._mem, seq.job.slot, -1, -1)
        lc.llama_sampler_free(seq.sampler)
        seq.job.on_finish()

    # ------------------------------------------------------------ helpers

    def _make_sampler(self, s: Sampling) -> Any:
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        add = lc.llama_sampler_chain_add
        if s.repeat_penalty != 1.0:
            add(chain, lc.llama_sampler_init_penalties(
                lc.llama_vocab_n_tokens(self._vocab), 64, s.repeat_penalty, 0.0, 0.0))
        if s.temperature <= 0:
            add(chain, lc.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            add(chain, lc.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            add(chain, lc.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0:
            add(chain, lc.llama_sampler_init_min_p(s.min_p, 1))
        add(chain, lc.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little")
        add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(256)
            n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[: max(n, 0)]
            self._pieces[token] = piece
        return piece

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(512)
        n = lc.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def _read_metadata(self) -> dict[str, Any]:
        desc = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self._model, desc, len(desc))
        return {
            "name": self._meta("general.name"),
            "architecture": self._meta("general.architecture"),
            "description": desc.value.decode("utf-8", "replace"),
            "parameters": int(lc.llama_model_n_params(self._model)),
            "size_bytes": int(lc.llama_model_size(self._model)),
            "file_bytes": self.config.model_path.stat().st_size,
            "quantization": _quantization(desc.value.decode("utf-8", "replace")),
            "vocab_size": int(lc.llama_vocab_n_tokens(self._vocab)),
            "eos_token_id": int(lc.llama_vocab_eos(self._vocab)),
            "context_trained": int(lc.llama_model_n_ctx_train(self._model)),
        }

    def chat_template(self) -> str | None:
        raw = lc.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8") if raw else None


def _quantization(description: str) -> str | None:
    # llama_model_desc reads like "llama 135M Q4_1".
    parts = description.split()
    return parts[-1] if len(parts) >= 3 else None


def _apply_stop(text: str, stops: list[str]) -> tuple[str, str, bool]:
    """Split ``text`` into (emit now, hold back, stopped).

    Text that could be the start of a stop string is held until it is decided, so a stop string
    never leaks to the client, not even in part.
    """
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return (text[: len(text) - hold], text[len(text) - hold :], False) if hold else (text, "", False)

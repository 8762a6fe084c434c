"""The llama.cpp backend: one model, one context, N sequences decoded together each step.

This is the only module that imports ``llama_cpp``. It runs its own decode thread; the async world
talks to it through :meth:`Engine.submit` and :meth:`Engine.cancel`, and hears back through the
callbacks on each :class:`Job` (called from the decode thread: they must be thread-safe).

Continuous batching, as llama.cpp's ``llama-server`` does it: every step builds one ``llama_batch``
holding the next token of every generating sequence plus as much pending prompt as fits, decodes
it once, and samples each sequence from its own row of logits with its own sampler chain. New
sequences join at the next step; finished ones leave without disturbing the others.

The prompt cache, as llama-server's ``cache_prompt``: a slot keeps the KV of what it last decoded
(prompt and answer) when its request ends, and the engine remembers those tokens. A new request in
that slot keeps the cells of the prefix it shares with them, drops the rest, and decodes only its
own suffix (always its last prompt token at least: sampling needs that token's logits). Which free
slot a request gets is decided by :mod:`rbee.worker.prompt_cache` from what each slot holds.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np
from llama_cpp import _ctypes_extensions

from rbee.errors import ErrorCode
from rbee.events import Alternative, Done, Failed, Prefilling, Token, TokenLogprob
from rbee.worker import cpu_reference, devices, direct_sampling, logprobs, prompt_cache, ram_cache, threadpool
from rbee.worker.devices import Device
from rbee.worker.engine_api import EngineConfig, EngineError, Job, Sampling, Work
from rbee.worker.textstream import TextStream

log = logging.getLogger(__name__)

# Host-RAM prompt cache: a slot's state is saved when a new prompt would throw away at least this many
# of its tokens, and a saved state restored when it gives at least this many more than the slot holds.
RAM_MIN_SAVE = 32
RAM_MIN_GAIN = 16
PROGRESS_EVERY = 0.5  # seconds between a long prompt's Prefilling notes (well inside any stall timeout)

POOLING = {"mean": lc.LLAMA_POOLING_TYPE_MEAN, "cls": lc.LLAMA_POOLING_TYPE_CLS, "last": lc.LLAMA_POOLING_TYPE_LAST}

__all__ = ["Device", "Engine", "EngineConfig", "EngineError", "Job", "Sampling", "Work", "list_devices"]


@dataclass(slots=True)
class _Sequence:
    job: Job
    sampler: Any  # llama.cpp's sampler chain; None where the answer is greedy straight from the logits (greedy)
    pending: list[int]
    started: float
    text: TextStream
    n_past: int = 0
    generated: int = 0
    events: int = 0
    cached: int = 0  # prompt tokens whose KV the slot already held
    guide: Any = None  # grammar and logprobs state, made on the first guided sample (_sample_guided)
    logprobs: list[TokenLogprob] | None = None  # sampled tokens' logprobs not yet sent with text
    noted: float = 0.0  # when progress through the prompt was last told (Prefilling)
    ids: list[int] | None = None  # sampled tokens not yet sent with text, when the job asks for ids
    greedy: direct_sampling.Greedy | None = None
    exact: bool = False  # computed on the reference kernels (a reproducible answer, cpu_reference)

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


def _nothing() -> None:
    pass


@functools.cache
def _libggml() -> ctypes.CDLL:
    """The ggml library llama.cpp runs on: LLAMA_CPP_LIB_PATH's when set (a CUDA build, say), as
    llama_cpp itself honours it for libllama; else the one in llama_cpp's package."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return _ctypes_extensions.load_shared_library("ggml", Path(override))
    from llama_cpp import _ggml

    return _ggml.libggml


def _keeping_gil(fn: Any) -> Any:
    """The same llama.cpp function, called without releasing the GIL (ctypes.PyDLL).

    For the decode loop's short calls (sampling: tens of microseconds). ctypes lets go of the GIL
    around every foreign call; then the event-loop thread takes it to write tokens, and the decode
    thread waits for it back after each of them — once per sequence per step. Kept for llama_decode,
    where the loop should run.
    """
    lib = lc.llama_cpp._lib
    held = getattr(ctypes.PyDLL(lib._name, handle=lib._handle), fn.__name__)
    held.argtypes, held.restype = fn.argtypes, fn.restype
    return held


def _init_backend() -> None:
    global _backend_initialised
    with _backend_ready:
        if not _backend_initialised:
            lc.llama_log_set(_forward_llama_log, ctypes.c_void_p(0))
            lc.llama_backend_init()
            _backend_initialised = True


def list_devices() -> list[Device]:
    """The CPU and every GPU this llama.cpp build sees."""
    _init_backend()
    return devices.enumerate_devices(_libggml())


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.threads = config.threads or max(1, os.cpu_count() or 1)
        self._model: Any = None
        self._ctx: Any = None
        self._vocab: Any = None
        self._batch: Any = None
        self._mem: Any = None
        self._pool: threadpool.Threadpool | None = None
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._active: dict[int, _Sequence] = {}
        # Per slot, the tokens whose KV its cells hold, position by position (decode thread only),
        # and the copy of them published when the slot was last released (read by the loop).
        self._cells: list[list[int]] = [[] for _ in range(config.slots)]
        self._held: list[prompt_cache.Held] = [prompt_cache.Held()] * config.slots
        self._releases = 0
        self._holdings = prompt_cache.Holdings(config.slots, time.time_ns())
        self._n_swa = 0
        self._ram = ram_cache.RamCache(config.cache_ram_mb * 2**20) if config.cache_ram_mb else None
        self.batch_invariant = False  # reproducible requests run on ggml's reference kernels (see load)
        self._kernels = cpu_reference.Outcome("not loaded")
        self._exactness = prompt_cache.Exactness(config.slots, tracking=False)
        self._thread: threading.Thread | None = None
        self._alive = False  # the decode loop takes new work
        self._stopping = threading.Lock()
        self._pieces: dict[int, bytes] = {}
        self._eog: frozenset[int] = frozenset()
        self._eog_bias: Any = None
        self._progress_cb: Any = None
        self._sample: Any = None
        self._logits: Any = None  # llama_get_logits, keeping the GIL, returning the address
        self._n_vocab = 0  # the model's vocabulary: the width of a row of logits
        self._rows_of: dict[int, Any] = {}  # ctypes array types of n rows of logits, by n
        self._flush: Callable[[], None] = _nothing
        self._embedding = threading.Lock()  # one embedding at a time on the context; close waits for it
        self.pooling: str | None = None  # how vectors are pooled, once loaded for embeddings
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
        if cfg.n_gpu_layers:
            mparams.main_gpu = cfg.main_gpu
            mparams.split_mode = 0  # LLAMA_SPLIT_MODE_NONE: the one device asked for, not every GPU
        mparams.use_mmap = cfg.use_mmap
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
        if cfg.embeddings:
            self.pooling = cfg.pooling or self._model_pooling()
        with cpu_reference.reference_kernels(_libggml(), cfg.batch_invariant) as reference:
            ctx = lc.llama_init_from_model(model, self._context_params())
        self._kernels = reference
        self.batch_invariant = reference.applied > 0
        self._exactness = prompt_cache.Exactness(cfg.slots, tracking=self.batch_invariant)
        if not ctx:
            raise EngineError("llama.cpp could not create a context; lower --ctx-size or --slots")
        self._ctx = ctx
        self._mem = lc.llama_get_memory(ctx)
        if cfg.poll >= 0:
            # llama-server drives its context through a persistent ggml threadpool; without one, ggml
            # builds a throw-away pool for every graph it computes.
            self._pool = threadpool.attach(_libggml(), lc.llama_cpp._lib, ctx, self.threads, cfg.poll)
        self._batch = lc.llama_batch_init(self._batch_rows, 0, 1)
        for i in range(self._batch_rows):  # every row belongs to one sequence and wants no logits unless told
            self._batch.n_seq_id[i] = 1
            self._batch.logits[i] = 0
        n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self._eog = frozenset(t for t in range(n_vocab) if lc.llama_vocab_is_eog(self._vocab, t))
        self._n_swa = int(lc.llama_model_n_swa(model))
        self._sample = _keeping_gil(lc.llama_sampler_sample)
        self._logits = _keeping_gil(lc.llama_get_logits)
        self._logits.restype = ctypes.c_void_p
        self._n_vocab = n_vocab
        self.metadata = self._read_metadata()
        if on_progress is not None:
            on_progress(1.0)

    @property
    def _batch_rows(self) -> int:
        """An embedding's input goes in one batch (and ubatch: pooling, and non-causal models, need it whole)."""
        return self.config.ctx_size if self.config.embeddings else self.config.batch_size

    def _model_pooling(self) -> str:
        """The pooling the GGUF names (``<arch>.pooling_type``, as embedding models' do), else mean."""
        named = self._meta(f"{self._meta('general.architecture')}.pooling_type")
        by_type = {v: k for k, v in POOLING.items()}
        return by_type.get(int(named), "mean") if named and named.isdigit() else "mean"

    def _context_params(self) -> Any:
        cfg = self.config
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = cfg.ctx_size * cfg.slots
        cparams.n_batch = cfg.batch_size
        cparams.n_ubatch = min(cfg.ubatch_size, cfg.batch_size)
        cparams.n_seq_max = cfg.slots
        if cfg.embeddings:  # one sequence at a time (Engine.embed), whole in one ubatch
            cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = cfg.ctx_size
            cparams.n_seq_max = 1
            cparams.embeddings = True
            cparams.pooling_type = POOLING[self.pooling or "mean"]
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        cparams.kv_unified = cfg.kv_unified
        cparams.flash_attn_type = 1 if cfg.flash_attn else 0  # LLAMA_FLASH_ATTN_TYPE_ENABLED / _DISABLED
        return cparams

    def start(self) -> None:
        self._alive = True
        self._thread = threading.Thread(target=self._run, name="rbee-decode", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._alive

    def close(self) -> None:
        """Stop the decode thread (cancelling what runs) and free llama.cpp's memory."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._inbox.put(("stop", None))
            thread.join(timeout=10)
        with self._embedding:  # an embedding under way finishes before its context goes
            self._free()

    def _free(self) -> None:
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._pool is not None:
            self._pool.free()
            self._pool = None
        if self._model is not None:
            self._vocab = None
            lc.llama_model_free(self._model)
            self._model = None

    # ------------------------------------------------------------ thread-safe API

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        if self._vocab is None:
            raise EngineError("no model is loaded")
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        return list(buf[:n])

    def embed(self, inputs: list[list[int]]) -> list[np.ndarray]:
        """Each input's pooled embedding, L2-normalised (as OpenAI's and llama-server's are), in order.

        Blocking: call it in an executor (llama_decode lets go of the GIL). Each input is decoded alone
        in a cleared context, so its vector never depends on what else was asked with it. Inputs must
        be non-empty and fit the context (the caller checks: rbee.worker.embeddings)."""
        with self._embedding:
            if self._ctx is None or not self.config.embeddings:
                raise EngineError("no model is loaded for embeddings")
            n_embd = int(lc.llama_model_n_embd(self._model))
            return [self._embed_one(tokens, n_embd) for tokens in inputs]

    def _embed_one(self, tokens: list[int], n_embd: int) -> np.ndarray:
        lc.llama_memory_clear(self._mem, True)
        batch = self._batch
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.seq_id[i][0], batch.logits[i] = token, i, 0, 1
        batch.n_tokens = len(tokens)
        rc = lc.llama_decode(self._ctx, batch)
        if rc != 0:
            raise EngineError(f"llama_decode failed (code {rc}) on an input of {len(tokens)} tokens")
        pooled = lc.llama_get_embeddings_seq(self._ctx, 0)
        if not pooled:
            raise EngineError("llama.cpp returned no pooled embedding")
        vector = np.ctypeslib.as_array(pooled, shape=(n_embd,)).astype(np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def prefer_slots(self, work: Work, free: list[int]) -> list[int]:
        """The free slots in the order ``work`` should take them (best cached prefix first). Called on
        the event loop: it reads only what the decode thread published when those slots were released."""
        held, ram = self._held, self._ram
        exact = self._exact(work)
        saved = (ram.published_exact if exact else ram.published) if ram and work.cache_prompt else ()
        elsewhere = ram_cache.best_published(saved, work.prompt_tokens) if saved else 0
        return prompt_cache.rank_slots(work.prompt_tokens, {slot: held[slot].for_request(exact) for slot in free},
                                       work.cache_prompt, elsewhere=elsewhere)

    def _exact(self, work: Work) -> bool:
        """Whether ``work`` runs on the reference kernels (and reuses only cells computed on them)."""
        return self.batch_invariant and work.sampling.reproducible

    @property
    def graphs_reused(self) -> int:
        """How many decode steps llama.cpp computed on the step before's graph, as it counts them (a
        diagnostic: a step that cannot reuse it builds and allocates a new one first)."""
        return int(lc.llama_perf_context(self._ctx).n_reused) if self._ctx else 0

    def kv_usage(self) -> float:
        """The share of KV cells that running sequences hold. Cells a free slot keeps for the prompt
        cache are not counted: they are given up the moment another prompt needs the slot (as vLLM
        counts its cached prefix blocks as free)."""
        cells = self._cells
        used = sum(len(cells[slot]) for slot in list(self._active))
        return used / (self.config.ctx_size * self.config.slots)

    def set_flush(self, flush: Callable[[], None]) -> None:
        """``flush()`` is called on the decode thread whenever the events emitted so far should go out:
        before each llama_decode (so they are sent while it computes) and before the loop waits."""
        self._flush = flush

    def submit(self, job: Job) -> None:
        if not self._alive:
            raise EngineError("the decode loop is not running")
        self._post("submit", job)

    def cancel(self, request_id: str, on_done: Callable[[bool], None]) -> None:
        """Stop a sequence; ``on_done(found)`` runs on the decode thread once its slot is free."""
        self._post("cancel", (request_id, on_done))

    def _post(self, kind: str, arg: Any) -> None:
        self._inbox.put((kind, arg))
        if not self._alive:  # the loop has stopped (or is stopping): nobody else will read the inbox
            with self._stopping:
                self._drain_inbox(block=False)
                self._flush()

    # ------------------------------------------------------------ decode loop

    def _run(self) -> None:
        try:
            while self._drain_inbox(block=not self._active):
                self._expire()
                if self._active:
                    self._step()
        except Exception:  # a bug here must not leave clients hanging
            log.exception("decode loop crashed")
            for seq in list(self._active.values()):
                self._fail(seq, "The worker's decode loop failed. Check the worker log and retry.")
        finally:
            with self._stopping:
                self._alive = False
                for seq in list(self._active.values()):
                    self._finish(seq, "cancelled")
                self._drain_inbox(block=False)  # whatever arrived meanwhile is answered, never left waiting
                self._flush()

    def _drain_inbox(self, block: bool) -> bool:
        """Apply queued commands; False when asked to stop."""
        while True:
            if block:
                self._flush()
            try:
                kind, arg = self._inbox.get() if block else self._inbox.get_nowait()
            except queue.Empty:
                return True
            block = False
            if kind == "stop":
                return False
            if kind == "submit":
                if self._alive:
                    self._admit(arg)
                else:  # submitted while the loop was stopping
                    arg.on_finish()
                    arg.emit(Done(0, 0, "cancelled", prompt_tokens=len(arg.work.prompt_tokens)))
            elif kind == "cancel":
                request_id, on_done = arg
                seq = next((s for s in self._active.values() if s.job.work.request_id == request_id), None)
                if seq is not None:
                    self._finish(seq, "cancelled")
                on_done(seq is not None)

    def _expire(self) -> None:
        """End the sequences whose deadline has passed, freeing their slots: checked here, between steps,
        so a slot never runs past its request's deadline, whether or not anyone still reads the stream."""
        now = time.monotonic()
        for seq in [s for s in self._active.values() if s.job.work.deadline is not None and s.job.work.deadline <= now]:
            self._finish(seq, "deadline")

    def _admit(self, job: Job) -> None:
        work = job.work
        prompt, slot, exact = work.prompt_tokens, job.slot, self._exact(work)
        keep = prompt_cache.reusable(self._cells[slot], prompt) if work.cache_prompt else 0
        if exact:
            keep = min(keep, self._exactness.of(slot, len(self._cells[slot])))
        if self._ram is not None:
            keep = self._swap_with_ram(slot, prompt, keep, work.cache_prompt, exact)
        keep = self._keep_prefix(slot, keep)
        self._holdings.tag(slot, work.prefix or ())
        now = time.perf_counter()
        s = work.sampling
        greedy = direct_sampling.Greedy.of(s, self._eog) if direct_sampling.applies(s) else None
        seq = _Sequence(job=job, sampler=None if greedy else self._make_sampler(s), pending=prompt[keep:],
                        started=now, text=TextStream(work.stop), n_past=keep, cached=keep, noted=now,
                        generated=work.resumed, events=work.first_index, ids=[] if work.token_ids else None,
                        greedy=greedy, exact=exact)
        if seq.sampler is not None:
            for token in prompt[len(prompt) - work.resumed:]:  # a resumption: the penalties see the answer so far
                lc.llama_sampler_accept(seq.sampler, token)
        self._active[job.slot] = seq

    def _swap_with_ram(self, slot: int, prompt: list[int], keep: int, use_cache: bool, exact: bool) -> int:
        """Save to host RAM what the slot is about to lose, and restore into it a saved state that
        gives more of ``prompt`` than the slot holds; returns how many of its tokens the slot has."""
        ram, cells = self._ram, self._cells[slot]
        assert ram is not None
        index, shared = ram.best(prompt, exact) if use_cache else (-1, 0)
        entry = ram.take(index) if index >= 0 and shared >= keep + RAM_MIN_GAIN else None
        if (len(cells) if entry else len(cells) - keep) >= RAM_MIN_SAVE:
            self._save_state(slot)
        if entry is None:
            return keep
        lc.llama_memory_seq_rm(self._mem, slot, -1, -1)
        cells.clear()
        if lc.llama_state_seq_set_data(self._ctx, entry.state, len(entry.state), slot) != len(entry.state):
            log.warning("could not restore a saved prompt state of %d tokens; decoding the prompt", len(entry.tokens))
            lc.llama_memory_seq_rm(self._mem, slot, -1, -1)
            return 0
        cells.extend(entry.tokens)
        self._exactness.restored(slot, entry.exact)
        return shared

    def _save_state(self, slot: int) -> None:
        ram = self._ram
        assert ram is not None
        size = lc.llama_state_seq_get_size(self._ctx, slot)
        if not ram.fits(size):
            return
        state = (ctypes.c_uint8 * size)()
        if lc.llama_state_seq_get_data(self._ctx, state, size, slot) == size:
            cells = self._cells[slot]
            ram.put(cells, state, self._holdings.of(slot), self._exactness.of(slot, len(cells)))

    def _keep_prefix(self, slot: int, keep: int) -> int:
        """Drop the slot's cells from position ``keep`` on; returns how many it kept (0 where llama.cpp
        cannot cut this memory part way, or no longer has the cells the prefix needs)."""
        cells, mem = self._cells[slot], self._mem
        if keep > 0:
            # A sliding-window model may have dropped early positions already; attention over the
            # suffix needs the last n_swa of the prefix (all of it without a window), as llama-server checks.
            floor = max(0, keep - self._n_swa) if self._n_swa else 0
            if lc.llama_memory_seq_pos_min(mem, slot) > floor:
                keep = 0
        if keep and keep == len(cells):
            return keep
        if keep == 0 or not lc.llama_memory_seq_rm(mem, slot, keep, -1):
            lc.llama_memory_seq_rm(mem, slot, -1, -1)
            keep = 0
        del cells[keep:]
        return keep

    def _forget(self, slot: int) -> None:
        """Drop all of a slot's cells (after a failed decode their content is unknown)."""
        lc.llama_memory_seq_rm(self._mem, slot, -1, -1)
        self._cells[slot].clear()

    def _step(self) -> None:
        batch = self._batch
        tokens, positions, seq_ids, logits = batch.token, batch.pos, batch.seq_id, batch.logits
        budget = self.config.batch_size
        takes: list[tuple[_Sequence, int]] = []
        # Generating sequences first (one token each) so running streams never wait on a long prompt.
        active = self._active.values()
        for seq in [s for s in active if len(s.pending) == 1] + [s for s in active if len(s.pending) > 1]:
            if budget <= 0:
                break
            take = min(len(seq.pending), budget)
            takes.append((seq, take))
            budget -= take
        # Rows in slot order: with a KV stream per slot llama.cpp puts only consecutive, increasing
        # sequence ids in one ubatch, so any other order splits the step into several ubatches, each
        # reading all the weights again, and a graph that changes every step is never reused.
        takes.sort(key=lambda st: st[0].job.slot)
        n = 0
        members: list[_Sequence] = []
        rows: list[tuple[_Sequence, int]] = []
        exact = any(seq.exact for seq, _ in takes)  # one reproducible sequence: the whole step on them
        wrote = self._exactness.wrote
        for seq, take in takes:
            pending = seq.pending
            slot, pos = seq.job.slot, seq.n_past
            wrote(slot, pos, take, exact)
            for i in range(take):
                tokens[n] = pending[i]
                positions[n] = pos + i
                seq_ids[n][0] = slot
                n += 1
            seq.n_past = pos + take
            members.append(seq)
            if take == len(pending):
                self._cells[slot].extend(pending)
                pending.clear()
                logits[n - 1] = 1
                rows.append((seq, n - 1))
            else:
                self._cells[slot].extend(pending[:take])
                del pending[:take]
        batch.n_tokens = n
        self._kernels.use(exact)
        self._flush()  # the last step's tokens go out while this one computes
        rc = lc.llama_decode(self._ctx, batch)
        for _, row in rows:
            logits[row] = 0
        if rc != 0:
            for seq in members:
                self._forget(seq.job.slot)
                self._fail(seq, f"llama_decode failed (code {rc}); the context may be full. Retry with less text.")
            return
        if len(rows) < len(active):
            self._tell_progress()
        ctx = self._ctx
        sample = self._sample
        outputs = self._outputs(len(rows)) if any(seq.greedy is not None for seq, _ in rows) else None
        for out, (seq, row) in enumerate(rows):
            if seq.greedy is not None:
                token = seq.greedy.sample(outputs[out])  # type: ignore[index]
            elif seq.job.work.sampling.guided:
                token = self._sample_guided(seq, row)
            else:
                token = sample(seq.sampler, ctx, row)
            self._on_token(seq, token)

    def _outputs(self, n: int) -> np.ndarray:
        """The last decode's ``n`` rows of logits, in batch order, as a view of llama.cpp's buffer."""
        rows_of = self._rows_of.get(n)
        if rows_of is None:
            rows_of = self._rows_of[n] = ctypes.c_float * (n * self._n_vocab)
        return np.frombuffer(rows_of.from_address(self._logits(self._ctx)), dtype=np.float32).reshape(n, self._n_vocab)

    def _tell_progress(self) -> None:
        """Each sequence still working through its prompt says how far it got, at most every
        PROGRESS_EVERY seconds: a prompt of thousands of tokens (or one queued behind others) keeps its stream alive."""
        now = time.perf_counter()
        for seq in self._active.values():
            if len(seq.pending) > 1 and now - seq.noted >= PROGRESS_EVERY:
                seq.noted = now
                seq.job.emit(Prefilling(seq.n_past, len(seq.job.work.prompt_tokens)))

    def _on_token(self, seq: _Sequence, token: int) -> None:
        job = seq.job
        if token in self._eog:
            self._finish(seq, "stop")
            return
        seq.generated += 1
        piece = self._pieces.get(token)
        text = seq.text.push(piece if piece is not None else self._piece(token))
        if seq.ids is not None:
            seq.ids.append(token)
        if text:
            job.emit(self._token(seq, text))
        if seq.text.stopped:
            self._finish(seq, "stop")
        elif seq.generated >= job.work.max_tokens or seq.n_past + 1 >= self.config.ctx_size:
            self._finish(seq, "length")
        else:
            seq.pending.append(token)

    @staticmethod
    def _token(seq: _Sequence, text: str) -> Token:
        """The next token event of ``seq``, with the logprobs and ids of the tokens its text completes."""
        ids = None
        if seq.ids is not None:
            ids, seq.ids = tuple(seq.ids), []
        event = Token(text, seq.events, None if seq.logprobs is None else _taken(seq), ids)
        seq.events += 1
        return event

    def _finish(self, seq: _Sequence, reason: str) -> None:
        job = seq.job
        if reason != "cancelled":
            tail = seq.text.flush()
            if tail:
                job.emit(self._token(seq, tail))
        done = Done(seq.generated, int((time.perf_counter() - seq.started) * 1000), reason,
                    prompt_tokens=len(job.work.prompt_tokens) - job.work.resumed, cached_tokens=seq.cached,
                    max_tokens_clipped=job.work.max_tokens_clipped)
        self._release(seq)
        if job.work.prefix is not None:
            done.cache_version, done.cache_held = self._holdings.report(self._ram.tags() if self._ram else ())
        job.emit(done)

    def _fail(self, seq: _Sequence, message: str) -> None:
        self._release(seq)
        seq.job.emit(Failed(ErrorCode.INTERNAL, message))

    def _release(self, seq: _Sequence) -> None:
        if self._active.get(seq.job.slot) is not seq:
            return
        slot = seq.job.slot
        del self._active[slot]
        if seq.n_past < len(seq.job.work.prompt_tokens):  # ended before its prompt was decoded whole
            self._holdings.tag(slot, ())
        # The cells stay for the prompt cache; published before on_finish, which frees the slot on the loop.
        self._releases += 1
        cells = self._cells[slot]
        self._held[slot] = prompt_cache.Held(tuple(cells), self._releases, self._exactness.of(slot, len(cells)))
        if seq.sampler is not None:
            lc.llama_sampler_free(seq.sampler)
        seq.job.on_finish()

    # ------------------------------------------------------------ helpers

    def _make_sampler(self, s: Sampling) -> Any:
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        add = lc.llama_sampler_chain_add
        n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        if s.grammar is not None:  # first in the chain, which owns it; _sample_guided applies it only when needed
            grammar = lc.llama_sampler_init_grammar(self._vocab, s.grammar.encode(), b"root")
            if grammar:  # checked when the request came (grammar_error): failing here would be a bug
                add(chain, grammar)
            else:
                log.error("a grammar that parsed before does not now; the answer is not constrained")
        if s.logit_bias:  # llama.cpp copies the biases
            biases = (lc.llama_logit_bias * len(s.logit_bias))(*[lc.llama_logit_bias(t, b) for t, b in s.logit_bias])
            add(chain, lc.llama_sampler_init_logit_bias(n_vocab, len(s.logit_bias), biases))
        if s.ignore_eos:  # as llama-server does: end-of-generation tokens can never be sampled
            if self._eog_bias is None:
                self._eog_bias = (lc.llama_logit_bias * len(self._eog))(
                    *[lc.llama_logit_bias(t, float("-inf")) for t in sorted(self._eog)])
            add(chain, lc.llama_sampler_init_logit_bias(n_vocab, len(self._eog), self._eog_bias))
        if s.repeat_penalty != 1.0 or s.presence_penalty or s.frequency_penalty:
            # OpenAI's penalties count every token of the answer so far; rbee's repeat_penalty the last 64.
            last_n = self.config.ctx_size if s.presence_penalty or s.frequency_penalty else 64
            add(chain, lc.llama_sampler_init_penalties(n_vocab, last_n, s.repeat_penalty, s.frequency_penalty,
                                                       s.presence_penalty))
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

    # ------------------------------------------------------------ guided sampling (grammar, logprobs)

    _candidates: Any = None  # one vocabulary-wide llama_token_data array, filled per guided sample

    def _sample_guided(self, seq: _Sequence, row: int) -> int:
        """Sample ``seq``'s next token from batch row ``row`` with its grammar and/or noting logprobs.

        The grammar as llama-server applies it: sample as if unconstrained, and only when the grammar
        refuses that token (checked alone, microseconds) run it over the whole vocabulary (milliseconds)
        and sample again. Nothing is ever accepted that the grammar refused: llama.cpp aborts on that.
        """
        guide = seq.guide
        if guide is None:
            guide = seq.guide = _Guide.of(seq.sampler, seq.job.work.sampling)
            if guide.top is not None:
                seq.logprobs = []
        apply, accept, logits_of = _guided_calls()
        logits = logits_of(self._ctx, row)
        if guide.grammar is None:
            token = self._sample(seq.sampler, self._ctx, row)
        else:
            cur, data = self._fill_candidates(logits)
            for sampler in guide.rest:
                apply(sampler, cur)
            token = data[cur.contents.selected].id
            if not self._allows(guide.grammar, token):
                cur, data = self._fill_candidates(logits)
                apply(guide.grammar, cur)
                for sampler in guide.rest:
                    apply(sampler, cur)
                chosen = data[cur.contents.selected]
                if chosen.logit == float("-inf"):  # nothing is allowed (the grammar is done, and EOG banned)
                    return next(iter(self._eog))
                token = chosen.id
            accept(seq.sampler, token)
        if guide.top is not None and token not in self._eog:
            seq.logprobs.append(self._logprob(logits, token, guide.top))  # type: ignore[union-attr]
        return token

    def _fill_candidates(self, logits: Any) -> tuple[Any, Any]:
        """The shared candidates array holding every token with its logit from ``logits``."""
        n_vocab = self._n_vocab
        if self._candidates is None:
            data = (lc.llama_token_data * n_vocab)()
            view = np.ctypeslib.as_array(data).view(np.dtype([("id", np.int32), ("logit", np.float32),
                                                              ("p", np.float32)]))
            array = lc.llama_token_data_array(data, n_vocab, -1, False)
            self._candidates = (data, view, np.arange(n_vocab, dtype=np.int32), array, ctypes.pointer(array))
        data, view, ids, array, pointer = self._candidates
        view["id"] = ids
        view["logit"] = np.ctypeslib.as_array(logits, shape=(n_vocab,))
        array.size, array.selected, array.sorted = n_vocab, -1, False
        return pointer, data

    def _allows(self, grammar: Any, token: int) -> bool:
        one = _one_candidate()
        data, array, pointer = one
        data[0].id, data[0].logit = token, 0.0
        array.size, array.selected, array.sorted = 1, -1, False
        _guided_calls()[0](grammar, pointer)
        return data[0].logit != float("-inf")

    def _logprob(self, logits: Any, token: int, top: int) -> TokenLogprob:
        row = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
        chosen, best = logprobs.rank(row, token, top)
        return TokenLogprob(self._alternative(token, chosen), tuple(self._alternative(t, lp) for t, lp in best))

    def _alternative(self, token: int, logprob: float) -> Alternative:
        piece = self._piece(token)
        return Alternative(piece.decode("utf-8", "replace"), logprob, tuple(piece))

    def grammar_error(self, grammar: str) -> str | None:
        """Why llama.cpp cannot use ``grammar`` (GBNF, start rule ``root``), or None when it can."""
        if self._vocab is None:
            raise EngineError("no model is loaded")
        sampler = lc.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not sampler:
            return ("llama.cpp cannot parse it as GBNF with a start rule 'root' (or a rule refers to itself "
                    "on its left)")
        lc.llama_sampler_free(sampler)
        return None

    def grammar_matches(self, grammar: str, text: str) -> bool:
        """Whether the grammar accepts exactly ``text``, token by token as the model would write it."""
        sampler = lc.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not sampler:
            raise EngineError("the grammar does not parse")
        try:
            for token in self.tokenize(text, add_special=False):
                if not self._allows(sampler, token):
                    return False
                lc.llama_sampler_accept(sampler, token)
            return self._allows(sampler, int(lc.llama_vocab_eos(self._vocab)))
        finally:
            lc.llama_sampler_free(sampler)

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
        description = desc.value.decode("utf-8", "replace")
        return {
            "name": self._meta("general.name"),
            "architecture": self._meta("general.architecture"),
            "description": description,
            "parameters": int(lc.llama_model_n_params(self._model)),
            "size_bytes": int(lc.llama_model_size(self._model)),
            "file_bytes": self.config.model_path.stat().st_size,
            "quantization": _quantization(description),
            "vocab_size": int(lc.llama_vocab_n_tokens(self._vocab)),
            "eos_token_id": int(lc.llama_vocab_eos(self._vocab)),
            "context_trained": int(lc.llama_model_n_ctx_train(self._model)),
            "embedding_length": int(lc.llama_model_n_embd(self._model)),
        }

    def chat_template(self) -> str | None:
        raw = lc.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8") if raw else None


@dataclass(slots=True)
class _Guide:
    """A guided sequence's view of its sampler chain: the grammar (the chain's first member, if any)
    apart from the rest, and how many alternatives its logprobs want (None: no logprobs)."""

    grammar: Any
    rest: list[Any]
    top: int | None

    @classmethod
    def of(cls, chain: Any, sampling: Sampling) -> _Guide:
        members = [lc.llama_sampler_chain_get(chain, i) for i in range(lc.llama_sampler_chain_n(chain))]
        grammar = None
        if sampling.grammar is not None and members and lc.llama_sampler_name(members[0]) == b"grammar":
            grammar = members.pop(0)
        return cls(grammar, members, sampling.logprobs)


def _taken(seq: _Sequence) -> tuple[TokenLogprob, ...]:
    """The logprobs of the tokens whose text goes out now."""
    taken = tuple(seq.logprobs or ())
    seq.logprobs = []
    return taken


@functools.cache
def _guided_calls() -> tuple[Any, Any, Any]:
    """llama_sampler_apply, llama_sampler_accept and llama_get_logits_ith, keeping the GIL (as sampling does)."""
    return (_keeping_gil(lc.llama_sampler_apply), _keeping_gil(lc.llama_sampler_accept),
            _keeping_gil(lc.llama_get_logits_ith))


_one = threading.local()


def _one_candidate() -> tuple[Any, Any, Any]:
    """A one-token candidates array (per thread: the decode thread, and tests asking grammar_matches)."""
    one = getattr(_one, "array", None)
    if one is None:
        data = (lc.llama_token_data * 1)()
        array = lc.llama_token_data_array(data, 1, -1, False)
        one = _one.array = (data, array, ctypes.pointer(array))
    return one


def _quantization(description: str) -> str | None:
    # llama_model_desc reads "<arch> <size> <file type>", e.g. "llama 135M Q4_1" or "llama 7B Q4_K - Medium".
    parts = description.split(" ", 2)
    return parts[2] if len(parts) == 3 else None

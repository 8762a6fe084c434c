"""ggml's reference CPU kernels for a llama.cpp context, switched on for the steps that need them, so
that a token's logits do not depend on what else is in its batch.

Why: the prompt cache promises that a cached answer equals the uncached one token for token. With
its fast paths ggml computes attention differently by shape: a tiled kernel for 64 or more query
rows of a sequence, a KV-split kernel for one query over 512 or more cells, the plain one otherwise.
So the same prompt decoded in one batch, in pieces (a cached prefix, then the suffix), or beside
other sequences gets slightly different KV and logits, and at temperature 0 a near tie can then
flip a token. (llama-server's documentation warns of exactly this for its ``cache_prompt``.) The
CPU backend's ``use_ref`` switch (``ggml_backend_cpu_set_use_ref``, made for test-backend-ops) keeps
every such op on the one kernel whose result for a row depends only on that row and its KV; the
weight matmuls already are.

The reference kernels are not free: they read the KV again for every query row, so a prompt
decoded against a long history runs at about half the speed (bench/prefill_kernels.py). The switch
is read on every graph the backend computes, so the engine throws it per step: on for the steps
that carry a request whose answer must be reproducible (temperature 0, or a seed), off otherwise,
and it remembers which cells were computed exactly (``prompt_cache.Exactness``).

llama.cpp creates its CPU backend inside ``llama_init_from_model`` and hands out no handle to it,
so the backend is caught as it is made: for the duration of :func:`reference_kernels`, the CPU
device's ``init_backend`` entry (``struct ggml_backend_device_i`` in ggml-backend-impl.h) points at
a wrapper that calls the original and keeps what it made for :meth:`Outcome.use`. The layout
is checked through the entries before it (the name and type this device reports) and the switch
is only reported as applied when the wrapper really ran; otherwise the context works as ever,
without the guarantee. This module imports no ``llama_cpp``; the engine hands over libggml.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rbee.worker.devices import bind_registry

log = logging.getLogger(__name__)

_DEVICE_CPU = 0  # enum ggml_backend_dev_type
# struct ggml_backend_device_i: get_name, get_description, get_memory, get_type, get_props, init_backend, ...
_GET_NAME, _GET_TYPE, _INIT_BACKEND = 0, 3, 5
_InitBackend = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)
_GetName = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)
_GetType = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_SetUseRef = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_bool)


@dataclass
class Outcome:
    reason: str = ""  # why the switch is not there, when it is not
    backends: list[int] = field(default_factory=list)  # the CPU backends caught as they were made
    setter: Callable[[int, bool], None] | None = None
    on: bool = False  # the reference kernels are in use

    @property
    def applied(self) -> int:
        """CPU backends whose kernels can be switched."""
        return len(self.backends)

    def use(self, on: bool) -> None:
        """Compute the next graphs with the reference kernels (``on``) or the fast ones."""
        if on != self.on and self.setter is not None:
            for backend in self.backends:
                self.setter(backend, on)
            self.on = on


@contextlib.contextmanager
def reference_kernels(ggml: ctypes.CDLL, enabled: bool = True) -> Iterator[Outcome]:
    """CPU backends created inside this block can be switched to ggml's reference kernels
    (:meth:`Outcome.use`); they start on the fast ones."""
    outcome = Outcome()
    if not enabled:
        outcome.reason = "switched off"
        yield outcome
        return
    entry, set_use_ref = _locate(ggml, outcome)
    if entry is None or set_use_ref is None:
        log.warning("batch-invariant kernels unavailable (%s): cached and uncached answers may differ "
                    "in rare near ties", outcome.reason)
        yield outcome
        return
    original = _InitBackend(entry.value)

    def init_backend(dev: int, params: bytes | None) -> int:
        backend = original(dev, params)
        if backend:
            outcome.backends.append(backend)
        return backend or 0

    outcome.setter = set_use_ref

    wrapper = _InitBackend(init_backend)
    saved = entry.value
    entry.value = ctypes.cast(wrapper, ctypes.c_void_p).value
    try:
        yield outcome
    finally:
        entry.value = saved  # the wrapper must not outlive this block: it is freed with it
    if not outcome.applied:
        outcome.reason = "no CPU backend was created"


def _locate(ggml: ctypes.CDLL, outcome: Outcome) -> tuple[ctypes.c_void_p | None, _SetUseRef | None]:
    """The CPU device's ``init_backend`` entry and the backend's ``set_use_ref``, or Nones."""
    try:
        bind_registry(ggml)
        ggml.ggml_backend_dev_name.argtypes, ggml.ggml_backend_dev_name.restype = [ctypes.c_void_p], ctypes.c_char_p
    except AttributeError as exc:
        outcome.reason = f"no ggml device API ({exc})"
        return None, None
    dev = ggml.ggml_backend_dev_by_type(_DEVICE_CPU)
    reg = ggml.ggml_backend_dev_backend_reg(dev) if dev else None
    addr = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_cpu_set_use_ref") if reg else None
    if not addr:
        outcome.reason = "this ggml has no ggml_backend_cpu_set_use_ref"
        return None, None
    word = ctypes.sizeof(ctypes.c_void_p)
    entries = [ctypes.c_void_p.from_address(dev + i * word) for i in range(_INIT_BACKEND + 1)]
    if not all(e.value for e in entries):
        outcome.reason = "unexpected CPU device layout"
        return None, None
    name = _GetName(entries[_GET_NAME].value)(dev)
    if name != ggml.ggml_backend_dev_name(dev) or _GetType(entries[_GET_TYPE].value)(dev) != _DEVICE_CPU:
        outcome.reason = "unexpected CPU device layout"
        return None, None
    return entries[_INIT_BACKEND], _SetUseRef(addr)

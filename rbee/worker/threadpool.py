"""A persistent ggml CPU threadpool attached to a llama.cpp context, as ``llama-server`` does it.

llama-cpp-python binds neither ``ggml_threadpool_*`` nor ``llama_attach_threadpool``, so they are
bound here with ctypes from the libraries the engine hands over (this module imports no
``llama_cpp`` itself). The CPU backend's functions are looked up through its backend registry,
exactly as llama.cpp's ``common_threadpools::init`` does, so this also works where the CPU backend
is a dynamically loaded module.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

from rbee.worker.devices import bind_registry

log = logging.getLogger(__name__)

GGML_MAX_N_THREADS = 512
GGML_BACKEND_DEVICE_TYPE_CPU = 0


class ThreadpoolParams(ctypes.Structure):
    """``struct ggml_threadpool_params`` (ggml.h)."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


class Threadpool:
    def __init__(self, handle: int, free: Any) -> None:
        self.handle = handle
        self._free = free

    def free(self) -> None:
        """Call after the context using it is freed."""
        if self.handle:
            self._free(ctypes.c_void_p(self.handle))
            self.handle = 0


def attach(ggml: ctypes.CDLL, llama: ctypes.CDLL, ctx: Any, n_threads: int, poll: int) -> Threadpool | None:
    """Create a threadpool of ``n_threads`` polling at ``poll`` (0-100) and attach it to ``ctx``.

    Returns None (and ggml keeps making its own per graph) when the libraries lack any piece.
    """
    try:
        bind_registry(ggml)
        ggml.ggml_threadpool_params_init.argtypes = [ctypes.POINTER(ThreadpoolParams), ctypes.c_int]
        ggml.ggml_threadpool_params_init.restype = None
        attach_fn = llama.llama_attach_threadpool
        attach_fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        attach_fn.restype = None
    except AttributeError as exc:
        log.warning("no ggml threadpool API in this llama.cpp build (%s); using ggml's per-graph pools", exc)
        return None
    dev = ggml.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    reg = ggml.ggml_backend_dev_backend_reg(dev) if dev else None
    new_addr = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_threadpool_new") if reg else None
    free_addr = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_threadpool_free") if reg else None
    if not new_addr or not free_addr:
        log.warning("the CPU backend exports no threadpool functions; using ggml's per-graph pools")
        return None
    new = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(ThreadpoolParams))(new_addr)
    free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(free_addr)
    params = ThreadpoolParams()
    ggml.ggml_threadpool_params_init(ctypes.byref(params), n_threads)
    params.poll = max(0, min(100, poll))
    handle = new(ctypes.byref(params))
    if not handle:
        log.warning("ggml_threadpool_new failed for %d threads; using ggml's per-graph pools", n_threads)
        return None
    # One pool serves both single-token and batch decoding: they use the same thread count.
    attach_fn(ctx, handle, None)
    return Threadpool(handle, free)

"""The compute devices a llama.cpp build offers, read from ggml's device registry with ctypes.

llama-cpp-python binds none of ``ggml_backend_dev_*``; the engine hands over the loaded libggml (this
module imports no ``llama_cpp``, as threadpool.py).
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """A compute device llama.cpp can use: ``backend`` and ``index`` as a hive and a worker name it
    (``cuda``/0 for llama.cpp's ``CUDA0``), with what llama.cpp says of it."""

    backend: str
    index: int
    name: str
    description: str
    memory_total: int
    memory_free: int


_DEVICE_CPU, _DEVICE_GPU, _DEVICE_IGPU = 0, 1, 2  # enum ggml_backend_dev_type


def bind_registry(ggml: ctypes.CDLL) -> None:
    """Declare ggml's device-registry calls that find a backend's own entry points (the threadpool,
    the CPU backend's reference kernels). Raises AttributeError when this libggml lacks them."""
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p


def enumerate_devices(ggml: ctypes.CDLL) -> list[Device]:
    """The CPU and every GPU in ggml's device registry (``ggml``: the loaded libggml, backends initialised)."""
    ggml.ggml_backend_dev_count.argtypes, ggml.ggml_backend_dev_count.restype = [], ctypes.c_size_t
    ggml.ggml_backend_dev_get.argtypes, ggml.ggml_backend_dev_get.restype = [ctypes.c_size_t], ctypes.c_void_p
    for fn in (ggml.ggml_backend_dev_name, ggml.ggml_backend_dev_description):
        fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_char_p
    ggml.ggml_backend_dev_type.argtypes, ggml.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
    ggml.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                             ctypes.POINTER(ctypes.c_size_t)]
    ggml.ggml_backend_dev_memory.restype = None
    found = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        kind = ggml.ggml_backend_dev_type(dev)
        if kind not in (_DEVICE_CPU, _DEVICE_GPU, _DEVICE_IGPU):
            continue  # accelerators that only help the CPU (BLAS), remote devices
        name = (ggml.ggml_backend_dev_name(dev) or b"?").decode()
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        match = re.fullmatch(r"(.*?)(\d*)", name)
        backend = "cpu" if kind == _DEVICE_CPU else (match.group(1) if match else name).lower()
        index = 0 if kind == _DEVICE_CPU or not match or not match.group(2) else int(match.group(2))
        found.append(Device(backend, index, name, (ggml.ggml_backend_dev_description(dev) or b"").decode(),
                            total.value, free.value))
    return found

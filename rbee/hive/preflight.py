"""Checks before a worker is spawned: a backend and device this hive has, and RAM for the model.

A spawn that would fail anyway fails here, at once, with an answer that says what *is* available,
instead of a worker that dies half way through loading. The devices are what the worker program
itself reports (``llm-worker-rbee --list-devices``: the llama.cpp build it runs on), asked once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rbee.errors import ErrorCode, RbeeError
from rbee.procfs import PROC, meminfo_bytes

MEMINFO = PROC / "meminfo"
# llama.cpp needs the weights plus the KV cache, scratch buffers and the worker's own Python:
# a fixed allowance on top of a share of the file size.
OVERHEAD_BYTES = 256 * 1024 * 1024
OVERHEAD_FRACTION = 0.2
BACKENDS: dict[str, tuple[int, ...]] = {"cpu": (0,)}  # backend -> device indexes: what any hive has
CPU_ONLY = [{"backend": "cpu", "index": 0, "name": "CPU", "description": "", "memory_total": 0, "memory_free": 0}]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Need:
    model_ref: str
    size_bytes: int
    backend: str
    device: int


def ram_needed(size_bytes: int) -> int:
    """What a worker on a GGUF of ``size_bytes`` needs, by rule of thumb."""
    return int(size_bytes * (1 + OVERHEAD_FRACTION)) + OVERHEAD_BYTES


def available_ram(meminfo: Path = MEMINFO) -> int | None:
    """``MemAvailable`` in bytes, or None where the kernel does not say (then the check is skipped)."""
    return meminfo_bytes("MemAvailable", meminfo)


def check_backend(backend: str, device: int, backends: dict[str, tuple[int, ...]] = BACKENDS) -> None:
    devices = backends.get(backend)
    if devices is None:
        names = ", ".join(sorted(backends))
        raise RbeeError(ErrorCode.INVALID_BACKEND,
                        f"Backend '{backend}' is not available on this hive. Available: {names}.",
                        {"field": "backend", "backend": backend, "available": sorted(backends)})
    if device not in devices:
        listed = ", ".join(str(d) for d in devices)
        raise RbeeError(ErrorCode.DEVICE_NOT_FOUND,
                        f"Device {device} does not exist for backend '{backend}'. Available devices: {listed}.",
                        {"field": "device", "backend": backend, "device": device, "available": list(devices)})


def check_ram(need: Need, available: int | None) -> None:
    if available is None:
        return
    wanted = ram_needed(need.size_bytes)
    if wanted > available:
        raise RbeeError(
            ErrorCode.INSUFFICIENT_RAM,
            f"Not enough memory for '{need.model_ref}': it needs about {_mib(wanted)} MiB and this machine has "
            f"{_mib(available)} MiB available. Stop other workers or pick a smaller quantization.",
            {"model_ref": need.model_ref, "needed_bytes": wanted, "available_bytes": available},
        )


def check(need: Need, *, meminfo: Path = MEMINFO, backends: dict[str, tuple[int, ...]] = BACKENDS) -> None:
    """Raise the first problem that would keep a worker for ``need`` from starting."""
    check_backend(need.backend, need.device, backends)
    check_ram(need, available_ram(meminfo))


def _mib(n: int) -> int:
    return n // (1024 * 1024)


async def detect_devices(worker_command: list[str], timeout: float = 60.0) -> list[dict[str, Any]]:
    """The devices the worker program can use (its ``--list-devices``); the CPU alone when it can't say."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *worker_command, "--list-devices", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    except OSError as exc:
        log.warning("could not ask the worker program for its devices (%s); offering the CPU only", exc)
        return CPU_ONLY
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        devices = json.loads(out)["devices"]
        if not isinstance(devices, list) or not all("backend" in d and "index" in d for d in devices):
            raise ValueError("not a device list")
    except (TimeoutError, ValueError, KeyError, TypeError) as exc:
        log.warning("the worker program did not list its devices (%s); offering the CPU only",
                    exc.__class__.__name__)
        return CPU_ONLY
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log.info("devices", extra={"fields": {"devices": [f"{d['backend']}:{d['index']}" for d in devices]}})
    return devices


def backends_of(devices: list[dict[str, Any]]) -> dict[str, tuple[int, ...]]:
    """backend -> its device indexes; the CPU is always there."""
    found: dict[str, set[int]] = {"cpu": {0}}
    for d in devices:
        found.setdefault(str(d["backend"]), set()).add(int(d["index"]))
    return {backend: tuple(sorted(indexes)) for backend, indexes in found.items()}

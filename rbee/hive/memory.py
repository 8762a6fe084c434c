"""The hive's memory ledger: per device, what there is, what is free, what its workers hold, what a new
worker may take, and the refusal, with the numbers, of a spawn that would not fit.

Pure: the figures come in (``/proc/meminfo``, the devices llama.cpp listed at start, the workers'
footprint estimates) and :class:`DeviceMemory` rows go out, for the heartbeat and for spawn plans.
A GPU's free memory is the figure llama.cpp gave when the hive started, less what this hive's workers
have reserved on it since.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import DeviceMemory

MIB = 1024 * 1024
HOST = ("cpu", 0)


@dataclass(frozen=True)
class Held:
    """One worker's reservation: host bytes, and device bytes on ``(backend, device)``."""

    backend: str
    device: int
    host_bytes: int
    device_bytes: int


@dataclass(frozen=True)
class Budgets:
    ram_bytes: int | None = None  # --ram-budget-mb (None: what is free)
    vram_bytes: int | None = None  # --vram-budget-mb, per device


def ledger(devices: list[dict[str, Any]], held: Iterable[Held], *, ram_total: int | None,
           ram_available: int | None, budgets: Budgets,
           reclaimable: dict[tuple[str, int], int] | None = None) -> list[DeviceMemory]:
    """One row per device: the host first (``cpu:0``), then each GPU llama.cpp listed."""
    held = list(held)
    reclaimable = reclaimable or {}
    host_reserved = sum(h.host_bytes for h in held)
    rows = [DeviceMemory(backend="cpu", index=0, name="host RAM", total_bytes=ram_total, free_bytes=ram_available,
                         reserved_bytes=host_reserved, budget_bytes=budgets.ram_bytes,
                         headroom_bytes=_headroom(ram_available, budgets.ram_bytes, host_reserved),
                         reclaimable_bytes=reclaimable.get(HOST, 0))]
    for d in devices:
        key = (str(d["backend"]), int(d["index"]))
        if key[0] == "cpu":
            continue
        reserved = sum(h.device_bytes for h in held if (h.backend, h.device) == key)
        free = max(0, int(d.get("memory_free") or 0) - reserved)
        rows.append(DeviceMemory(backend=key[0], index=key[1], name=str(d.get("name", "")),
                                 total_bytes=int(d.get("memory_total") or 0), free_bytes=free,
                                 reserved_bytes=reserved, budget_bytes=budgets.vram_bytes,
                                 headroom_bytes=_headroom(free, budgets.vram_bytes, reserved),
                                 reclaimable_bytes=reclaimable.get(key, 0)))
    return rows


def _headroom(free: int | None, budget: int | None, reserved: int) -> int | None:
    if budget is None:
        return free
    room = max(0, budget - reserved)
    return room if free is None else min(free, room)


def row(rows: list[DeviceMemory], backend: str, index: int) -> DeviceMemory | None:
    return next((r for r in rows if (r.backend, r.index) == (backend, index)), None)


def shortfall(rows: list[DeviceMemory], backend: str, device: int, host_bytes: int,
              device_bytes: int) -> dict[str, int]:
    """Bytes missing per place (``"host"``, ``"device"``) for a worker of that size; empty when it fits.
    Unknown headroom (the kernel does not say) never refuses."""
    missing: dict[str, int] = {}
    host = row(rows, *HOST)
    if host is not None and host.headroom_bytes is not None and host_bytes > host.headroom_bytes:
        missing["host"] = host_bytes - host.headroom_bytes
    if backend != "cpu" and device_bytes:
        gpu = row(rows, backend, device)
        room = gpu.headroom_bytes if gpu is not None else 0
        if room is not None and device_bytes > room:
            missing["device"] = device_bytes - room
    return missing


def pick_device(rows: list[DeviceMemory], backend: str, device_bytes: int) -> int | None:
    """With no device asked for: the device of ``backend`` with the most headroom that fits the worker's
    device part; else the one with the most headroom (the spawn is then refused with its numbers).
    None when the backend has no device in the ledger (the CPU: device 0)."""
    if backend == "cpu":
        return 0
    mine = [r for r in rows if r.backend == backend]
    if not mine:
        return None
    best = max(mine, key=lambda r: (r.headroom_bytes or 0, -r.index))
    return best.index


def refusal(model_ref: str, rows: list[DeviceMemory], backend: str, device: int, host_bytes: int,
            device_bytes: int, missing: dict[str, int], *, later: bool = False,
            blocking: list[str] | None = None) -> RbeeError:
    """INSUFFICIENT_RAM (or _VRAM when only the GPU lacks room), with what is needed and what is free."""
    host, gpu = row(rows, *HOST), row(rows, backend, device)
    on_gpu = "device" in missing and "host" not in missing
    place = f"{backend}:{device}" if on_gpu else "host RAM"
    need = device_bytes if on_gpu else host_bytes
    room = (gpu if on_gpu else host)
    free = room.headroom_bytes if room is not None and room.headroom_bytes is not None else 0
    budget = room.budget_bytes if room is not None else None
    limit = f" (budget {_mib(budget)} MiB, {_mib(room.reserved_bytes)} MiB reserved by workers here)" \
        if budget is not None and room is not None else ""
    nxt = ("It fits once busy or recently started workers of other models may be evicted; retry shortly."
           if later else "Stop other workers, raise the budget, lower --ctx-size or --slots, or pick a smaller "
           "quantization.")
    return RbeeError(
        ErrorCode.INSUFFICIENT_VRAM if on_gpu else ErrorCode.INSUFFICIENT_RAM,
        f"Not enough memory for '{model_ref}': it needs about {_mib(need)} MiB of {place}; {_mib(free)} MiB "
        f"available{limit}. {nxt}",
        {"model_ref": model_ref, "needed_bytes": need, "available_bytes": free, "device": place,
         "needed_host_bytes": host_bytes, "needed_device_bytes": device_bytes,
         "free_host_bytes": host.headroom_bytes if host is not None else None,
         "free_device_bytes": gpu.headroom_bytes if gpu is not None and backend != "cpu" else None,
         "later": later, "blocking": blocking or []},
    )


def _mib(n: int | None) -> int:
    return (n or 0) // MIB

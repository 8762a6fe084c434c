"""The queen's hive registry: which machines can provide which models, and which are alive.

Hives register (``POST /v2/hives/register``) and heartbeat with the models they hold. Pure
bookkeeping with an injected clock: no I/O, no aiohttp.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rbee.errors import ErrorCode, RbeeError
from rbee.models import aliases
from rbee.protocol import DeviceMemory, HiveHeartbeat, HiveInfo, HiveRegistration
from rbee.versions import check_peer

DOWNLOADABLE = ("hf:", "https://", "http://")


@dataclass
class HiveRecord:
    reg: HiveRegistration
    registered_at: float
    last_seen: float
    models: list[str] = field(default_factory=list)
    workers: int = 0
    ram_free_bytes: int | None = None
    memory: list[DeviceMemory] = field(default_factory=list)  # per device, from the last heartbeat

    @property
    def hive_id(self) -> str:
        return self.reg.hive_id

    def holds(self, model: str) -> bool:
        return any(model in aliases(m) for m in self.models)

    def info(self, live: bool) -> HiveInfo:
        return HiveInfo(hive_id=self.hive_id, url=self.reg.url, node_name=self.reg.node_name or self.hive_id,
                        models=self.models, workers=self.workers, registered_at=self.registered_at,
                        last_seen=self.last_seen, live=live, version=self.reg.version,
                        ram_free_bytes=self.ram_free_bytes, memory=self.memory)


class HiveRegistry:
    """Pure bookkeeping: no I/O. A hive is live while its heartbeats keep coming within ``timeout``."""

    def __init__(self, timeout: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.timeout = timeout
        self._clock = clock
        self._hives: dict[str, HiveRecord] = {}

    def register(self, reg: HiveRegistration) -> HiveRecord:
        """Add or refresh a hive; one of another rbee line (major.minor) is refused: 409 VERSION_MISMATCH."""
        check_peer("hive", {"hive_id": reg.hive_id}, reg.version, reg.node_name or reg.hive_id)
        now = self._clock()
        old = self._hives.get(reg.hive_id)
        record = HiveRecord(reg, old.registered_at if old else now, now, list(reg.models), old.workers if old else 0)
        self._hives[reg.hive_id] = record
        return record

    def heartbeat(self, hive_id: str, beat: HiveHeartbeat) -> HiveRecord:
        record = self._hives.get(hive_id)
        if record is None:
            raise RbeeError(ErrorCode.HIVE_NOT_FOUND, f"No hive '{hive_id}' is registered. Register it first "
                            "(POST /v2/hives/register).", {"hive_id": hive_id})
        record.last_seen = self._clock()
        if beat.models is not None:
            record.models = list(beat.models)
        if beat.workers is not None:
            record.workers = beat.workers
        if beat.ram_free_bytes is not None:
            record.ram_free_bytes = beat.ram_free_bytes
        if beat.memory is not None:
            record.memory = list(beat.memory)
        return record

    def is_live(self, record: HiveRecord) -> bool:
        return self.silence(record) <= self.timeout

    def silence(self, record: HiveRecord) -> float:
        """Seconds since the hive's last registration or heartbeat."""
        return self._clock() - record.last_seen

    def require_live(self, name: str, model: str | None = None) -> None:
        """For a request pinned to hive ``name`` that has no live worker for it: 503 ``HIVE_OFFLINE`` at once
        when the hive itself is silent too (no one there can start a worker), rather than a wait for nothing."""
        hive = self._hives.get(name)
        if hive is not None and self.is_live(hive):
            return
        silent = f"no heartbeat for {self.silence(hive):.0f} s" if hive else "it never registered here"
        what = f" for '{model}'" if model else ""
        raise RbeeError(ErrorCode.HIVE_OFFLINE,
                        f"Hive '{name}' is offline ({silent}) and has no live worker{what}. Start it "
                        f"(`rbee-keeper hives start {name}`) or check its machine, then retry; or send the "
                        "request without --hive so any hive may serve it.", {"hive": name, "model": model})

    def list(self) -> list[HiveRecord]:
        return list(self._hives.values())

    def find(self, hive_id: str) -> HiveRecord | None:
        return self._hives.get(hive_id)

    def candidates(self, model: str) -> list[HiveRecord]:
        """Live hives that can provide ``model``: those holding it first (fewest workers first), then,
        for a ref a hive can download, every other live hive."""
        live = [h for h in self._hives.values() if self.is_live(h)]
        holding = sorted((h for h in live if h.holds(model)), key=lambda h: h.workers)
        if not model.startswith(DOWNLOADABLE):
            return holding
        others = sorted((h for h in live if not h.holds(model)), key=lambda h: h.workers)
        return holding + others

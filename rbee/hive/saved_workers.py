"""What the hive remembers about its workers across its own restarts: a small JSON file, and the
handle for a worker process it did not start itself in this run (adopted after a restart).

Plain files and /proc only: no aiohttp, no HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from rbee.procfs import cmdline, pid_alive

log = logging.getLogger(__name__)
_POLL_S = 0.2  # how often an adopted process is checked for exit (it is not our child: no waitpid)


class ProcessHandle(Protocol):
    """What the supervisor needs of a worker process: ``asyncio.subprocess.Process`` has it."""

    pid: int

    @property
    def returncode(self) -> int | None: ...
    async def wait(self) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


@dataclass(frozen=True)
class SavedWorker:
    worker_id: str
    pid: int
    port: int
    host: str
    model_ref: str
    model_arg: str | None
    backend: str
    device: int
    slots: int
    ctx_size: int | None
    ram_bytes: int
    log_path: str
    vram_bytes: int = 0  # absent from files an older hive wrote
    embeddings: bool = False  # started with --embeddings (absent from files of older hives)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class SavedWorkers:
    """``workers.json``: written whole (to a temporary file, then renamed) on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, records: list[SavedWorker]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"version": 1, "workers": [asdict(r) for r in records]}, indent=1))
        os.replace(tmp, self.path)

    def load(self) -> list[SavedWorker]:
        try:
            data = json.loads(self.path.read_text())
            return [SavedWorker(**w) for w in data.get("workers", [])]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable worker state file %s: %s", self.path, exc)
            return []


def runs_worker(pid: int, worker_id: str) -> bool:
    """True if ``pid`` is alive and is the worker ``worker_id`` (its command line says so): a reused pid is not."""
    argv = cmdline(pid)
    if argv is None:
        return False
    wanted = worker_id.encode()
    return pid_alive(pid) and any(a == b"--worker-id" and b == wanted for a, b in itertools.pairwise(argv))


class AdoptedProcess:
    """A worker started by an earlier run of the hive: signalled by pid, its exit noticed by polling."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._returncode: int | None = None

    @property
    def returncode(self) -> int | None:
        if self._returncode is None and not pid_alive(self.pid):
            self._returncode = -1  # not our child: the real exit status went to its new parent
        return self._returncode

    async def wait(self) -> int:
        while self.returncode is None:
            await asyncio.sleep(_POLL_S)  # polling interval: there is no exit event for a non-child
        return self._returncode if self._returncode is not None else -1

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def adopt_process(pid: int, worker_id: str) -> AdoptedProcess | None:
    return AdoptedProcess(pid) if runs_worker(pid, worker_id) else None

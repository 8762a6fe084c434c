"""Where rbee-keeper keeps its records: program logs, the record of a running local cluster, partial answers.

The folder is ``$RBEE_STATE_DIR``, else ``$XDG_STATE_HOME/rbee``, else ``~/.local/state/rbee``.
The cluster record (``run/cluster.json``) is what lets ``down`` and ``status`` find, from another
shell, what ``up`` (or ``infer --keep``) started.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rbee.procfs import cmdline, pid_alive

QUEEN_LOG = "queen-rbee"
HIVE_LOG = "rbee-hive"


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("RBEE_STATE_DIR"):
        return Path(env["RBEE_STATE_DIR"]).expanduser()
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "rbee"


def log_dir() -> Path:
    return state_dir() / "logs"


def cluster_file() -> Path:
    return state_dir() / "run" / "cluster.json"


def partial_dir() -> Path:
    return state_dir() / "partial"


@dataclass
class ProcessRecord:
    name: str  # program name, e.g. "queen-rbee"
    pid: int
    url: str

    def running(self) -> bool:
        return pid_runs(self.pid, "rbee")


@dataclass
class ClusterRecord:
    queen: ProcessRecord
    hive: ProcessRecord
    log_dir: str
    keeper_pid: int | None = None  # the `rbee-keeper up` in the foreground; None after `infer --keep`
    started_at: float = field(default_factory=time.time)

    def processes(self) -> list[ProcessRecord]:
        """Stop order: the hive first (it stops its workers), then the queen."""
        return [self.hive, self.queen]

    def keeper_running(self) -> bool:
        return self.keeper_pid is not None and pid_runs(self.keeper_pid, "rbee")

    def anything_running(self) -> bool:
        return self.keeper_running() or any(p.running() for p in self.processes())


def pid_runs(pid: int, needle: str) -> bool:
    """``pid`` is alive and its command line mentions ``needle`` (guards against a reused pid)."""
    argv = cmdline(pid) if pid_alive(pid) else None
    return argv is not None and needle in b" ".join(argv).decode(errors="replace")


def write_record(record: ClusterRecord, path: Path | None = None) -> Path:
    path = path or cluster_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2))
    tmp.replace(path)  # atomic: another shell never reads half a file
    return path


def read_record(path: Path | None = None) -> ClusterRecord | None:
    path = path or cluster_file()
    try:
        raw = json.loads(path.read_text())
        return ClusterRecord(
            queen=ProcessRecord(**raw["queen"]), hive=ProcessRecord(**raw["hive"]), log_dir=raw["log_dir"],
            keeper_pid=raw.get("keeper_pid"), started_at=raw.get("started_at", 0.0),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_record(path: Path | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        (path or cluster_file()).unlink()

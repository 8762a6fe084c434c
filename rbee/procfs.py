"""Facts about processes read from Linux /proc: the one place that reads it (hive, keeper, harness)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

PROC = Path("/proc")


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        with open(PROC / str(pid) / "stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline(pid: int) -> list[bytes] | None:
    """The command line of ``pid``, or None when it is gone (or not ours to read)."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def other_pids() -> Iterator[int]:
    """Every process id but our own."""
    me = os.getpid()
    for entry in PROC.iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            yield int(entry.name)


def pids_with_env(assignment: str) -> list[int]:
    """Live processes (not us) whose environment holds ``NAME=value`` exactly: what a run started."""
    marker = assignment.encode()
    found = []
    for pid in other_pids():
        try:
            env = (PROC / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in env and pid_alive(pid):
            found.append(pid)
    return found


def meminfo_bytes(field: str, path: Path = PROC / "meminfo") -> int | None:
    """One ``/proc/meminfo`` figure (``MemAvailable``, ``MemTotal``) in bytes, or None where absent."""
    try:
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == field:
                return int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def status_bytes(pid: int, field: str) -> int | None:
    """One ``/proc/PID/status`` memory figure (``VmRSS``: resident now, ``VmHWM``: its peak) in bytes,
    or None when the process is gone."""
    return meminfo_bytes(field, PROC / str(pid) / "status")

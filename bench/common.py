"""Shared bench helpers: child processes with deadlines, free ports, percentiles, the environment.

The bench scripts import this as a sibling module (``python bench/worker.py`` puts ``bench/`` on
``sys.path``). Nothing here is part of rbee or of its tests.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import requests

CACHE_DIR = Path(os.environ.get("RBEE_BENCH_CACHE", Path.home() / ".cache" / "rbee-bench"))


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """One server under test: start, poll readiness against a deadline while alive, stop (TERM, then KILL)."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        with open(self.log_path, "ab") as log:
            # A session of its own, so the stop below can take the whole process group down.
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.name} was not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, url: str, check: Callable[[requests.Response], bool] | None = None,
                   timeout: float = 120.0) -> None:
        check = check or (lambda r: r.status_code == 200)
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(f"{self.name} exited (code {self.proc.returncode if self.proc else '?'}) "
                                 f"before it was ready. Log tail:\n{self.log_tail()}")
            try:
                r = requests.get(url, timeout=1)
                if check(r):
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as exc:
                last = exc.__class__.__name__
            time.sleep(0.05)  # poll interval
        raise BenchError(f"{self.name} not ready within {timeout:.0f}s ({last}). Log tail:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (the process itself or children it forked) gets SIGKILL.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(ours: float, peer: float) -> str:
    if not peer or math.isnan(peer) or math.isnan(ours):
        return "—"
    return f"{ours / peer:.2f}×"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment(extra: dict[str, str] | None = None, dists: Sequence[str] = ()) -> list[tuple[str, str]]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    rows = [
        ("cores", f"{os.cpu_count()} ({cpu})"),
        ("memory", mem),
        ("load average", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("os", platform.platform()),
        ("python", sys.version.split()[0]),
    ]
    rows += [(d, _version(d)) for d in dists]
    rows += list((extra or {}).items())
    return rows


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Markdown table, columns padded so it also reads well in a terminal."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so every ``finally`` that stops a child still runs."""
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))


def warn_if_busy() -> None:
    """Say so when something else is using the CPUs: on 2 cores it swamps what is being measured."""
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        print(f"warning: 1-minute load average is {load1:.2f} before starting: something else is running "
              "and the numbers below will be noisy; rerun on a quiet machine.", flush=True)


_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group ``pgid`` (Linux /proc)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            # After the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
            if int(fields[2]) == pgid:
                total += int(fields[11]) + int(fields[12])
    return total / _TICKS

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
import random
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


def _cpu_busy_seconds() -> float:
    """Busy (non-idle, non-iowait) CPU seconds of the whole machine since boot, all cores together."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICKS


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class QuietGate:
    """Keeps other people's work out of the numbers on a shared machine.

    ``wait`` blocks until the machine has been (nearly) idle for about a second, against a deadline.
    ``disturbed`` says whether others used more than ``max_foreign`` cores' worth of CPU during a
    measurement (everything busy minus this process and the process groups under test), so the
    caller can repeat it instead of averaging it in. ``budget`` caps the total time spent waiting:
    past it, measurements go ahead and are only reported as disturbed.
    """

    def __init__(self, enabled: bool, max_wait: float = 60.0, idle_below: float = 0.1,
                 max_foreign: float = 0.15, budget: float = 1200.0) -> None:
        self.enabled = enabled
        self.max_wait = max_wait
        self.idle_below = idle_below  # cores busy while we wait that still count as idle
        self.max_foreign = max_foreign  # cores used by others during a measurement that we accept
        self.budget = budget
        self.waited = 0.0
        self.gave_up = 0
        self.discarded = 0  # measurements repeated because others disturbed them
        self.foreign_seen: list[float] = []  # others' CPU (cores) during kept measurements
        self._mark: tuple[float, float, float, float] | None = None
        self._pgids: list[int] = []

    @property
    def active(self) -> bool:
        return self.enabled and self.waited < self.budget

    def wait(self) -> None:
        if not self.active:
            return
        start = time.monotonic()
        quiet_windows = 0
        while quiet_windows < 2:
            if time.monotonic() - start > self.max_wait:
                self.gave_up += 1
                break
            busy0, own0, t0 = _cpu_busy_seconds(), _own_cpu_seconds(), time.monotonic()
            # One sampling window of the machine's load; its length varies so that two gated
            # benches on one machine do not both see the same quiet moment and start together.
            time.sleep(random.uniform(0.3, 0.7))
            busy = (_cpu_busy_seconds() - busy0 - (_own_cpu_seconds() - own0)) / (time.monotonic() - t0)
            quiet_windows = quiet_windows + 1 if busy < self.idle_below else 0
        self.waited += time.monotonic() - start

    def begin(self, *pgids: int) -> None:
        self._pgids = list(dict.fromkeys(pgids))
        self._mark = (_cpu_busy_seconds(), _own_cpu_seconds(), sum(map(group_cpu_seconds, self._pgids)),
                      time.monotonic())

    def _foreign_seconds(self) -> tuple[float, float]:
        if self._mark is None:
            return 0.0, 1.0
        busy0, own0, groups0, t0 = self._mark
        busy = _cpu_busy_seconds() - busy0
        ours = _own_cpu_seconds() - own0 + sum(map(group_cpu_seconds, self._pgids)) - groups0
        return max(0.0, busy - ours), max(1e-6, time.monotonic() - t0)

    def foreign(self) -> float:
        """Cores' worth of CPU that others used since ``begin``."""
        cpu, wall = self._foreign_seconds()
        return cpu / wall

    def disturbed(self) -> bool:
        if not self.active:
            return False
        cpu, wall = self._foreign_seconds()
        # The kernel counts CPU in 10 ms ticks: allow a few of them on short measurements.
        return cpu > self.max_foreign * wall + 0.03


def rbee_revision() -> str:
    """The commit the rbee under test is at, and whether rbee/ has uncommitted changes (read-only git)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "rbee"], check=True,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} + uncommitted changes in rbee/" if dirty else head

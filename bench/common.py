"""Shared bench helpers: child processes with deadlines, free ports, percentiles, the environment.

The bench scripts import this as a sibling module (``python bench/worker.py`` puts ``bench/`` on
``sys.path``). Nothing here is part of rbee or of its tests.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rbee.ports import free_port  # noqa: F401  (the benchmarks take it from here)

CACHE_DIR = Path(os.environ.get("RBEE_BENCH_CACHE", Path.home() / ".cache" / "rbee-bench"))


class BenchError(RuntimeError):
    pass


def run_script(main: Callable[[], None]) -> None:
    """A benchmark's entry point: its own failures (and a server that would not start) end it with one
    line, Ctrl+C with status 130, never a traceback."""
    from rbee.process import ServiceError

    try:
        main()
    except (BenchError, ServiceError) as err:
        raise SystemExit(f"bench failed: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def add_gate_args(p: argparse.ArgumentParser, unit: str) -> None:
    """The quiet-gate flags both benchmarks share (``unit``: what one measurement is called)."""
    p.add_argument("--gate-budget", type=float, default=1200.0,
                   help="total seconds to spend waiting for an idle machine; past it, measure regardless")
    p.add_argument("--no-quiet-gate", action="store_true",
                   help="measure at once, even while other processes use the CPUs")
    p.add_argument("--max-foreign", type=float, default=0.15,
                   help=f"cores' worth of other processes' CPU a {unit} may see before it is repeated")
    p.add_argument("--retries", type=int, default=3, help=f"times a disturbed {unit} is repeated")
    p.add_argument("--quiet-wait", type=float, default=60.0, help=f"seconds to wait for an idle machine per {unit}")


def gate_from_args(args: argparse.Namespace) -> QuietGate:
    return QuietGate(not args.no_quiet_gate, max_wait=args.quiet_wait, max_foreign=args.max_foreign,
                     budget=args.gate_budget)


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


def median_ci(values: Sequence[float], level: float = 0.95, resamples: int = 4000) -> tuple[float, float]:
    """A bootstrap confidence interval of the median of ``values`` (seeded: the same data, the same
    interval)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = random.Random(0)
    n = len(values)
    meds = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1 - level) / 2
    return meds[int(tail * resamples)], meds[min(resamples - 1, int((1 - tail) * resamples))]


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

"""Terminal output through rich: tables, notes on stderr, a download progress bar.

On a terminal: boxed tables and a live bar. Anywhere else (a pipe, a file, a test): plain text,
no colour, no box drawing, no wrapping, and progress as occasional lines.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self, TextIO

import requests
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from rbee.keeper.failures import KeeperError, from_response

PLAIN_WIDTH = 10_000  # no wrapping when the reader is a program


def make_console(file: TextIO) -> Console:
    console = Console(file=file, soft_wrap=True, highlight=False, markup=False, emoji=False)
    if not console.is_terminal:
        console.width = PLAIN_WIDTH
    return console


class Output:
    """stdout for results, stderr for everything about them (progress, stats, errors)."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.out = make_console(stdout or sys.stdout)
        self.err = make_console(stderr or sys.stderr)

    def say(self, text: str = "") -> None:
        self.out.print(text)

    def note(self, text: str) -> None:
        self.err.print(text)

    def fail(self, error: KeeperError) -> int:
        for line in error.lines():
            self.err.print(f"rbee-keeper: {line}")
        return error.exit_code

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        fancy = self.out.is_terminal
        table = Table(box=box.SIMPLE_HEAD if fancy else None, show_edge=fancy, pad_edge=False,
                      header_style="bold" if fancy else "")
        for name in columns:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*("" if cell is None else str(cell) for cell in row))
        if fancy:
            self.out.print(table)
            return
        with self.out.capture() as captured:
            self.out.print(table)
        for line in captured.get().splitlines():  # plain: no padding after the last column
            self.out.print(line.rstrip())

    def download_progress(self, label: str) -> DownloadProgress:
        return DownloadProgress(self.err, label)


class DownloadProgress:
    """A live bar (percent, size, speed, ETA) on a terminal; a line per 10 % elsewhere."""

    def __init__(self, console: Console, label: str) -> None:
        self.console = console
        self.label = label
        self._bar: Progress | None = None
        self._task: Any = None
        self._last_decile = -1

    def __enter__(self) -> Self:
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=None)
        return self

    def update(self, done: int, total: int | None, speed_mbps: float | None = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total or None)
            return
        if not total:
            return
        decile = min(10, done * 10 // total)
        if decile > self._last_decile:
            self._last_decile = decile
            self.console.print(plain_progress_line(self.label, done, total, speed_mbps))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def plain_progress_line(label: str, done: int, total: int, speed_mbps: float | None) -> str:
    """``label: 45% (12.3 MB of 27.0 MB, 5.1 MB/s, ETA 3 s)`` — the bar's content, as text.

    ``speed_mbps`` is the hive's figure, in megabits per second.
    """
    percent = 100 * done / total if total else 0.0
    parts = [f"{human_bytes(done)} of {human_bytes(total)}"]
    if speed_mbps:
        bytes_per_s = speed_mbps * 1_000_000 / 8
        parts.append(f"{human_bytes(bytes_per_s)}/s")
        parts.append(f"ETA {max(0, total - done) / bytes_per_s:.0f} s")
    return f"{label}: {percent:.0f}% ({', '.join(parts)})"


def list_reply(r: requests.Response, out: Output, as_json: bool, key: str, empty: str) -> list[dict[str, Any]]:
    """The items of a service's list answer, to show as a table; none left to show when ``--json``
    printed the answer whole, or when there were none (then ``empty`` says so and what to do)."""
    if r.status_code >= 300:
        raise from_response(r)
    data = r.json()
    if as_json:
        out.say(json.dumps(data))
        return []
    items = data.get(key, [])
    if not items:
        out.say(empty)
    return items

"""``rbee-keeper logs [--follow] [program]``: the log files the local programs write in the state dir.

``program`` is ``queen-rbee``, ``rbee-hive``, ``llm-worker-rbee`` (the newest worker log) or a worker
id; short names ``queen``, ``hive`` and ``worker`` work too. Without one, the files are listed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TextIO

from rbee.keeper.failures import EXIT_OK, KeeperError
from rbee.keeper.output import Output
from rbee.keeper.records import HIVE_LOG, QUEEN_LOG

WORKER_LOG = "llm-worker-rbee"
SHORT_NAMES = {"queen": QUEEN_LOG, "hive": HIVE_LOG, "worker": WORKER_LOG}
FOLLOW_POLL_S = 0.2


def log_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []


def find_log(folder: Path, program: str) -> Path:
    """The file for ``program`` (see the module doc), or a KeeperError naming what exists."""
    program = SHORT_NAMES.get(program, program)
    files = log_files(folder)
    if program == WORKER_LOG:
        workers = [p for p in files if p.stem not in (QUEEN_LOG, HIVE_LOG)]
        if workers:
            return workers[-1]  # the newest
    else:
        path = folder / f"{program.removesuffix('.log')}.log"
        if path.is_file():
            return path
    if not files:
        raise KeeperError(f"no logs yet in {folder}",
                          "logs appear once `rbee-keeper up` or `rbee-keeper infer` has started the programs")
    raise KeeperError(f"no log for {program!r} in {folder}",
                      f"pick one of: {', '.join(p.stem for p in files)} (or queen, hive, worker)")


def last_lines(path: Path, count: int) -> list[str]:
    with open(path, errors="replace") as f:
        return f.read().splitlines()[-count:] if count > 0 else []


def show(folder: Path, program: str | None, lines: int, follow: bool, out: Output, stdout: TextIO) -> int:
    if program is None:
        files = log_files(folder)
        if not files:
            out.say(f"no logs yet in {folder}; they appear once `rbee-keeper up` has run")
            return EXIT_OK
        out.table(["program", "size", "modified", "file"],
                  [[p.stem, p.stat().st_size, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.stat().st_mtime)),
                    str(p)] for p in files])
        return EXIT_OK
    path = find_log(folder, program)
    stdout.writelines(line + "\n" for line in last_lines(path, lines))
    stdout.flush()
    if follow:
        _follow(path, stdout)
    return EXIT_OK


def _follow(path: Path, stdout: TextIO) -> None:
    """Print what is appended until Ctrl+C, like ``tail -f`` (restarting if the file is replaced)."""
    with open(path, errors="replace") as f:
        f.seek(0, 2)
        try:
            while True:
                chunk = f.read()
                if chunk:
                    stdout.write(chunk)
                    stdout.flush()
                elif path.exists() and path.stat().st_size < f.tell():
                    f.seek(0)  # truncated or rewritten
                else:
                    time.sleep(FOLLOW_POLL_S)  # tail -f's polling period
        except KeyboardInterrupt:
            return

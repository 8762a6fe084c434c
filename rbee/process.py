"""ServiceProcess: one rbee program as a child process — start, wait ready by polling, stop.

Used by the behave hooks and by ``rbee-keeper up``. Readiness is polled against a deadline while
checking the process is still alive, so a crash fails fast with the log's tail instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import requests

# Every process started through this module, so a harness can prove none outlived it.


class ServiceError(RuntimeError):
    pass


class ServiceProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        ready_url: str,
        env: dict[str, str] | None = None,
        ready_check: Callable[[requests.Response], bool] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.ready_url = ready_url
        self.env = env
        self.ready_check = ready_check or (lambda r: r.status_code == 200)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServiceError(f"{self.name} exited (code {self.proc.returncode if self.proc else '?'}) "
                                   f"before it was ready. Last log lines:\n{self.log_tail()}")
            try:
                r = requests.get(self.ready_url, timeout=1)
                if self.ready_check(r):
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as exc:
                last = exc.__class__.__name__
            time.sleep(0.05)  # poll interval
        raise ServiceError(f"{self.name} not ready within {timeout:.0f}s ({last}). Log tail:\n{self.log_tail()}")

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``grace``, then SIGKILL whatever is left of the process group."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        # Whatever is left of its process group (itself, or children it forked) gets SIGKILL.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]




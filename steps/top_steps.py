"""Steps of ``rbee-keeper top``: the real command in a pseudo-terminal (as a person runs it), and piped."""

from __future__ import annotations

import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from fcntl import ioctl
from pathlib import Path

from behave import then, when

from rbee.testing.clients import wait_until

KEEPER = Path(sys.executable).with_name("rbee-keeper")  # the console script of this environment
ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Za-z0-9]|\x1b[=>]")


def _env(context) -> dict[str, str]:
    home = context.log_dir / "keeper-top"
    return {**os.environ, "XDG_CONFIG_HOME": str(home / "config"), "XDG_STATE_HOME": str(home / "state"),
            "TERM": "xterm-256color", "COLUMNS": "180", "LINES": "50"}


# Run first in the new session: stdin (the pty's slave) becomes its controlling terminal, then the command.
TAKE_TERMINAL = "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"


class Terminal:
    """rbee-keeper top on the slave side of a pty (180×50); what it draws is read from the master."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 180, 0, 0))
        self.screen = bytearray()
        try:
            # Its own session with the pty as controlling terminal: Ctrl+C typed there is its SIGINT.
            self.proc = subprocess.Popen([sys.executable, "-c", TAKE_TERMINAL, *argv], stdin=slave, stdout=slave,
                                         stderr=slave, env=env, start_new_session=True)
        finally:
            os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # the child closed its side
                return
            if not data:
                return
            self.screen.extend(data)

    def text(self) -> str:
        return ANSI.sub(b"", bytes(self.screen)).decode("utf-8", "replace")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        os.close(self.master)


@when("rbee-keeper top runs in a terminal against the queen")
def step_top_tty(context):
    argv = [str(KEEPER), "top", "--queen-url", context.cluster.queen_url]
    context.terminal = Terminal(argv, _env(context))
    context.add_cleanup(context.terminal.close)
    wait_until(lambda: "q quits" in context.terminal.text(), 20 * context.cluster.k,
               what=f"top's screen (so far: {context.terminal.text()[-500:]!r})")


@then('the terminal shows worker "{worker_id:Q}" and that request within {n:d} seconds')
def step_top_shows(context, worker_id, n):
    rid = context.ui_stream.request_id
    wait_until(lambda: worker_id in (t := context.terminal.text()) and rid in t, n * context.cluster.k,
               what=f"{worker_id} and request {rid} on top's screen (last: {context.terminal.text()[-1500:]})")


KEYS = {"q": "q", "Ctrl+C": "\x03"}


@when('"{key:Q}" is typed in the terminal')
def step_type(context, key):
    context.terminal.type(KEYS[key])


@then("rbee-keeper top exits with status 0 within {n:d} seconds")
def step_top_exit(context, n):
    try:
        code = context.terminal.proc.wait(n * context.cluster.k)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"top still running after {n}s") from None
    assert code == 0, (code, context.terminal.text()[-1500:])


@when("rbee-keeper top runs with its output piped")
def step_top_piped(context):
    context.top_run = subprocess.run([str(KEEPER), "top", "--queen-url", context.cluster.queen_url],
                                     check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                     env=_env(context),
                                     timeout=30 * context.cluster.k)


@then('it prints one snapshot naming worker "{worker_id:Q}" and exits 0')
def step_top_snapshot(context, worker_id):
    run = context.top_run
    assert run.returncode == 0, (run.returncode, run.stderr)
    assert worker_id in run.stdout and "in flight" in run.stdout, run.stdout
    assert "\x1b[" not in run.stdout, "terminal codes in piped output"

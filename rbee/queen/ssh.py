"""Running commands on other machines with the system OpenSSH client, as the queen's user.

``ssh`` itself, not a library: the user's ``~/.ssh/config``, agent and ``known_hosts`` apply as they
do at a terminal. Every call is ``BatchMode`` (never a prompt), with a connect timeout, and strict
host key checking (``accept-new`` only where the user asked for it). Connection failures are retried
with backoff; anything else ssh refuses is diagnosed once (:mod:`rbee.queen.ssh_diagnosis`).

Commands go to the remote's login shell as one string, so everything here is quoted: a script runs
as ``sh -c SCRIPT sh ARG...`` with its values as positional arguments, never pasted into its text.
Processes are started with ``asyncio.create_subprocess_exec`` (no local shell) and killed when the
caller is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from rbee.errors import ErrorCode, RbeeError
from rbee.queen.ssh_diagnosis import (
    RETRYABLE,
    SSH_FAILED_EXIT,
    Where,
    classify,
    connected,
    diagnose,
)

_HOST = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,31}$")


@dataclass(frozen=True)
class SshTarget:
    """Where to log in: ``[USER@]HOST[:PORT]`` (HOST may be a ``Host`` alias of ssh_config) and how."""

    host: str
    port: int | None = None
    user: str | None = None
    identity: str | None = None  # a private key file on the queen's machine
    accept_new_host_key: bool = False

    @classmethod
    def parse(cls, text: str, **how: object) -> SshTarget:
        """``[USER@]HOST[:PORT]``, ``[::1]:22`` for IPv6; ValueError saying what is wrong."""
        user, at, rest = text.rpartition("@")
        if not at:
            user = ""
        host, port = rest, None
        if rest.startswith("["):
            close = rest.find("]")
            if close < 0:
                raise ValueError(f"'{text}': an IPv6 address needs its closing ']'")
            host, tail = rest[:close + 1], rest[close + 1:]
            if tail:
                if not tail.startswith(":"):
                    raise ValueError(f"'{text}': expected :PORT after the address")
                port = tail[1:]
        elif rest.count(":") == 1:
            host, port = rest.split(":")
        if not _HOST.fullmatch(host):
            raise ValueError(f"'{text}': '{host}' is not a host name or address")
        if at and not _USER.fullmatch(user):
            raise ValueError(f"'{text}': '{user}' is not a user name")
        number = None
        if port is not None:
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"'{text}': the port must be a number from 1 to 65535")
            number = int(port)
        return cls(host=host.strip("[]"), port=number, user=user or None, **how)  # type: ignore[arg-type]

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{host}{':' + str(self.port) if self.port else ''}"

    @property
    def where(self) -> Where:
        return Where(self.host, self.port, self.user)


@dataclass(frozen=True)
class SshOptions:
    """How every ssh of this queen runs (from its settings)."""

    config_file: Path | None = None  # -F; None: ssh's own ~/.ssh/config
    connect_timeout: float = 10.0
    attempts: int = 3  # for connection failures only
    backoff_s: float = 1.0  # before the 2nd attempt; doubled each time
    program: str = "ssh"


@dataclass
class SshResult:
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def error_text(self) -> str:
        return self.stderr.decode(errors="replace").strip()


def script(text: str, *args: str | Path) -> str:
    """The remote command that runs POSIX sh ``text`` with ``args`` as ``$1``…, all of it quoted."""
    return shlex.join(["sh", "-c", text, "sh", *(str(a) for a in args)])


class Ssh:
    def __init__(self, options: SshOptions) -> None:
        self.options = options

    def argv(self, target: SshTarget, command: str, log_file: str | None = None) -> list[str]:
        o = self.options
        argv = [o.program, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, round(o.connect_timeout))}",
                "-o", f"StrictHostKeyChecking={'accept-new' if target.accept_new_host_key else 'yes'}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if log_file is not None:
            argv += ["-v", "-E", log_file]  # ssh's own messages, apart from the remote command's stderr
        if o.config_file is not None:
            argv += ["-F", str(o.config_file)]
        if target.identity:
            argv += ["-i", target.identity, "-o", "IdentitiesOnly=yes"]
        if target.port:
            argv += ["-p", str(target.port)]
        if target.user:
            argv += ["-l", target.user]
        return [*argv, "--", target.host, command]

    async def run(self, target: SshTarget, command: str, *, stdin: bytes | Path | None = None,
                  timeout: float | None = 120.0) -> SshResult:
        """Run ``command`` there; its exit status and output whatever they are. ssh's own failures are raised,
        diagnosed (connection failures after ``attempts`` tries); ``timeout`` bounds each try."""
        started = time.monotonic()
        attempts = self.options.attempts
        for attempt in range(1, attempts + 1):
            result, log = await self._once(target, command, stdin, timeout)
            if result.exit_code != SSH_FAILED_EXIT or connected(log):
                return result
            failure = classify(log + "\n" + result.error_text)
            if failure not in RETRYABLE or attempt == attempts:
                raise diagnose(failure, target.where, log + "\n" + result.error_text,
                               waited_s=time.monotonic() - started, attempts=attempt,
                               connect_timeout=self.options.connect_timeout)
            await asyncio.sleep(self.options.backoff_s * 2 ** (attempt - 1))  # backoff between connection tries
        raise AssertionError("unreachable")

    async def check(self, target: SshTarget, command: str, *, what: str, stdin: bytes | Path | None = None,
                    timeout: float | None = 120.0) -> SshResult:
        """:meth:`run`, and a non-zero exit of the command raised as SSH_FAILED saying ``what`` failed."""
        result = await self.run(target, command, stdin=stdin, timeout=timeout)
        if result.exit_code != 0:
            said = (result.error_text or result.text.strip()).splitlines()[-3:]
            raise RbeeError(ErrorCode.SSH_FAILED, f"On {target}, {what} failed (exit {result.exit_code}): "
                            f"{' / '.join(said) or 'no output'}.",
                            {"ssh_host": target.host, "exit_code": result.exit_code, "output": said})
        return result

    async def _once(self, target: SshTarget, command: str, stdin: bytes | Path | None,
                    timeout: float | None) -> tuple[SshResult, str]:
        with tempfile.NamedTemporaryFile(prefix="rbee-ssh-", suffix=".log") as log:
            # Never the queen's own stdin: the bytes given, the file given, or /dev/null.
            fd = None if isinstance(stdin, bytes) else os.open(stdin if stdin is not None else os.devnull, os.O_RDONLY)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.argv(target, command, log.name), stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE if fd is None else fd,
                    start_new_session=True)
            finally:
                if fd is not None:
                    os.close(fd)
            try:
                out, err = await asyncio.wait_for(proc.communicate(stdin if isinstance(stdin, bytes) else None),
                                                  timeout)
            except TimeoutError:
                raise RbeeError(ErrorCode.SSH_FAILED, f"The command on {target} did not finish within "
                                f"{timeout:g} s; it was stopped. Check the machine's load and retry.",
                                {"ssh_host": target.host, "timeout_s": timeout}) from None
            finally:
                await _reap(proc)
            code = proc.returncode if proc.returncode is not None else -1
            return SshResult(code, out, err), Path(log.name).read_text(errors="replace")

    @contextlib.asynccontextmanager
    async def stream(self, target: SshTarget, command: str) -> AsyncIterator[asyncio.subprocess.Process]:
        """A running ssh whose stdout the caller reads (``tail -F``); its stdin is held open, so the remote
        command can tell (stdin at EOF) when we let go. Ended when the block exits."""
        proc = await asyncio.create_subprocess_exec(*self.argv(target, command), stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            yield proc
        finally:
            await _reap(proc)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """End ssh if it still runs (a cancelled caller, a timeout), then collect it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(proc.wait())

"""The audit log: append-only JSON lines, each sealed with a hash that covers the one before it.

Every entry carries ``seq`` (1, 2, 3 … across files and restarts), ``prev`` (the previous entry's
``hash``; 64 zeros for the first) and ``hash`` (SHA-256 of the entry's canonical JSON without
``hash``). Editing a line breaks its hash, removing or reordering lines breaks ``seq`` and ``prev``:
:func:`verify` names the first line that does not fit. It is tamper-evident, not tamper-proof: one
who rewrites every line after an edit leaves a consistent chain, so keep a copy of the last hash
(``rbee-keeper audit verify`` prints it) somewhere else.

Writing: one ``write`` per entry on an ``O_APPEND`` file (the line reaches the OS whole, so a crash of
the process loses nothing written); ``fsync`` at most once a second, in a thread, and on rotation
and close. A line that cannot be written (disk full, the file removed or replaced) raises
:class:`AuditUnavailable`: the request that needed it must not run unaudited. A file that would
pass ``max_bytes`` is renamed ``PATH.000001`` (then ``.000002`` …) and the chain goes on in a new
``PATH``; a restart goes on from the last entry there.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rbee.errors import ErrorCode, RbeeError

GENESIS = "0" * 64
TAIL_BYTES = 1 << 20  # how much of a file's end is read to find its last entry at start


class AuditUnavailable(RbeeError):
    def __init__(self, path: Path, why: str) -> None:
        super().__init__(ErrorCode.AUDIT_UNAVAILABLE,
                         f"Refused: this request must be audited and the audit log cannot be written ({why}). "
                         f"Free space or restore {path}, or send the server SIGHUP to reopen it; then retry.",
                         {"audit_log": str(path)})


class AuditStartError(ValueError):
    """The audit log cannot be continued at start (its last line is broken, or it cannot be opened)."""


# ---------------------------------------------------------------- the chain


def canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def seal(entry: dict[str, Any]) -> tuple[bytes, str]:
    """The entry's line (with its hash) and the hash."""
    digest = hashlib.sha256(canonical(entry)).hexdigest()
    return canonical({**entry, "hash": digest}) + b"\n", digest


def parse(raw: bytes) -> dict[str, Any] | None:
    """An entry whose hash matches its content; None for anything else (edited, cut short, not JSON)."""
    try:
        entry = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not (isinstance(entry, dict) and isinstance(entry.get("seq"), int) and isinstance(entry.get("hash"), str)
            and isinstance(entry.get("prev"), str)):
        return None
    claimed = entry.pop("hash")
    if hashlib.sha256(canonical(entry)).hexdigest() != claimed:
        return None
    entry["hash"] = claimed
    return entry


def files_of(path: Path) -> list[Path]:
    """The chain's files, oldest first: the rotated ones (``PATH.000001`` …) then ``PATH``."""
    rotated = sorted(p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit())
    return rotated + ([path] if path.exists() else [])


def _next_rotated(path: Path) -> Path:
    numbers = [int(p.suffix[1:]) for p in files_of(path) if p != path]
    return path.with_name(f"{path.name}.{max(numbers, default=0) + 1:06d}")


def last_entry(path: Path) -> dict[str, Any] | None:
    """The newest entry of the chain at ``path`` (None when there is none yet); AuditStartError when the
    newest line is not a whole, valid entry."""
    for file in reversed(files_of(path)):
        with file.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            tail = f.read()
        if not tail.strip():
            continue
        if not tail.endswith(b"\n"):
            raise AuditStartError(f"{file} ends in a line cut short; check it with `rbee-keeper audit verify "
                                  f"{path}`, then move the file aside to go on in a new one")
        entry = parse(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
        if entry is None:
            raise AuditStartError(f"the last line of {file} is not a valid audit entry (edited?); check it with "
                                  f"`rbee-keeper audit verify {path}`, then move the file aside")
        return entry
    return None


# ---------------------------------------------------------------- checking a chain


@dataclass(frozen=True)
class Verdict:
    ok: bool
    message: str
    entries: int = 0
    last_hash: str | None = None


def _lines(files: Iterable[Path]) -> Iterable[tuple[str, bytes]]:
    for file in files:
        data = file.read_bytes()
        for number, raw in enumerate(data.split(b"\n"), 1):
            if raw or number <= data.count(b"\n"):  # the empty string after the last newline is no line
                yield f"{file} line {number}", raw


def verify(path: Path) -> Verdict:
    """Check the chain at ``path`` (and its rotated files): OK, or the first line edited, removed or
    reordered. A chain may start after entry 1 when older files were archived away."""
    files = files_of(path)
    if not files:
        return Verdict(False, f"{path}: no such audit log")
    lines = list(_lines(files))
    entries = [parse(raw) for _, raw in lines]
    seen = {e["seq"] for e in entries if e}
    prev_hash: str | None = None
    want: int | None = None
    for i, ((where, _), entry) in enumerate(zip(lines, entries, strict=True)):
        if entry is None:
            return Verdict(False, f"{where}: edited (not a valid audit entry: its hash does not match its content, "
                                  "or the line is cut short)", i)
        seq = entry["seq"]
        if want is None:
            if seq == 1 and entry["prev"] != GENESIS:
                return Verdict(False, f"{where}: edited (entry 1 must follow nothing)", i)
        elif seq > want and want in seen:
            return Verdict(False, f"{where}: out of order (entry {seq} where entry {want} was expected; it comes "
                                  "later)", i)
        elif seq > want:
            gap = f"entry {want}" if seq == want + 1 else f"entries {want}-{seq - 1}"
            return Verdict(False, f"{where}: {gap} removed before this line (entry {seq} follows entry {want - 1})", i)
        elif seq < want:
            return Verdict(False, f"{where}: out of order (entry {seq} after entry {want - 1})", i)
        elif entry["prev"] != prev_hash:
            return Verdict(False, f"{lines[i - 1][0]}: edited (entry {seq - 1} is not the one entry {seq} "
                                  "follows)", i - 1)
        prev_hash, want = entry["hash"], seq + 1
    first = entries[0]["seq"] if entries and entries[0] else 1
    start = "" if first == 1 else f"; starts at entry {first} (older files not here)"
    return Verdict(True, f"OK: {len(entries)} entries in {len(files)} file(s){start}; last hash {prev_hash}",
                   len(entries), prev_hash)


# ---------------------------------------------------------------- writing


class AuditLog:
    """One server's audit log. Not thread-safe: written from the event loop only."""

    def __init__(self, path: Path, *, part: str, max_bytes: int = 0) -> None:
        self.path = path
        self.part = part
        self.max_bytes = max_bytes
        last = last_entry(path)
        self.seq, self.prev = (last["seq"], last["hash"]) if last else (0, GENESIS)
        self.entries = 0  # written by this process
        self.failures = 0  # entries that could not be written
        self.available = True
        self._fd: int | None = None
        self._size = 0
        self._ident: tuple[int, int] | None = None
        self._dirty = False
        try:
            self._open()
        except OSError as err:
            raise AuditStartError(f"cannot open {path} for appending ({err.strerror})") from None

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(self._fd)
        self._size, self._ident = st.st_size, (st.st_dev, st.st_ino)

    def record(self, event: str, **fields: Any) -> None:
        """Append one entry; AuditUnavailable (503) when it cannot be written, and nothing is appended."""
        entry = {"seq": self.seq + 1, "ts": _now(), "part": self.part, "event": event, **fields, "prev": self.prev}
        line, digest = seal(entry)
        try:
            self._still_ours()
            if self.max_bytes and self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            self._append(line)
        except OSError as err:
            self.failures += 1
            self.available = False
            raise AuditUnavailable(self.path, _why(err)) from None
        self.seq, self.prev = entry["seq"], digest
        self.entries += 1
        self.available = True

    def try_record(self, event: str, **fields: Any) -> bool:
        """For what must not fail the request (an answer already sent, a refusal): counted when lost."""
        try:
            self.record(event, **fields)
        except AuditUnavailable:
            return False
        return True

    def _still_ours(self) -> None:
        if self._fd is None:
            raise OSError(errno.EBADF, "the audit log is closed")
        st = os.stat(self.path)  # FileNotFoundError: removed or moved away
        if (st.st_dev, st.st_ino) != self._ident:
            raise OSError(errno.ESTALE, f"{self.path} was replaced by another file")

    def _append(self, line: bytes) -> None:
        assert self._fd is not None
        try:
            written = os.write(self._fd, line)
        except OSError:
            self._cut_back()
            raise
        if written != len(line):  # the disk filled up mid-line: take the piece back
            self._cut_back()
            raise OSError(errno.ENOSPC, "No space left on device")
        self._size += written
        self._dirty = True

    def _cut_back(self) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            pass  # nothing more to do: verify will name the broken line

    def _rotate(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        os.rename(self.path, _next_rotated(self.path))
        os.close(self._fd)
        self._fd = None
        self._open()

    def reopen(self) -> None:
        """Open ``path`` again (after SIGHUP): a file moved away or removed gives a new one, the chain
        going on in it. Raises OSError when it cannot be opened."""
        self.close()
        self._open()

    def sync_fd(self) -> int | None:
        """A duplicate of the file's descriptor to fsync in a thread (the original may close meanwhile),
        or None when nothing was written since the last one."""
        if not self._dirty or self._fd is None:
            return None
        self._dirty = False
        return os.dup(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None


def fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _why(err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        return "the file was removed or moved away"
    return err.strerror or str(err)


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"

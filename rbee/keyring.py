"""The keys a server accepts right now, re-read from their files without a restart.

A reload (SIGHUP, or the queen's ``POST /v2/admin/reload``) reads every key file first and swaps all
sets at once. If any file is broken — unreadable, removed, readable by others, empty, a key too
short — it changes nothing: the server keeps the keys it had and says why. A broken file never
leaves a server open. Each request is checked once, as it arrives, so a stream already running
goes on to its end; a removed key is refused from the next request on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rbee.auth import fingerprint, read_key_file


@dataclass(frozen=True)
class KeySource:
    """One set of keys: those given on the command line (fixed until a restart) and those in a file."""

    name: str  # "api", "admin", "cluster"
    flag: str  # the file's flag, named when it is broken
    fixed: tuple[str, ...] = ()
    path: Path | None = None

    def read(self) -> tuple[str, ...]:
        """The set as the file says now; ValueError naming the flag and the fix when it is broken."""
        keys = list(self.fixed)
        if self.path is not None:
            try:
                keys += read_key_file(self.path)
            except ValueError as err:
                raise ValueError(f"{self.flag}: {err}") from None
        return tuple(dict.fromkeys(keys))  # in order, once each


@dataclass(frozen=True)
class Reloaded:
    """What a reload did: keys per set, and which (by fingerprint) came and went; or why it did nothing."""

    ok: bool
    counts: dict[str, int]
    added: dict[str, list[str]] = field(default_factory=dict)
    removed: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def summary(self) -> dict:
        out: dict = {"reloaded": self.ok, "keys": self.counts}
        if self.ok:
            out.update(added=self.added, removed=self.removed)
        else:
            out["error"] = self.error
        return out


class KeyRing:
    """The named key sets a server checks requests against. Sources are read once here (the settings
    have already refused broken files at start), then again on each :meth:`reload`."""

    def __init__(self, *sources: KeySource) -> None:
        self._sources = {s.name: s for s in sources}
        self._keys = {s.name: s.read() for s in sources}

    def keys(self, name: str) -> tuple[str, ...]:
        return self._keys.get(name, ())

    def has(self, name: str) -> bool:
        return bool(self._keys.get(name))

    def counts(self) -> dict[str, int]:
        return {name: len(keys) for name, keys in self._keys.items()}

    def reloadable(self) -> bool:
        return any(s.path is not None for s in self._sources.values())

    def reload(self) -> Reloaded:
        """Re-read every file; all sets change together, or none does."""
        try:
            fresh = {name: source.read() for name, source in self._sources.items()}
        except ValueError as err:
            return Reloaded(False, self.counts(), error=str(err))
        added, removed = {}, {}
        for name, keys in fresh.items():
            old = set(self._keys[name])
            added[name] = [fingerprint(k) for k in keys if k not in old]
            removed[name] = [fingerprint(k) for k in self._keys[name] if k not in set(keys)]
        self._keys = fresh
        return Reloaded(True, self.counts(), added, removed)

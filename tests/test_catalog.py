"""The hive's model catalog and GGUF header reading, against real files and a real SQLite database."""

from __future__ import annotations

import logging
import sqlite3
import struct
import threading
from pathlib import Path

import pytest

from rbee import models
from rbee.hive.catalog import CATALOG_FILE, Catalog, CatalogEntry, entry_for_file
from rbee.hive.gguf_info import GGUFError, read_gguf_info
from rbee.testing.tiny_gguf import make_tiny_gguf


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def catalog(models_dir: Path) -> Catalog:
    cat = Catalog(models_dir)
    cat.open()
    return cat


def _entry(models_dir: Path, ref: str, provider: str = "hf", name: str = "m.gguf") -> CatalogEntry:
    path = make_tiny_gguf(models_dir / provider / name, name=name)
    return entry_for_file(path, ref, provider, sha256="ab" * 32)  # type: ignore[arg-type]


# ---------------------------------------------------------------- GGUF headers


def test_gguf_info_of_the_tiny_fixture(tmp_path: Path) -> None:
    info = read_gguf_info(make_tiny_gguf(tmp_path / "t.gguf", name="tiny-x"))
    assert (info.architecture, info.quantization, info.name, info.file_type) == ("llama", "Q4_1", "tiny-x", 3)
    assert info.tensor_count == 1


def test_gguf_info_of_the_real_default_model() -> None:
    info = read_gguf_info(models.default_model_path())
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert info.name and "135M" in info.name


def test_gguf_info_rejects_files_that_are_not_gguf(tmp_path: Path) -> None:
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"<html>404</html>")
    with pytest.raises(GGUFError, match="not a GGUF"):
        read_gguf_info(not_gguf)
    good = make_tiny_gguf(tmp_path / "good.gguf").read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good[:40])
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf_info(truncated)
    bad_version = tmp_path / "v9.gguf"
    bad_version.write_bytes(b"GGUF" + struct.pack("<I", 9) + good[8:])
    with pytest.raises(GGUFError, match="version 9"):
        read_gguf_info(bad_version)


# ---------------------------------------------------------------- rows


def test_add_get_list_and_filter_by_provider(catalog: Catalog, models_dir: Path) -> None:
    hf = catalog.add(_entry(models_dir, "hf:org/repo:m.gguf", "hf"))
    url = catalog.add(_entry(models_dir, "https://example.com/u.gguf", "https", "u.gguf"))
    assert hf.id is not None and url.id is not None and hf.id != url.id

    got = catalog.get("hf:org/repo:m.gguf")
    assert got is not None
    assert (got.provider, got.quantization, got.architecture, got.sha256) == ("hf", "Q4_1", "llama", "ab" * 32)
    assert got.local_path == models_dir.resolve() / "hf" / "m.gguf"
    assert got.size_bytes == got.local_path.stat().st_size
    assert catalog.get("hf:org/other:m.gguf") is None

    assert [e.reference for e in catalog.list(provider="hf")] == ["hf:org/repo:m.gguf"]
    assert [e.reference for e in catalog.list(provider="https")] == ["https://example.com/u.gguf"]
    assert catalog.list(provider="file") == []
    everything = {e.reference for e in catalog.list()}
    assert everything == {models.DEFAULT_MODEL_REF, "hf:org/repo:m.gguf", "https://example.com/u.gguf"}


def test_adding_a_ref_again_updates_its_one_row(catalog: Catalog, models_dir: Path) -> None:
    first = catalog.add(_entry(models_dir, "hf:org/repo:m.gguf"))
    again = catalog.add(CatalogEntry(**{**first.__dict__, "sha256": "cd" * 32, "id": None}))
    assert again.id == first.id
    assert [e.sha256 for e in catalog.list(provider="hf")] == ["cd" * 32]


def test_the_default_model_is_always_listed(catalog: Catalog) -> None:
    builtin = catalog.list(provider="builtin")
    assert [(e.reference, e.provider) for e in builtin] == [(models.DEFAULT_MODEL_REF, "builtin")]
    assert builtin[0].local_path == models.default_model_path()
    assert builtin[0].quantization == "Q4_1"
    assert catalog.get("default") == builtin[0]
    assert catalog.list()[0].provider == "builtin"
    with pytest.raises(ValueError):
        catalog.add(builtin[0])


def test_rows_survive_reopening_and_the_database_is_sound(catalog: Catalog, models_dir: Path) -> None:
    catalog.add(_entry(models_dir, "hf:org/repo:m.gguf"))
    reopened = Catalog(models_dir)
    reopened.open()
    assert reopened.get("hf:org/repo:m.gguf") is not None
    with sqlite3.connect(models_dir / CATALOG_FILE) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM models").fetchone()[0] == 1


def test_remove_forgets_and_only_deletes_files_it_owns(catalog: Catalog, models_dir: Path, tmp_path: Path) -> None:
    inside = catalog.add(_entry(models_dir, "hf:org/repo:m.gguf"))
    outside_path = make_tiny_gguf(tmp_path / "elsewhere" / "o.gguf")
    catalog.add(entry_for_file(outside_path, f"file://{outside_path}", "file"))

    assert catalog.remove("hf:org/repo:m.gguf", delete_file=True)
    assert not inside.local_path.exists()
    assert catalog.remove(f"file://{outside_path}", delete_file=True)
    assert outside_path.exists()  # never delete a user's file outside the models folder
    assert not catalog.remove("hf:org/repo:m.gguf")
    assert catalog.list(provider="hf") == [] and catalog.list(provider="file") == []


# ---------------------------------------------------------------- never lose a model on disk


def test_a_gguf_on_disk_without_a_row_is_added_on_open(models_dir: Path) -> None:
    path = make_tiny_gguf(models_dir / "hf" / "org" / "repo" / "lost.gguf")
    (models_dir / "junk.gguf").write_bytes(b"not a model")
    cat = Catalog(models_dir)
    cat.open()
    files = cat.list(provider="file")
    assert [e.reference for e in files] == [f"file://{path.resolve()}"]
    assert files[0].quantization == "Q4_1"


def test_a_row_whose_file_is_gone_is_dropped(catalog: Catalog, models_dir: Path) -> None:
    entry = catalog.add(_entry(models_dir, "hf:org/repo:m.gguf"))
    entry.local_path.unlink()
    assert catalog.get("hf:org/repo:m.gguf") is None
    reopened = Catalog(models_dir)
    reopened.open()
    assert reopened.list(provider="hf") == []


@pytest.mark.parametrize("damage", ["not_a_database", "malformed_pages"])
def test_a_corrupt_catalog_is_backed_up_and_rebuilt_from_disk(
    catalog: Catalog, models_dir: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = catalog.add(_entry(models_dir, "hf:org/repo:a.gguf", name="a.gguf"))
    b = catalog.add(_entry(models_dir, "https://example.com/b.gguf", "https", "b.gguf"))
    db = models_dir / CATALOG_FILE
    if damage == "not_a_database":
        db.write_bytes(b"this is not sqlite at all" * 100)
    else:  # keep the 100-byte SQLite header, wipe the schema and the rows behind it
        raw = db.read_bytes()
        db.write_bytes(raw[:100] + b"\xff" * (len(raw) - 100))
    damaged = db.read_bytes()

    with caplog.at_level(logging.ERROR, logger="rbee.hive.catalog"):
        rebuilt = Catalog(models_dir)
        rebuilt.open()

    backups = list(models_dir.glob(f"{CATALOG_FILE}.corrupt.*"))
    assert len(backups) == 1 and backups[0].read_bytes() == damaged
    assert any(str(backups[0]) in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    on_disk = {e.local_path for e in rebuilt.list(provider="file")}
    assert on_disk == {a.local_path, b.local_path}
    assert all(p.exists() for p in on_disk)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_concurrent_writers_from_threads(catalog: Catalog, models_dir: Path) -> None:
    template = _entry(models_dir, "template")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(20):
                catalog.add(CatalogEntry(**{**template.__dict__, "reference": f"hf:org/r{n}:{i}.gguf", "id": None}))
                catalog.list(provider="hf")
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(catalog.list(provider="hf")) == 6 * 20

"""The key ring: a reload changes every set at once or none, and never leaves a set empty by accident."""

from __future__ import annotations

from pathlib import Path

from rbee.auth import fingerprint
from rbee.keyring import KeyRing, KeySource

OLD, NEW, ADMIN = "old-key-0123456789abcdef", "new-key-0123456789abcdef", "admin-key-0123456789abcd"


def _file(path: Path, *keys: str) -> Path:
    path.write_text("".join(f"{k}\n" for k in keys))
    path.chmod(0o600)
    return path


def test_a_reload_swaps_the_keys_and_names_them_by_fingerprint(tmp_path: Path) -> None:
    api = _file(tmp_path / "api", OLD)
    ring = KeyRing(KeySource("api", "--api-key-file", ("fixed-key-0123456789ab",), api))
    _file(api, NEW)
    result = ring.reload()
    assert result.ok and ring.keys("api") == ("fixed-key-0123456789ab", NEW)
    assert result.added == {"api": [fingerprint(NEW)]} and result.removed == {"api": [fingerprint(OLD)]}
    assert OLD not in str(result.summary()) and NEW not in str(result.summary())


def test_one_broken_file_changes_no_set(tmp_path: Path) -> None:
    api, admin = _file(tmp_path / "api", OLD), _file(tmp_path / "admin", ADMIN)
    ring = KeyRing(KeySource("api", "--api-key-file", (), api), KeySource("admin", "--admin-key-file", (), admin))
    _file(api, NEW)
    admin.chmod(0o644)  # others can read it: refused
    result = ring.reload()
    assert not result.ok and "--admin-key-file" in (result.error or "") and "chmod 600" in (result.error or "")
    assert ring.keys("api") == (OLD,) and ring.keys("admin") == (ADMIN,)


def test_a_removed_or_emptied_file_keeps_the_keys(tmp_path: Path) -> None:
    api = _file(tmp_path / "api", OLD)
    ring = KeyRing(KeySource("api", "--api-key-file", (), api))
    api.write_text("\n")
    assert not ring.reload().ok and ring.keys("api") == (OLD,)
    api.unlink()
    assert "cannot read" in (ring.reload().error or "") and ring.keys("api") == (OLD,)

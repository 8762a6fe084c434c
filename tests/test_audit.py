"""The audit log's hash chain: written for real to files, then edited, cut, reordered and checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rbee.audit import GENESIS, AuditLog, AuditStartError, AuditUnavailable, files_of, verify


def _log(path: Path, n: int, **kw) -> AuditLog:
    audit = AuditLog(path, part="queen", **kw)
    for i in range(n):
        audit.record("auth.ok", route="/v1/inference", client="127.0.0.1", key=f"key-{i:012d}", request_id=f"r{i}")
    return audit


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_a_whole_chain_is_ok_and_starts_from_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path, 5).close()
    first = json.loads(_lines(path)[0])
    assert first["seq"] == 1 and first["prev"] == GENESIS
    verdict = verify(path)
    assert verdict.ok and verdict.entries == 5, verdict
    assert verdict.last_hash == json.loads(_lines(path)[-1])["hash"]


def test_an_edited_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path, 5).close()
    lines = _lines(path)
    lines[2] = lines[2].replace("127.0.0.1", "10.0.0.99")
    path.write_text("".join(lines))
    verdict = verify(path)
    assert not verdict.ok and "line 3: edited" in verdict.message, verdict


def test_an_edit_with_its_hash_recomputed_is_still_found(tmp_path: Path) -> None:
    from rbee.audit import seal
    path = tmp_path / "audit.log"
    _log(path, 5).close()
    lines = _lines(path)
    entry = json.loads(lines[1])
    entry.pop("hash")
    entry["client"] = "10.0.0.99"
    lines[1] = seal(entry)[0].decode()
    path.write_text("".join(lines))
    verdict = verify(path)
    assert not verdict.ok and "line 2: edited" in verdict.message, verdict


def test_a_removed_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path, 5).close()
    lines = _lines(path)
    path.write_text("".join(lines[:2] + lines[3:]))
    verdict = verify(path)
    assert not verdict.ok and "line 3: entry 3 removed" in verdict.message, verdict


def test_reordered_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path, 5).close()
    lines = _lines(path)
    lines[1], lines[3] = lines[3], lines[1]
    path.write_text("".join(lines))
    verdict = verify(path)
    assert not verdict.ok and "line 2: out of order" in verdict.message, verdict


def test_a_line_cut_short_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path, 3).close()
    text = path.read_text()
    path.write_text(text[:-20])
    verdict = verify(path)
    assert not verdict.ok and "line 3: edited" in verdict.message, verdict
    with pytest.raises(AuditStartError, match="cut short"):
        AuditLog(path, part="queen")  # a server will not go on from a broken end


def test_the_chain_goes_on_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path, 3).close()
    _log(path, 2).close()
    assert [json.loads(line)["seq"] for line in _lines(path)] == [1, 2, 3, 4, 5]
    assert verify(path).ok


def test_the_chain_goes_on_across_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path, 20, max_bytes=1000).close()
    files = files_of(path)
    assert len(files) > 3 and all(f.stat().st_size <= 1000 for f in files), files
    assert files[0].name == "audit.log.000001" and files[-1] == path
    assert verify(path).ok and verify(path).entries == 20
    _log(path, 3, max_bytes=1000).close()  # a restart goes on from the newest file
    assert verify(path).entries == 23
    middle = files_of(path)[1]
    middle.unlink()  # a rotated file taken away in the middle of the chain
    verdict = verify(path)
    assert not verdict.ok and "removed" in verdict.message, verdict


def test_archived_older_files_leave_a_chain_that_starts_later(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path, 20, max_bytes=1000).close()
    files_of(path)[0].unlink()
    verdict = verify(path)
    assert verdict.ok and "starts at entry" in verdict.message, verdict


def test_a_removed_file_makes_writes_fail_until_reopened(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = _log(path, 2)
    path.unlink()
    with pytest.raises(AuditUnavailable):
        audit.record("auth.ok", route="/v1/inference")
    assert not audit.available and audit.failures == 1
    audit.reopen()
    audit.record("keys.reload", via="SIGHUP")
    audit.close()
    assert audit.available and json.loads(_lines(path)[0])["seq"] == 3  # the chain goes on in the new file
    assert verify(path).ok

"""rbee-keeper's plain (non-terminal) output: tables, progress lines, log file lookup, the cluster record."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from rbee.keeper import logfiles, records
from rbee.keeper.failures import KeeperError
from rbee.keeper.output import Output, human_bytes, plain_progress_line


def test_plain_table_has_no_box_drawing_and_no_trailing_spaces():
    stdout = io.StringIO()
    Output(stdout=stdout).table(["id", "url"], [["w1", "http://127.0.0.1:1"], ["a-much-longer-id", None]])
    lines = stdout.getvalue().splitlines()
    assert lines[0].split() == ["id", "url"]
    assert all(line == line.rstrip() for line in lines)
    assert not any(ch in stdout.getvalue() for ch in "─│┃━")


def test_progress_line():
    assert human_bytes(999) == "999 B" and human_bytes(12_300_000) == "12.3 MB"
    line = plain_progress_line("hf:a/b", 50_000_000, 100_000_000, 80.0)  # 80 Mbit/s = 10 MB/s
    assert line == "hf:a/b: 50% (50.0 MB of 100.0 MB, 10.0 MB/s, ETA 5 s)"


def test_download_progress_prints_each_tenth_once():
    err = io.StringIO()
    with Output(stderr=err).download_progress("m") as bar:
        for done in range(0, 101, 5):
            bar.update(done, 100)
    assert len(err.getvalue().splitlines()) == 11


def test_find_log_by_name_short_name_and_newest_worker(tmp_path: Path):
    for i, name in enumerate(["queen-rbee", "rbee-hive", "local-w1-1", "local-w2-1"]):
        path = tmp_path / f"{name}.log"
        path.write_text(name)
        os.utime(path, (time.time() + i, time.time() + i))
    assert logfiles.find_log(tmp_path, "queen").name == "queen-rbee.log"
    assert logfiles.find_log(tmp_path, "rbee-hive").name == "rbee-hive.log"
    assert logfiles.find_log(tmp_path, "llm-worker-rbee").name == "local-w2-1.log"
    assert logfiles.find_log(tmp_path, "local-w1-1").name == "local-w1-1.log"
    with pytest.raises(KeeperError, match="no log for 'nope'"):
        logfiles.find_log(tmp_path, "nope")


def test_cluster_record_round_trip(tmp_path: Path):
    record = records.ClusterRecord(queen=records.ProcessRecord("queen-rbee", os.getpid(), "http://127.0.0.1:1"),
                                 hive=records.ProcessRecord("rbee-hive", 999_999_999, "http://127.0.0.1:2"),
                                 log_dir=str(tmp_path), keeper_pid=None)
    path = records.write_record(record, tmp_path / "run" / "cluster.json")
    back = records.read_record(path)
    assert back == record
    assert [p.name for p in back.processes()] == ["rbee-hive", "queen-rbee"]  # stop order
    assert not back.hive.running()
    records.remove_record(path)
    assert records.read_record(path) is None


def test_state_dir_follows_xdg():
    assert records.state_dir({"XDG_STATE_HOME": "/s"}) == Path("/s/rbee")
    assert records.state_dir({"RBEE_STATE_DIR": "/x", "XDG_STATE_HOME": "/s"}) == Path("/x")

"""--max-streams: the open-file limit the queen asks for at start follows it (two files a stream plus
headroom), and when the machine's hard limit is lower the warning names the flag."""

from __future__ import annotations

import logging
import resource

import pytest

from rbee.listener import OPEN_FILES_HEADROOM, WANTED_OPEN_FILES, raise_open_file_limit
from rbee.queen.__main__ import parse_args


def test_the_wanted_open_files_follow_max_streams():
    assert parse_args(["--max-streams", "5000"]).listen_limits().open_files == 2 * 5000 + OPEN_FILES_HEADROOM
    assert parse_args(["--max-streams", "2"]).listen_limits().open_files == WANTED_OPEN_FILES  # never below
    assert parse_args([]).max_streams == 4096


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bad_max_streams_is_refused(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--max-streams", value])
    assert exit_.value.code == 2 and "max-streams" in capsys.readouterr().err


def test_a_hard_limit_too_low_for_max_streams_is_said(caplog):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-file limit here to fall short of")
    try:
        with caplog.at_level(logging.WARNING, logger="rbee.listener"):
            assert raise_open_file_limit(hard + 1, "--max-streams 999999") == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"below the {hard + 1} --max-streams 999999 needs" in warning and "lower --max-streams" in warning

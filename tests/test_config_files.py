"""queen-rbee's and rbee-hive's config files: the [queen]/[hive] tables, layering, refusals, and the
printed examples (which must parse back into the defaults, so they cannot drift from the settings)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from rbee import config_files
from rbee.flags import parse_settings, settings_parser
from rbee.hive.settings import HiveSettings
from rbee.keeper import config as keeper_config
from rbee.keeper.cli import config_example, run
from rbee.queen.settings import QueenSettings

QUEEN = "http://127.0.0.1:1"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No config file but the ones a test writes: no /etc/rbee, an empty XDG config home."""
    monkeypatch.setattr(config_files, "SYSTEM_CONFIG", tmp_path / "etc" / "config.toml")
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def _parse(model, argv, env):
    parser = settings_parser(model, prog="x", description="x", env=env)
    return parse_settings(parser, model, argv, env)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(("program", "model", "argv"), [("queen", QueenSettings, []),
                                                      ("hive", HiveSettings, ["--queen-url", QUEEN])])
def test_the_example_parses_back_into_the_defaults(tmp_path, env, program, model, argv):
    text = config_example(program)
    table = tomllib.loads(text)[program]
    assert len(table) >= 10  # settings with a fixed default are written out, not commented
    example = _write(tmp_path / "example.toml", text)
    assert _parse(model, ["--config", str(example), *argv], env) == _parse(model, argv, env)


@pytest.mark.parametrize(("program", "model"), [("queen", QueenSettings), ("hive", HiveSettings)])
def test_the_example_names_every_setting_that_has_a_flag(program, model):
    text = config_example(program)
    named = set(re.findall(r"^(?:# )?([a-z_]+) = ", text, re.MULTILINE))
    parser = settings_parser(model, prog="x", description="x", env={})
    flags = {a.dest for a in parser._actions if a.option_strings and a.dest not in ("help", "version", "config_file")}
    assert named == flags


def test_the_keeper_example_parses_back_into_the_defaults():
    cfg = keeper_config.resolve([("example", tomllib.loads(config_example("keeper")))], {}, {})
    assert not cfg.warnings
    assert cfg.values == keeper_config.resolve([], {}, {}).values


def test_the_file_sets_what_no_flag_or_variable_does(tmp_path, env):
    _write(tmp_path / "xdg" / "rbee" / "config.toml",
           '[queen]\nqueue_size = 7\nheartbeat_timeout = 2.5\napi_keys = ["sk-from-the-file-0123456"]\n')
    s = _parse(QueenSettings, [], env)
    assert (s.queue_size, s.heartbeat_timeout, s.api_keys) == (7, 2.5, ["sk-from-the-file-0123456"])


def test_a_variable_beats_the_file_and_a_flag_beats_both(tmp_path, env):
    path = _write(tmp_path / "q.toml", "[queen]\nqueue_size = 7\nport = 9000\n")
    s = _parse(QueenSettings, ["--config", str(path), "--port", "9100"], {**env, "RBEE_QUEUE_SIZE": "8"})
    assert (s.queue_size, s.port) == (8, 9100)


def test_rbee_config_names_the_file_and_config_flag_takes_its_place(tmp_path, env):
    a = _write(tmp_path / "a.toml", "[queen]\nqueue_size = 1\n")
    b = _write(tmp_path / "b.toml", "[queen]\nqueue_size = 2\n")
    assert _parse(QueenSettings, [], {**env, "RBEE_CONFIG": str(a)}).queue_size == 1
    assert _parse(QueenSettings, ["--config", str(b)], {**env, "RBEE_CONFIG": str(a)}).queue_size == 2


def test_a_later_file_beats_an_earlier_one(tmp_path, env):
    _write(tmp_path / "etc" / "config.toml", "[hive]\nnode_name = \"etc\"\nmax_restarts = 5\n")
    _write(tmp_path / "xdg" / "rbee" / "config.toml", f"[hive]\nnode_name = \"user\"\nqueen_url = \"{QUEEN}\"\n")
    s = _parse(HiveSettings, [], env)
    assert (s.node_name, s.max_restarts, s.queen_url) == ("user", 5, QUEEN)


def test_keeper_keys_and_other_tables_are_left_alone(tmp_path, env):
    path = _write(tmp_path / "all.toml", 'queen_url = "http://q:1"\nmax_tokens = 5\n[hive]\nnode_name = "n"\n'
                                         "[queen]\nqueue_size = 3\n")
    assert _parse(QueenSettings, ["--config", str(path)], env).queue_size == 3
    cfg = keeper_config.resolve(config_files.load_files({}, path), {}, {})
    assert cfg.max_tokens == 5 and not cfg.warnings


def _refusal(capsys, model, argv, env) -> str:
    with pytest.raises(SystemExit) as exit_:
        _parse(model, argv, env)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_an_unknown_key_is_refused_naming_it_and_where(tmp_path, env, capsys):
    path = _write(tmp_path / "h.toml", f'[hive]\nqueen_url = "{QUEEN}"\nspawn_timout = 3\n')
    err = _refusal(capsys, HiveSettings, ["--config", str(path)], env)
    assert "unknown key 'spawn_timout'" in err and str(path) in err and "config example hive" in err


def test_a_setting_kept_off_the_command_line_is_unknown_in_a_file_too(tmp_path, env, capsys):
    path = _write(tmp_path / "q.toml", "[queen]\nmax_attempts = 5\n")
    assert "unknown key 'max_attempts'" in _refusal(capsys, QueenSettings, ["--config", str(path)], env)


def test_a_bad_value_is_refused_naming_the_file_and_key(tmp_path, env, capsys):
    path = _write(tmp_path / "q.toml", "[queen]\nport = 70000\n")
    err = _refusal(capsys, QueenSettings, ["--config", str(path)], env)
    assert f"config file {path}, [queen] port: must be <= 65535 (got 70000)" in err


def test_a_missing_named_file_and_broken_toml_are_refused(tmp_path, env, capsys):
    assert "does not exist" in _refusal(capsys, QueenSettings, ["--config", str(tmp_path / "nope.toml")], env)
    bad = _write(tmp_path / "bad.toml", "[queen\n")
    assert "not valid TOML" in _refusal(capsys, QueenSettings, [], {**env, "RBEE_CONFIG": str(bad)})
    flat = _write(tmp_path / "flat.toml", "queen = 3\n")
    assert "must be a table" in _refusal(capsys, QueenSettings, ["--config", str(flat)], env)


def test_a_required_setting_missing_everywhere_names_its_flag(env, capsys):
    err = _refusal(capsys, HiveSettings, [], env)
    assert "the following arguments are required: --queen-url (or queen_url in the [hive] table" in err


def test_rbee_keeper_config_example_prints_it(capsys):
    assert run(["config", "example", "hive"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# rbee-hive's settings") and "[hive]" in out and "spawn_timeout = 120.0" in out

"""rbee-keeper settings: layering (defaults < files < env < flags), provenance, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.keeper import config
from rbee.keeper.config import ConfigError, resolve


def test_defaults_when_nothing_is_set():
    cfg = resolve([], {}, {})
    assert cfg.queen_url == "http://127.0.0.1:8080"
    assert cfg.max_tokens == 100 and cfg.no_autostart is False and cfg.model is None
    assert set(cfg.sources.values()) == {"default"}


def test_later_files_override_earlier_ones_and_remember_where_from():
    files = [("/etc/rbee/config.toml", {"max_tokens": 10, "model": "a"}),
             ("/home/u/.config/rbee/config.toml", {"max_tokens": 20})]
    cfg = resolve(files, {}, {})
    assert cfg.max_tokens == 20 and cfg.sources["max_tokens"] == "/home/u/.config/rbee/config.toml"
    assert cfg.model == "a" and cfg.sources["model"] == "/etc/rbee/config.toml"


def test_env_beats_files_and_flags_beat_env():
    files = [("f.toml", {"queen_url": "http://file:1", "temperature": 0.1})]
    env = {"RBEE_QUEEN_URL": "http://env:2", "RBEE_TEMPERATURE": "0.5"}
    cfg = resolve(files, env, {"temperature": 1.5})
    assert (cfg.queen_url, cfg.sources["queen_url"]) == ("http://env:2", "env RBEE_QUEEN_URL")
    assert (cfg.temperature, cfg.sources["temperature"]) == (1.5, "flag --temperature")


def test_env_text_is_typed():
    cfg = resolve([], {"RBEE_MAX_TOKENS": "7", "RBEE_NO_AUTOSTART": "1"}, {})
    assert cfg.max_tokens == 7 and cfg.no_autostart is True
    assert resolve([], {"RBEE_NO_AUTOSTART": "0"}, {}).no_autostart is False


@pytest.mark.parametrize("files, env", [
    ([("f.toml", {"max_tokens": "many"})], {}),
    ([("f.toml", {"queen_url": 8080})], {}),
    ([("f.toml", {"no_autostart": "maybe"})], {}),
    ([], {"RBEE_SLOTS": "two"}),
])
def test_wrong_types_are_errors_naming_where(files, env):
    with pytest.raises(ConfigError) as err:
        resolve(files, env, {})
    assert ("f.toml" in str(err.value)) or ("RBEE_SLOTS" in str(err.value))


def test_unknown_keys_warn_but_do_not_fail():
    cfg = resolve([("f.toml", {"queen_ur": "x"})], {}, {})
    assert cfg.queen_url == "http://127.0.0.1:8080"
    assert "queen_ur" in cfg.warnings[0]


def test_paths_in_priority_order(tmp_path: Path):
    env = {"HOME": "/home/u", "RBEE_CONFIG": str(tmp_path / "x.toml")}
    assert config.config_paths(env) == [Path("/etc/rbee/config.toml"), Path("/home/u/.config/rbee/config.toml"),
                                        tmp_path / "x.toml"]
    assert config.config_paths({"XDG_CONFIG_HOME": "/xdg"})[1] == Path("/xdg/rbee/config.toml")


def test_load_reads_files_and_only_flags_typed_on_the_command_line(tmp_path: Path):
    (tmp_path / "rbee").mkdir()
    (tmp_path / "rbee" / "config.toml").write_text('model = "user-model"\nmax_tokens = 5\n')
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("max_tokens = 9\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path), "RBEE_CONFIG": str(explicit), "RBEE_TEMPERATURE": "0.2"}
    # argparse already put the env value into the namespace; it is not a flag unless typed.
    parsed = {"max_tokens": None, "temperature": 0.2, "model": "typed"}
    cfg = config.load(["infer", "--model=typed"], parsed, env)
    assert (cfg.model, cfg.sources["model"]) == ("typed", "flag --model")
    assert (cfg.max_tokens, cfg.sources["max_tokens"]) == (9, str(explicit))
    assert cfg.sources["temperature"] == "env RBEE_TEMPERATURE"


def test_missing_rbee_config_file_is_an_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load_files({"XDG_CONFIG_HOME": str(tmp_path), "RBEE_CONFIG": str(tmp_path / "nope.toml")})


def test_bad_toml_is_an_error(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("max_tokens = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load_files({"XDG_CONFIG_HOME": str(tmp_path), "RBEE_CONFIG": str(bad)})


def test_typed_on_command_line():
    assert config.typed_on_command_line("--model", ["infer", "--model", "x"])
    assert config.typed_on_command_line("--model", ["infer", "--model=x"])
    assert not config.typed_on_command_line("--model", ["infer", "--model-x", "y"])


def test_secrets_are_masked():
    assert config.shown("api_key", "supersecret42") == "****42"
    assert config.shown("api_key", None) == "(unset)"
    assert config.shown("no_autostart", True) == "true"

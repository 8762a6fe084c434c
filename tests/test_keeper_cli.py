"""rbee-keeper's argument wiring: parsing, usage errors (exit 2), switches from the environment."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from rbee.keeper import cli
from rbee.keeper.failures import EXIT_USAGE, KeeperError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path: Path):
    for var in ("RBEE_QUEEN_URL", "RBEE_MODEL", "RBEE_MAX_TOKENS", "RBEE_NO_AUTOSTART", "RBEE_CONFIG", "RBEE_JSON",
                "RBEE_API_KEY", "RBEE_SLOTS", "RBEE_PROMPT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("RBEE_STATE_DIR", str(tmp_path / "state"))


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


def test_infer_flags():
    args = parse("infer", "--prompt", "hi", "--max-tokens", "5", "--temperature", "0", "--seed", "3", "--json",
                 "--system", "be brief", "--keep")
    assert (args.prompt, args.max_tokens, args.temperature, args.seed) == ("hi", 5, 0.0, 3)
    assert args.json and args.keep and args.system == "be brief"
    assert args.handler is cli._infer


@pytest.mark.parametrize("argv", [
    ["infer"],  # --prompt is required
    ["infer", "--prompt", "x", "--max-tokens", "many"],
    ["infer", "--prompt", "x", "--max-tok", "5"],  # no abbreviations: they would hide typos
    ["workers"],
    ["workers", "shutdown"],
    ["models", "download"],
    ["bogus"],
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.run(argv)
    assert exit_.value.code == EXIT_USAGE


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.run([]) == EXIT_USAGE
    assert "infer" in capsys.readouterr().err


def test_subcommands_route_to_handlers():
    assert parse("workers", "shutdown", "--id", "w1").worker_id == "w1"
    assert parse("models", "download", "hf:a/b").ref == "hf:a/b"
    assert parse("logs", "--follow", "queen-rbee").program == "queen-rbee"
    assert parse("up", "--slots", "2", "--queen-port", "1234").queen_port == 1234
    assert parse("hives", "list", "--json").handler is cli._hives_list


def test_switch_from_environment_is_a_bool(monkeypatch):
    monkeypatch.setenv("RBEE_JSON", "0")
    args = parse("workers", "list")
    cli.normalise_switches(args)
    assert args.json is False
    monkeypatch.setenv("RBEE_JSON", "yes")
    args = parse("workers", "list")
    cli.normalise_switches(args)
    assert args.json is True


def test_bad_environment_value_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("RBEE_MAX_TOKENS", "lots")
    assert cli.run(["infer", "--prompt", "x"]) == EXIT_USAGE
    assert "RBEE_" in capsys.readouterr().err


def test_prompt_from_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("from a pipe\n"))
    assert cli._read_prompt("-") == "from a pipe\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    with pytest.raises(KeeperError) as err:
        cli._read_prompt("-")
    assert err.value.exit_code == EXIT_USAGE


def test_no_autostart_without_a_queen_is_one_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.setenv("RBEE_NO_AUTOSTART", "1")
    code = cli.run(["infer", "--prompt", "hi", "--queen-url", "http://127.0.0.1:9"])  # discard port: refused
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "rbee-keeper up" in err[0] and "127.0.0.1:9" in err[0]


def test_config_show_names_sources(monkeypatch, capsys, tmp_path: Path):
    file = tmp_path / "c.toml"
    file.write_text("max_tokens = 42\n")
    monkeypatch.setenv("RBEE_CONFIG", str(file))
    monkeypatch.setenv("RBEE_MODEL", "env-model")
    assert cli.run(["config", "show"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["max_tokens"][1:] == ["42", str(file)]
    assert lines["model"][1:] == ["env-model", "env", "RBEE_MODEL"]
    assert lines["queen_url"][2] == "default"

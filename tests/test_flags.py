"""Flags and RBEE_* variables derived from settings models (rbee.flags), and the three servers' command lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from rbee.flags import NOT_A_FLAG, Flag, parse_settings, settings_parser
from rbee.hive.settings import HiveSettings
from rbee.queen.__main__ import parse_args as parse_queen_args
from rbee.queen.auth import key_ring
from rbee.worker.settings import WorkerSettings


class Demo(BaseModel):
    url: str = Field(description="Where to go.")
    port: int = Field(8080, ge=0, le=65535, description="Port.")
    ratio: float = Field(0.5, gt=0, description="A ratio.")
    name: str | None = None
    keys: Annotated[list[str], Flag("--key", metavar="KEY")] = Field(default_factory=list, description="Keys.")
    verbose: bool = Field(False, description="Say more.")
    mode: Literal["fast", "slow"] = Field("fast", description="How.")
    secret: Annotated[int, NOT_A_FLAG] = 3


def parse(argv: list[str], env: dict[str, str] | None = None, model: type[BaseModel] = Demo) -> BaseModel:
    env = {} if env is None else env
    return parse_settings(settings_parser(model, prog="demo", description="d", env=env), model, argv, env)


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str] | None = None,
                model: type[BaseModel] = Demo) -> str:
    with pytest.raises(SystemExit) as exit_:
        parse(argv, env, model)
    assert exit_.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------- the builder


def test_defaults_come_from_the_model() -> None:
    got = parse(["--url", "http://x"])
    assert got == Demo(url="http://x")


def test_a_variable_sets_a_field_and_a_flag_beats_it() -> None:
    env = {"RBEE_URL": "http://env", "RBEE_PORT": "9000", "RBEE_RATIO": "2.5"}
    assert parse([], env) == Demo(url="http://env", port=9000, ratio=2.5)
    assert parse(["--port", "9001"], env).port == 9001  # type: ignore[attr-defined]


def test_an_empty_variable_counts_as_unset() -> None:
    assert parse(["--url", "u"], {"RBEE_NAME": "", "RBEE_PORT": ""}) == Demo(url="u")


def test_a_required_field_is_a_required_flag_unless_its_variable_is_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert "required: --url" in usage_error(capsys, [])
    assert parse([], {"RBEE_URL": "u"}).url == "u"  # type: ignore[attr-defined]


def test_a_list_is_a_repeatable_flag_and_a_comma_separated_variable() -> None:
    assert parse(["--url", "u", "--key", "a", "--key", "b"]).keys == ["a", "b"]  # type: ignore[attr-defined]
    assert parse(["--url", "u"], {"RBEE_KEY": "a, b,,c"}).keys == ["a", "b", "c"]  # type: ignore[attr-defined]
    assert parse(["--url", "u", "--key", "z"], {"RBEE_KEY": "a"}).keys == ["z"]  # type: ignore[attr-defined]


def test_a_bool_is_a_switch_and_its_variable_reads_words(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(["--url", "u", "--verbose"]).verbose is True  # type: ignore[attr-defined]
    assert parse(["--url", "u"], {"RBEE_VERBOSE": "yes"}).verbose is True  # type: ignore[attr-defined]
    assert parse(["--url", "u"], {"RBEE_VERBOSE": "0"}).verbose is False  # type: ignore[attr-defined]
    err = usage_error(capsys, ["--url", "u"], {"RBEE_VERBOSE": "maybe"})
    assert "argument --verbose (from RBEE_VERBOSE): must be true or false" in err
    assert "--verbose" in usage_error(capsys, ["--url", "u", "--verbose=1"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--port", "70000"], "argument --port: must be <= 65535 (got 70000)"),
    (["--port", "-1"], "argument --port: must be >= 0 (got -1)"),
    (["--port", "abc"], "argument --port: must be a whole number (got abc)"),
    (["--ratio", "0"], "argument --ratio: must be > 0.0 (got 0)"),
    (["--ratio", "x"], "argument --ratio: must be a number (got x)"),
])
def test_a_value_out_of_bounds_is_a_usage_error_naming_the_flag(
        capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    err = usage_error(capsys, ["--url", "u", *argv])
    assert f"demo: error: {message}" in err
    assert "Traceback" not in err


def test_a_bad_variable_is_a_usage_error_naming_the_flag_and_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, ["--url", "u"], {"RBEE_PORT": "70000"})
    assert "argument --port (from RBEE_PORT): must be <= 65535 (got 70000)" in err


def test_a_literal_gives_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(["--url", "u", "--mode", "slow"]).mode == "slow"  # type: ignore[attr-defined]
    assert "invalid choice: 'medium'" in usage_error(capsys, ["--url", "u", "--mode", "medium"])
    err = usage_error(capsys, ["--url", "u"], {"RBEE_MODE": "medium"})
    assert "argument --mode (from RBEE_MODE): must be one of 'fast' or 'slow' (got medium)" in err


def test_a_field_marked_not_a_flag_stays_off_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(["--url", "u"], {"RBEE_SECRET": "9"}).secret == 3  # type: ignore[attr-defined]
    assert "unrecognized arguments: --secret" in usage_error(capsys, ["--url", "u", "--secret", "9"])


def test_help_names_each_variable_and_shows_defaults() -> None:
    text = settings_parser(Demo, prog="demo", description="d", env={}).format_help()
    for var in ("RBEE_URL", "RBEE_PORT", "RBEE_KEY", "RBEE_VERBOSE", "RBEE_MODE"):
        assert f"env {var}" in text
    assert "(default: 8080)" in text
    assert "--key KEY" in text
    assert "secret" not in text.lower()


# ---------------------------------------------------------------- the servers' own settings


def test_hive_derives_its_folders_and_reads_a_port_range(tmp_path: Path) -> None:
    hive = parse(["--queen-url", "http://q:8080/", "--models-dir", str(tmp_path / "m"), "--worker-ports", "8081-8199"],
                 model=HiveSettings)
    assert isinstance(hive, HiveSettings)
    assert hive.queen_url == "http://q:8080"
    assert hive.log_dir == tmp_path / "logs"
    assert hive.worker_ports == (8081, 8199)
    assert parse(["--queen-url", "q", "--worker-ports", "8081"], model=HiveSettings).worker_ports == (8081, 8081)  # type: ignore[attr-defined]
    assert parse(["--queen-url", "q", "--log-dir", str(tmp_path)], model=HiveSettings).log_dir == tmp_path  # type: ignore[attr-defined]


def test_hive_keeps_its_models_under_the_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    hive = parse(["--queen-url", "q"], model=HiveSettings)
    assert hive.models_dir == tmp_path / "rbee" / "models"  # type: ignore[attr-defined]
    assert hive.log_dir == tmp_path / "rbee" / "logs"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("ports", "message"), [
    ("abc", "takes FIRST-LAST"), ("9-1", "needs 1 <= FIRST <= LAST <= 65535"), ("0-10", "needs 1 <= FIRST"),
])
def test_hive_refuses_a_bad_port_range(capsys: pytest.CaptureFixture[str], ports: str, message: str) -> None:
    err = usage_error(capsys, ["--queen-url", "q", "--worker-ports", ports], model=HiveSettings)
    assert f"argument --worker-ports: {message}" in err


def test_worker_derives_its_id_and_gpu_layers() -> None:
    cpu = parse(["--port", "8123"], model=WorkerSettings)
    assert isinstance(cpu, WorkerSettings)
    assert cpu.worker_id.endswith("-8123") and cpu.n_gpu_layers == 0
    gpu = parse(["--port", "8123", "--backend", "cuda", "--worker-id", "w1"], model=WorkerSettings)
    assert (gpu.worker_id, gpu.n_gpu_layers) == ("w1", 999)  # type: ignore[attr-defined]
    assert parse(["--backend", "cuda", "--n-gpu-layers", "4"], model=WorkerSettings).n_gpu_layers == 4  # type: ignore[attr-defined]


def test_queen_adds_the_keys_of_its_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("RBEE_")]:
        monkeypatch.delenv(var)
    keys = tmp_path / "keys"
    keys.write_text("key-two-0123456789\n\n  key-three-0123456789  \n")
    keys.chmod(0o600)
    settings = parse_queen_args(["--api-key", "key-one-0123456789", "--api-key-file", str(keys), "--log-level",
                                 "warning"])
    ring = key_ring(settings)
    assert ring.keys("api") == ("key-one-0123456789", "key-two-0123456789", "key-three-0123456789")
    assert settings.log_level == "WARNING"


# ---------------------------------------------------------------- the real programs


def _run(program: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
    script = Path(sys.executable).parent / program
    return subprocess.run([str(script), *argv], check=False, capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("program", "argv", "env", "message"), [
    ("queen-rbee", ["--port", "70000"], {}, "argument --port: must be <= 65535 (got 70000)"),
    ("queen-rbee", ["--queue-size", "-1"], {}, "argument --queue-size: must be >= 0 (got -1)"),
    ("queen-rbee", [], {"RBEE_HEARTBEAT_TIMEOUT": "soon"}, "argument --heartbeat-timeout (from RBEE_HEARTBEAT_TIMEOUT)"),
    ("rbee-hive", ["--port", "70000", "--queen-url", "http://127.0.0.1:1"], {}, "argument --port: must be <= 65535"),
    ("rbee-hive", [], {}, "the following arguments are required: --queen-url"),
    ("llm-worker-rbee", ["--slots", "0", "--port", "1"], {}, "argument --slots: must be >= 1 (got 0)"),
    ("llm-worker-rbee", ["--slots", "1"], {"RBEE_PORT": "x"}, "argument --port (from RBEE_PORT): must be a whole number"),
])
def test_a_program_given_a_bad_value_exits_2_naming_the_flag(
        program: str, argv: list[str], env: dict[str, str], message: str) -> None:
    done = _run(program, *argv, env=env)
    assert done.returncode == 2, done.stderr
    assert f"{program}: error: {message}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("program", ["queen-rbee", "rbee-hive", "llm-worker-rbee"])
def test_a_program_lists_its_variables_in_its_help(program: str) -> None:
    done = _run(program, "--help")
    assert done.returncode == 0, done.stderr
    assert "RBEE_PORT" in done.stdout and "RBEE_LOG_LEVEL" in done.stdout

"""rbee-keeper settings: built-in defaults < TOML files < RBEE_* environment < command-line flags.

Files, lowest priority first: ``/etc/rbee/config.toml``, ``~/.config/rbee/config.toml`` (or
``$XDG_CONFIG_HOME``), then the file ``RBEE_CONFIG`` names (rbee.config_files finds and reads them;
the keeper's keys are their top level, the ``[queen]`` and ``[hive]`` tables are the servers'). Each value remembers where it came
from, so ``rbee-keeper config show`` can say why it is what it is. Pure logic: no I/O beyond
reading the files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rbee.config_files import (  # noqa: F401 (the files' functions, also reached as rbee.keeper.config.*)
    SECTIONS,
    SYSTEM_CONFIG,
    ConfigError,
    config_paths,
    load_files,
    read_file,
)
from rbee.flags import env_name, example_line

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True)
class Option:
    key: str  # TOML key and argparse dest
    kind: type
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return env_name(self.flag)


OPTIONS: dict[str, Option] = {o.key: o for o in (
    Option("queen_url", str, "http://127.0.0.1:8080", "queen-rbee to talk to"),
    Option("hive_url", str, "http://127.0.0.1:9200", "rbee-hive to talk to (models)"),
    Option("api_key", str, None, "bearer key for a queen started with --api-key"),
    Option("cluster_key", str, None, "cluster key for a hive started with --cluster-key (models download)"),
    Option("model", str, None, "model ref (infer: any served model when unset; up: the default model)"),
    Option("max_tokens", int, 100, "most tokens to generate"),
    Option("temperature", float, 0.7, "sampling temperature, 0-2"),
    Option("queen_port", int, 8080, "port for the queen that `up` starts"),
    Option("hive_port", int, 9200, "port for the hive that `up` starts"),
    Option("slots", int, 1, "concurrent requests the local worker serves"),
    Option("backend", str, "cpu", "compute backend of the local worker: cpu, or a GPU one the hive lists (cuda…)"),
    Option("no_autostart", bool, False, "never start a local cluster when no queen answers"),
)}

SECRET_KEYS = frozenset({"api_key", "cluster_key"})


@dataclass
class Resolved:
    """Merged settings: ``values[key]`` and ``sources[key]`` ("default", a file path, "env VAR", "flag --x")."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["values"][key]
        except KeyError:
            raise AttributeError(key) from None


def parse_bool(raw: str, where: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{where}: expected true/false (or 1/0), got {raw!r}.")


def coerce(option: Option, value: Any, where: str) -> Any:
    """``value`` as the option's type; strings (from the environment) are parsed."""
    kind = option.kind
    try:
        if kind is bool:
            return value if isinstance(value, bool) else parse_bool(str(value), where)
        if kind is int and not isinstance(value, bool):
            return int(value)
        if kind is float and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    except ValueError:
        pass
    raise ConfigError(f"{where}: {option.key} must be {kind.__name__}, got {value!r}.")


def resolve(
    files: Sequence[tuple[str, Mapping[str, Any]]],
    env: Mapping[str, str],
    flags: Mapping[str, Any],
) -> Resolved:
    """Merge the layers. ``flags`` holds only what was typed on the command line (already typed)."""
    out = Resolved()
    for key, option in OPTIONS.items():
        out.values[key], out.sources[key] = option.default, "default"
    for path, table in files:
        for key, value in table.items():
            if key in SECTIONS:
                continue  # queen-rbee's and rbee-hive's settings
            option = OPTIONS.get(key)
            if option is None:
                out.warnings.append(f"{path}: unknown key {key!r} ignored (known: {', '.join(OPTIONS)}).")
                continue
            out.values[key], out.sources[key] = coerce(option, value, path), path
    for key, option in OPTIONS.items():
        if option.env in env:
            out.values[key] = coerce(option, env[option.env], f"environment {option.env}")
            out.sources[key] = f"env {option.env}"
    for key, value in flags.items():
        if key in OPTIONS and value is not None:
            out.values[key], out.sources[key] = value, f"flag {OPTIONS[key].flag}"
    return out


def typed_on_command_line(flag: str, argv: Sequence[str]) -> bool:
    """Whether ``flag`` was given in ``argv`` (``--x v`` or ``--x=v``), as opposed to read from the env."""
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


def load(argv: Sequence[str], parsed: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Resolved:
    """Everything together: read files, then apply env and the flags that ``argv`` really contains."""
    env = os.environ if env is None else env
    flags = {key: parsed[key] for key, option in OPTIONS.items()
             if key in parsed and typed_on_command_line(option.flag, argv)}
    return resolve(load_files(env), env, flags)


def shown(key: str, value: Any) -> str:
    """A value as ``config show`` prints it (secrets masked)."""
    if value is None:
        return "(unset)"
    if key in SECRET_KEYS:
        return "****" + str(value)[-2:] if len(str(value)) > 6 else "****"
    return str(value).lower() if isinstance(value, bool) else str(value)



def example() -> str:
    """A commented config file with every rbee-keeper setting and its default (top-level keys)."""
    out = ["# rbee-keeper's settings: the top level of /etc/rbee/config.toml, ~/.config/rbee/config.toml or",
           "# $RBEE_CONFIG. A flag or an RBEE_* variable beats the file. Commented out: settings with no default."]
    for option in OPTIONS.values():
        shown = None if option.default is not None else f'"{option.key.upper()}"  (default: unset)'
        out += ["", *example_line(option.key, f"{option.help}. ({option.flag})",
                                  option.default, shown)]
    return "\n".join(out) + "\n"

"""rbee's TOML config files, found and read the same way by every program.

Files, lowest priority first: ``/etc/rbee/config.toml``, ``~/.config/rbee/config.toml`` (or under
``$XDG_CONFIG_HOME``), then the file ``RBEE_CONFIG`` names — or, for queen-rbee and rbee-hive, the one
``--config`` names instead. One file can hold every program's settings: rbee-keeper's at the top level,
queen-rbee's in a ``[queen]`` table and rbee-hive's in ``[hive]`` (``rbee-keeper config example
queen|hive|keeper`` prints each, commented). A file asked for by name that is missing is an error;
the others are optional. Pure logic: no I/O beyond reading the files.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SYSTEM_CONFIG = Path("/etc/rbee/config.toml")
SECTIONS = ("queen", "hive")  # the servers' tables; rbee-keeper's keys are the top level


class ConfigError(ValueError):
    """A config file or variable that cannot be used; the message names it and what to fix."""


def config_paths(env: Mapping[str, str], explicit: Path | None = None) -> list[Path]:
    """Candidate files, lowest priority first (missing ones are skipped when read). ``explicit`` (a
    ``--config`` flag) takes the place of RBEE_CONFIG."""
    user_base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", str(Path.home()))) / ".config")
    paths = [SYSTEM_CONFIG, Path(user_base) / "rbee" / "config.toml"]
    named = explicit or (Path(env["RBEE_CONFIG"]) if env.get("RBEE_CONFIG") else None)
    if named is not None:
        paths.append(named.expanduser())
    return paths


def read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML ({exc}). Fix it or point RBEE_CONFIG elsewhere.") \
            from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror}). Fix its permissions.") from None


def load_files(env: Mapping[str, str], explicit: Path | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(path, table)`` for each config file that exists, lowest priority first."""
    found = []
    named = config_paths(env, explicit)[2:]
    for path in config_paths(env, explicit):
        if path.is_file():
            found.append((str(path), read_file(path)))
        elif path in named:
            how = "--config" if explicit else "RBEE_CONFIG"
            raise ConfigError(f"{how} names {path}, which does not exist. Create it (`rbee-keeper config example` "
                              f"prints one) or {'drop --config' if explicit else 'unset RBEE_CONFIG'}.")
    return found


def section_values(files: Sequence[tuple[str, Mapping[str, Any]]], section: str) -> dict[str, tuple[Any, str]]:
    """The ``[section]`` tables of ``files`` merged, a later file winning: ``key -> (value, where)``."""
    merged: dict[str, tuple[Any, str]] = {}
    for path, table in files:
        part = table.get(section)
        if part is None:
            continue
        if not isinstance(part, dict):
            raise ConfigError(f"config file {path}: '{section}' must be a table ([{section}] and its settings "
                              "below it). Fix the file.")
        for key, value in part.items():
            merged[key] = (value, f"config file {path}, [{section}] {key}")
    return merged

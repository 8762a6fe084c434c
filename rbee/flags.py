"""Command-line flags that also read ``RBEE_*`` environment variables (``--queen-url`` ⇔ ``RBEE_QUEEN_URL``).

A server's flags are derived from its pydantic settings model, the one place each setting is
declared (type, default, bounds, description), as llama-cpp-python's server derives its CLI from
its ``Settings``: field ``queue_size`` is ``--queue-size`` and ``RBEE_QUEUE_SIZE``; a ``Literal``
gives choices, a ``bool`` a switch, a ``list`` a repeatable flag whose variable is comma-separated.
``Annotated[..., Flag("--api-key")]`` names a flag that differs from its field, ``NOT_A_FLAG`` keeps
a field off the command line. A flag beats its variable, which beats the field's default; an empty
variable counts as unset. Each value is checked against its own field as it is read, so a bad one
is a usage error naming its flag (exit status 2), never a traceback.

A model with a ``CONFIG_SECTION`` (queen-rbee's ``queen``, rbee-hive's ``hive``) also reads that table
of the TOML config files (rbee.config_files; ``--config FILE`` names one): a variable beats the file,
which beats the default; a key the model lacks is a usage error naming it. ``config_example`` prints
such a table, every setting with its default, from the model itself.

``add_flag`` is the hand-written form, for rbee-keeper, whose settings layer config files as well.
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from rbee import __version__
from rbee.config_files import ConfigError, load_files, section_values

M = TypeVar("M", bound=BaseModel)

# pydantic's error types, said the way a usage line says them; the others keep pydantic's wording.
_REASONS = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false (1/0, yes/no, on/off)",
    "literal_error": "must be one of {expected}",
    "missing": "is required",
}


def env_name(flag: str) -> str:
    return "RBEE_" + flag.lstrip("-").replace("-", "_").upper()


def add_flag(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """Add ``flag`` whose default comes from its RBEE_* variable when set (ValueError if it can't be read)."""
    var = env_name(flag)
    raw = os.environ.get(var)
    if raw is not None:
        if kwargs.get("action") == "append":
            kwargs["default"] = [v for v in raw.split(",") if v]
        else:
            conv = kwargs.get("type", str)
            kwargs["default"] = conv(raw)
            kwargs.pop("required", None)
    help_text = kwargs.get("help", "")
    kwargs["help"] = f"{help_text} [env {var}]".strip()
    parser.add_argument(flag, **kwargs)


# ---------------------------------------------------------------- flags derived from a settings model


@dataclass(frozen=True)
class Flag:
    """How a settings field shows on the command line: ``api_keys: Annotated[list[str], Flag("--api-key")]``."""

    name: str | None = None  # default: "--" + the field name with dashes
    metavar: str | None = None  # default: the flag's name in capitals
    on_command_line: bool = True


NOT_A_FLAG = Flag(on_command_line=False)  # a field set only in code (tests, derived values)


@dataclass(frozen=True)
class _Option:
    """One field of a settings model as a flag and a variable."""

    field: str
    info: FieldInfo
    flag: Flag

    @property
    def name(self) -> str:
        return self.flag.name or "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return env_name(self.name)

    @property
    def kind(self) -> Any:
        """The field's type without ``None`` and ``Annotated`` around it."""
        kind = self.info.annotation
        while True:
            if get_origin(kind) is Annotated:
                kind = get_args(kind)[0]
            elif get_origin(kind) in (Union, types.UnionType):
                rest = [a for a in get_args(kind) if a is not type(None)]
                if len(rest) != 1:
                    return kind
                kind = rest[0]
            else:
                return kind

    @property
    def is_list(self) -> bool:
        return get_origin(self.kind) is list

    def raw_from(self, env: Mapping[str, str]) -> Any:
        text = env.get(self.env)
        if not text:
            return None
        return [v.strip() for v in text.split(",") if v.strip()] if self.is_list else text

    def check(self, raw: Any) -> None:
        """Raises ValidationError when ``raw`` is not a valid value of this field on its own."""
        metadata = [m for m in self.info.metadata if not isinstance(m, Flag)]
        kind = Annotated[(self.info.annotation, *metadata)] if metadata else self.info.annotation
        TypeAdapter(kind).validate_python(raw)

    def argument(self, env: Mapping[str, str]) -> dict[str, Any]:
        """``add_argument`` keywords. SUPPRESS: a flag not given leaves no attribute, so the variable
        and then the field's default apply."""
        kwargs: dict[str, Any] = {"dest": self.field, "default": argparse.SUPPRESS, "help": self.help()}
        if self.kind is bool:  # a switch; one that is on by default also gets its --no-x
            kwargs["action"] = argparse.BooleanOptionalAction if self.info.default is True else "store_true"
            return kwargs
        if get_origin(self.kind) is Literal:
            kwargs["choices"] = [str(v) for v in get_args(self.kind)]
        else:
            kwargs["metavar"] = self.flag.metavar or self.name.lstrip("-").replace("-", "_").upper()
        if self.is_list:
            kwargs["action"] = "append"
        if self.info.is_required() and not self.raw_from(env):
            kwargs["required"] = True
        return kwargs

    def help(self) -> str:
        text = (self.info.description or "").rstrip(".")
        default = self._shown_default()
        if default is not None:
            text += f" (default: {default})"
        return f"{text} [env {self.env}]".strip().replace("%", "%%")

    def _shown_default(self) -> Any:
        info = self.info
        if info.default_factory is not None:
            if info.default_factory_takes_validated_data:
                return None  # derived from other fields; the description says how
            default = info.default_factory()  # type: ignore[call-arg]
        else:
            default = info.default
        if default is PydanticUndefined or default is None or default is False or default in ([], ()):
            return None
        return default


def _options(model: type[BaseModel]) -> Iterator[_Option]:
    for name, info in model.model_fields.items():
        flag = next((m for m in info.metadata if isinstance(m, Flag)), Flag())
        if flag.on_command_line:
            yield _Option(name, info, flag)


def _reason(err: ValidationError) -> str:
    """The first error of ``err`` as the end of a usage line: ``must be <= 65535 (got 70000)``."""
    first = err.errors()[0]
    ctx = first.get("ctx") or {}
    if first["type"] in _REASONS:
        reason = _REASONS[first["type"]].format(**ctx)
    elif first["type"] == "value_error":
        reason = str(ctx.get("error", first["msg"]))
    else:
        reason = first["msg"][:1].lower() + first["msg"][1:]
    if first["type"] != "missing":
        reason += f" (got {first['input']})"
    return reason


def settings_parser(model: type[BaseModel], *, prog: str, description: str,
                    env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """A parser with one flag per field of ``model``, and ``--version``; a required field is a required flag
    unless its variable is set."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    section = _section(model)
    if section:
        parser.add_argument("--config", dest=CONFIG_DEST, type=Path, default=argparse.SUPPRESS, metavar="FILE",
                            help=f"TOML config file whose [{section}] table holds settings (default: "
                                 "/etc/rbee/config.toml, then ~/.config/rbee/config.toml) [env RBEE_CONFIG]")
    for option in _options(model):
        kwargs = option.argument(env)
        if section:
            kwargs.pop("required", None)  # a config file may hold it: the model says when it is missing
        parser.add_argument(option.name, **kwargs)
    return parser


CONFIG_DEST = "config_file"


def _section(model: type[BaseModel]) -> str | None:
    return getattr(model, "CONFIG_SECTION", None)


def _file_values(parser: argparse.ArgumentParser, model: type[BaseModel], args: argparse.Namespace,
                 env: Mapping[str, str], known: Mapping[str, _Option]) -> dict[str, tuple[Any, str]]:
    """The model's table of the config files: ``field -> (value, where)``; a usage error for a bad file or key."""
    section = _section(model)
    if not section:
        return {}
    try:
        values = section_values(load_files(env, getattr(args, CONFIG_DEST, None)), section)
    except ConfigError as err:
        parser.error(str(err))
    for key, (_, where) in values.items():
        if key not in known:
            parser.error(f"{where}: unknown key '{key}'. Remove it or fix its spelling; "
                         f"`rbee-keeper config example {section}` prints every setting it takes.")
    return values


def parse_settings(parser: argparse.ArgumentParser, model: type[M], argv: list[str] | None = None,
                   env: Mapping[str, str] | None = None) -> M:
    """``model`` from the flags in ``argv``, then the RBEE_* variables in ``env``, then its defaults.
    A bad value exits through ``parser.error`` (status 2), naming the flag and, when it came from
    there, the variable."""
    env = os.environ if env is None else env
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    options = {option.field: option for option in _options(model)}
    in_files = _file_values(parser, model, args, env, options)
    for option in options.values():
        if hasattr(args, option.field):
            raw, source = getattr(args, option.field), f"argument {option.name}"
        elif (raw := option.raw_from(env)) is not None:
            source = f"argument {option.name} (from {option.env})"
        elif option.field in in_files:
            raw, source = in_files[option.field]
        else:
            continue
        try:
            option.check(raw)
        except ValidationError as err:
            parser.error(f"{source}: {_reason(err)}")
        values[option.field] = raw
    try:
        return model.model_validate(values)
    except ValidationError as err:  # what only the whole model can check (a field against another)
        loc = err.errors()[0]["loc"]
        option = options.get(str(loc[0])) if loc else None
        if option and err.errors()[0]["type"] == "missing":  # argparse's words, and the file's way too
            parser.error(f"the following arguments are required: {option.name} (or {option.field} in the "
                         f"[{_section(model)}] table of a config file)")
        parser.error(f"argument {option.name}: {_reason(err)}" if option else err.errors()[0]["msg"])


# ---------------------------------------------------------------- a commented example config file


def _toml(value: Any) -> str:
    """``value`` as a TOML value (the types settings have: text, numbers, switches, paths, lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def example_line(key: str, description: str, default: Any, shown: str | None = None) -> list[str]:
    # description: what the setting does, and its flag
    """One setting of an example file: its description as a comment, then ``key = default``; commented out
    (``# key = …``) when it has no fixed default, with ``shown`` as what to write there."""
    lines = ["# " + line for line in textwrap.wrap(description, 96, break_on_hyphens=False)]
    if shown is None:
        lines.append(f"{key} = {_toml(default)}")
    else:
        lines.append(f"# {key} = {shown}")
    return lines


def config_example(model: type[BaseModel], program: str) -> str:
    """A commented ``[section]`` table for ``model`` with every setting it takes from a file and its default."""
    section = _section(model)
    assert section, f"{model.__name__} reads no config file"
    out = [f"# {program}'s settings: the [{section}] table of /etc/rbee/config.toml, ~/.config/rbee/config.toml,",
           "# $RBEE_CONFIG or --config FILE. A flag or an RBEE_* variable beats the file; an unknown key stops",
           f"# {program} at start. Commented out: settings with no fixed default.",
           f"[{section}]"]
    for option in _options(model):
        info = option.info
        fixed = info.default_factory is None and info.default not in (PydanticUndefined, None)
        if info.default_factory is list:
            fixed = True
        shown = None
        if not fixed:
            derived = option._shown_default()
            if info.is_required():
                hint = "(required)"
            elif info.default_factory_takes_validated_data:
                hint = "(default: derived from other settings)"
            elif derived is not None:
                hint = f"(default: {derived})"
            else:
                hint = "(default: unset)"
            shown = f"{_toml(option.flag.metavar or option.name.lstrip('-').replace('-', '_').upper())}  {hint}"
        default = [] if info.default_factory is list else info.default
        what = f"{(info.description or option.field).rstrip('.')}. ({option.name})"
        out += ["", *example_line(option.field, what, default, shown)]
    return "\n".join(out) + "\n"

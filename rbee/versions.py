"""Which rbee versions work together: the same major.minor. The one place that rule is written.

The queen refuses a hive or a worker of another line (409 ``VERSION_MISMATCH``, both versions
named); a peer that does not say its version (an older one) is let in, as before versions were sent.
"""

from __future__ import annotations

import re

from rbee import __version__
from rbee.errors import ErrorCode, RbeeError

_MAJOR_MINOR = re.compile(r"(\d+)\.(\d+)")


def major_minor(version: str) -> tuple[int, int] | None:
    """``(0, 1)`` of ``"0.1.3"`` (or of ``"rbee-hive 0.1.3"``); None when there is no version in it."""
    match = _MAJOR_MINOR.search(version)
    return (int(match[1]), int(match[2])) if match else None


def compatible(a: str, b: str) -> bool:
    line = major_minor(a)
    return line is not None and line == major_minor(b)


def from_version_output(text: str, program: str = "rbee-hive") -> str | None:
    """The version in what ``rbee-hive --version`` printed (``rbee-hive 0.1.0``); None for anything else
    (a traceback of a broken install, say)."""
    match = re.search(rf"^{re.escape(program)} (\d+\.\d+\S*)\s*$", text, re.MULTILINE)
    return match[1] if match else None


def upgrade_hint(name: str | None) -> str:
    if name:
        return f"Upgrade it with `rbee-keeper hives install {name}` (installs rbee {__version__} there)"
    return f"Install rbee {__version__} there (`pip install rbee=={__version__}`), or run the queen of its version"


def check_peer(kind: str, ident: dict[str, str], version: str | None, name: str | None = None) -> None:
    """Raise 409 VERSION_MISMATCH unless ``version`` (None: not said) works with this queen's."""
    if version is None or compatible(version, __version__):
        return
    raise RbeeError(
        ErrorCode.VERSION_MISMATCH,
        f"This {kind} runs rbee {version} and the queen runs rbee {__version__}: they differ in major.minor, "
        f"so the queen refuses it. {upgrade_hint(name)}, then start it again.",
        {**ident, "peer_version": version, "queen_version": __version__},
    )

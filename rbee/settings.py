"""Command-line flags that also read ``RBEE_*`` environment variables (``--queen-url`` ⇔ ``RBEE_QUEEN_URL``)."""

from __future__ import annotations

import argparse
import os
from typing import Any


def env_name(flag: str) -> str:
    return "RBEE_" + flag.lstrip("-").replace("-", "_").upper()


def add_flag(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """Add ``flag`` whose default comes from its RBEE_* variable when set."""
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

"""The settings every rbee server takes, whatever it serves: its address, event loop and log level."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

EventLoop = Literal["auto", "uvloop", "asyncio"]  # what rbee.web.new_event_loop makes


def _log_level(name: str) -> str:
    level = name.upper()
    if level not in logging.getLevelNamesMapping():
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


class ServerSettings(BaseModel):
    """Each server's own settings model extends this one (its port too is its own: defaults differ)."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    event_loop: EventLoop = Field("auto", description="Event loop: auto (uvloop where installed), uvloop or asyncio.")
    log_level: Annotated[str, AfterValidator(_log_level)] = Field("INFO", description="Logging level.")

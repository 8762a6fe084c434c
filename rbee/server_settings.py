"""The settings every rbee server takes, whatever it serves: its address, event loop and log level."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, Field

from rbee.auth import INSECURE_WARNING, is_loopback, open_to_network, read_key_file, strong_key
from rbee.flags import Flag
from rbee.listener import ListenLimits

EventLoop = Literal["auto", "uvloop", "asyncio"]  # what rbee.web.new_event_loop makes


def _log_level(name: str) -> str:
    level = name.upper()
    if level not in logging.getLevelNamesMapping():
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


class ServerSettings(BaseModel):
    """Each server's own settings model extends this one (its port too is its own: defaults differ)."""

    KEY_FLAG: ClassVar[str] = "--cluster-key"  # the key that guards this server

    host: str = Field("127.0.0.1", description="Address to listen on.")
    event_loop: EventLoop = Field("auto", description="Event loop: auto (uvloop where installed), uvloop or asyncio.")
    log_level: Annotated[str, AfterValidator(_log_level)] = Field("INFO", description="Logging level.")
    insecure_no_auth: bool = Field(False, description="Listen beyond loopback with no key, on purpose: anyone "
                                   "who can reach this server can use it (logged loudly, and said on /health).")
    header_timeout: float = Field(10.0, gt=0, le=3600, description="Seconds a client gets to send a whole "
                                  "request head (request line and headers), from connecting or from the first "
                                  "byte of a later request; then 408 and the connection is closed.")
    body_timeout: float = Field(30.0, gt=0, le=3600, description="Seconds a client gets to send a request's "
                                "whole body once its head is in; then 408 and the connection is closed.")
    keepalive_timeout: float = Field(75.0, gt=0, le=86400, description="Seconds an idle keep-alive connection "
                                     "stays open between requests.")
    max_conns_per_client: int = Field(256, ge=0, description="Connections one client address may hold open at "
                                      "once, loopback included (0 = no cap); one more is answered 503 "
                                      "TOO_MANY_CONNECTIONS. Keep it above what a proxy in front of this server, "
                                      "or a queen relaying to this worker, opens.")

    def listen_limits(self) -> ListenLimits:
        return ListenLimits(self.header_timeout, self.keepalive_timeout, self.max_conns_per_client, self.body_timeout)

    def keyed(self) -> bool:
        return bool(getattr(self, "cluster_key", None))

    def refusal(self) -> str | None:
        """Why this server must not start as configured (open to the network by accident), or None."""
        return open_to_network(self.host, self.keyed(), self.insecure_no_auth, self.KEY_FLAG)

    def health_warning(self) -> dict[str, str]:
        """For /health: a loud line when it runs open beyond loopback on purpose."""
        open_on_purpose = self.insecure_no_auth and not self.keyed() and not is_loopback(self.host)
        return {"warning": INSECURE_WARNING} if open_on_purpose else {}


S = TypeVar("S", bound=ServerSettings)


def _optional_key(key: str | None) -> str | None:
    return None if key is None else strong_key(key)


# A key setting (the cluster key): unset, or long enough to be worth checking.
OptionalKey = Annotated[str | None, AfterValidator(_optional_key)]


def _key_file(path: Path | None) -> Path | None:
    """A key file that can be read, by us alone, and holds keys good enough (re-read on each reload)."""
    if path is None:
        return None
    read_key_file(path)
    return path.expanduser()


KeyFile = Annotated[Path | None, AfterValidator(_key_file), Flag(metavar="FILE")]


def _expand(path: Path | None) -> Path | None:
    return None if path is None else path.expanduser()


class AuditedSettings(ServerSettings):
    """A server that keeps an audit log (queen and hive; rbee.audit)."""

    audit_log: Annotated[Path | None, AfterValidator(_expand), Flag(metavar="FILE")] = Field(
        None, description="Append a tamper-evident JSON-lines audit log here: authentication, admin actions, "
                          "inference (none = no audit log). Check it with `rbee-keeper audit verify FILE`.")
    audit_max_mb: float = Field(100.0, ge=0, description="Start a new audit file (FILE.000001, …) when the "
                                "current one would pass this many MB (0 = never); the chain goes on in it.")


def fail_closed(parser: argparse.ArgumentParser, settings: S) -> S:
    """Stop at start (usage error, exit 2) when a server would listen beyond loopback with no key;
    with --insecure-no-auth, say loudly that it runs open."""
    why = settings.refusal()
    if why is not None:
        parser.error(why)
    if settings.health_warning():
        logging.getLogger("rbee.auth").warning("%s: anyone who can reach %s can use this server",
                                               INSECURE_WARNING.upper(), settings.host)
    return settings

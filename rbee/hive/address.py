"""The address other machines reach this hive (and the workers it spawns) by.

A hive listening on a wildcard (``--host 0.0.0.0``, the natural way to let other machines in) must
not tell the queen ``http://0.0.0.0:PORT``: it advertises ``--advertise-host`` when given, else the
address of this machine on the route to the queen — what the queen's side of that link sees.
"""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


def route_address(url: str) -> str | None:
    """This machine's address on the route to ``url``'s host (no packet is sent), or None."""
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, kind, proto, _, target in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.connect(target)
                return s.getsockname()[0]
        except OSError:
            continue
    return None


def advertised_host(listen: str, advertise: str | None, queen_urls: list[str]) -> str:
    if advertise:
        return advertise
    if listen not in WILDCARDS:
        return listen
    for url in queen_urls:
        found = route_address(url)
        if found is not None:
            return found
    fallback = socket.getfqdn()
    log.warning("could not tell which address reaches the queen; advertising %s (set --advertise-host)", fallback)
    return fallback


def local_host(listen: str) -> str:
    """Where a process on this machine reaches a server listening on ``listen``."""
    return "127.0.0.1" if listen in WILDCARDS else listen


def http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

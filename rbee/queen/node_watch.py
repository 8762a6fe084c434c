"""The queen's background look at the machines it manages, so ``hives list`` tells online, offline and
unreachable apart without anyone asking first.

A node whose hive heartbeats is online and is left alone. Each other node gets, every ``interval``
seconds, one TCP connect to its SSH port (the address ssh itself would use: ``ssh -G`` resolves the
user's ssh_config once per node), bounded by ``timeout``: no login, no remote command, nothing
written there. A refused or timed-out connect to a node that was reachable is tried again on
:data:`KNOCK_RETRY` (logged once), so one lost packet or an sshd restarting does not flip it; when
every try fails the node is marked unreachable (with the reason and the tries); one that connects
again clears it (offline until its hive heartbeats). The registry file is written only when that
changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from rbee.peer import Backoff
from rbee.queen.nodes import Node, NodeRegistry
from rbee.queen.ssh import Ssh

log = logging.getLogger(__name__)
RESOLVE_TIMEOUT_S = 5.0
# A knock that fails on a reachable node: 2 more within 1.5 s before it counts as unreachable.
KNOCK_RETRY = Backoff(attempts=3, first=0.5, cap=1.0)


class NodeWatch:
    def __init__(self, nodes: NodeRegistry, online: Callable[[str], bool], ssh: Ssh, *,
                 interval: float = 10.0, timeout: float = 3.0, retry: Backoff = KNOCK_RETRY) -> None:
        self.nodes = nodes
        self.retry = retry
        self.online = online  # is the hive of this node heartbeating?
        self.ssh = ssh
        self.interval = interval
        self.timeout = timeout
        self._endpoints: dict[tuple[str, int | None, str | None], tuple[str, int]] = {}

    async def run(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self.interval)  # the probe period itself

    async def check_all(self) -> None:
        nodes = [n for n in self.nodes.list() if not self.online(n.name)]
        await asyncio.gather(*(self.check(n) for n in nodes))

    async def check(self, node: Node) -> None:
        host, port = await self._endpoint(node)
        if node.unreachable_since is not None:  # once a round: it stays unreachable until one connects
            why = await knock(host, port, self.timeout)
        else:
            why = await self._knock_again(node, host, port)
        current = self.nodes.find(node.name)
        if current is None:  # removed meanwhile
            return
        if why is None:
            if current.unreachable_since is not None:
                log.info("node reachable again", extra={"fields": {"name": node.name}})
            self.nodes.reached(node.name)
        elif current.unreachable_since is None:
            log.warning("node unreachable: %s", why, extra={"fields": {"name": node.name}})
            self.nodes.unreachable(node.name, f"{why} (the queen's background check); check the machine and "
                                   "its network")

    async def _knock_again(self, node: Node, host: str, port: int) -> str | None:
        """:func:`knock`, tried again on :attr:`retry` while it fails; why the last try failed, or None."""
        delays = self.retry.delays()
        tries = 0
        while True:
            tries += 1
            why = await knock(host, port, self.timeout)
            if why is None:
                return None
            if not delays:
                return f"{why}; {tries} tries" if tries > 1 else why
            if tries == 1:
                log.info("knock failed: %s; trying %s", why, self.retry.describe(), extra={"fields": {
                    "name": node.name}})
            await asyncio.sleep(delays.pop(0))  # the backoff schedule itself

    async def _endpoint(self, node: Node) -> tuple[str, int]:
        """The host and port ssh would connect to for this node (its ssh_config applied), cached."""
        key = (node.host, node.port, node.user)
        if key not in self._endpoints:
            self._endpoints[key] = await self._resolve(node)
        return self._endpoints[key]

    async def _resolve(self, node: Node) -> tuple[str, int]:
        fallback = (node.host, node.port or 22)
        argv = [a for a in self.ssh.argv(node.target, "true") if a not in ("--", "true")]
        argv.insert(1, "-G")
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.DEVNULL,
                                                        stdin=asyncio.subprocess.DEVNULL)
        except OSError:
            return fallback
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), RESOLVE_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return fallback
        said = dict(line.split(" ", 1) for line in out.decode(errors="replace").splitlines() if " " in line)
        try:
            return said.get("hostname", node.host), int(said.get("port", fallback[1]))
        except ValueError:
            return fallback


async def knock(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within ``timeout``; else why not, in words."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return f"no answer from {host} port {port} within {timeout:g} s"
    except ConnectionRefusedError:
        return f"connection refused by {host} port {port} (sshd not running, or the machine is down)"
    except OSError as err:
        return f"cannot connect to {host} port {port} ({err.strerror or err.__class__.__name__})"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None

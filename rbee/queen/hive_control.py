"""Hives the queen brings up on other machines: add a node, install rbee there, start and stop its hive.

The orchestration behind ``/v2/nodes``, over the node registry (what was added), the hive registry
(what heartbeats) and the worker registry (what routes), with SSH doing the remote work
(:mod:`rbee.queen.remote_hive`, :mod:`rbee.queen.installer`). Each SSH failure that means "could not
connect" marks the node unreachable until an SSH to it works again. One action at a time per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from rbee import __version__
from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import InstallEvent, NodeAdd, NodeInfo
from rbee.queen.hive_registry import HiveRegistry
from rbee.queen.installer import Installer, Plan
from rbee.queen.nodes import Node, NodeRegistry, remote_dir_of, view
from rbee.queen.registry import Registry
from rbee.queen.remote_hive import (
    LOG_LINES_ON_FAILURE,
    RemoteFacts,
    RemoteHive,
    hive_argv,
    queen_url_for,
    require_hive,
)
from rbee.queen.ssh import Ssh, SshTarget

ALIVE_CHECK_EVERY_S = 2.0  # while waiting for a started hive to register: did it die?
REGISTERED_POLL_S = 0.1


@dataclass(frozen=True)
class QueenAddress:
    """How the queen is reached, for the hives it starts."""

    listen_host: str
    port: int
    advertise_url: str | None
    cluster_key: str | None


@dataclass(frozen=True)
class Started:
    node: NodeInfo
    pid: int
    queen_url: str
    already_running: bool
    seconds: float


@dataclass(frozen=True)
class Stopped:
    node: NodeInfo
    outcome: str  # stopped | killed | not-running
    workers_removed: int


class HiveControl:
    def __init__(self, nodes: NodeRegistry, hives: HiveRegistry, workers: Registry, ssh: Ssh,
                 installer: Installer, queen: QueenAddress, *, start_timeout: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.nodes = nodes
        self.hives = hives
        self.workers = workers
        self.ssh = ssh
        self.installer = installer
        self.queen = queen
        self.start_timeout = start_timeout
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------ views

    def info(self, name: str) -> NodeInfo:
        node = self.nodes.find(name)
        hive = self.hives.find(name)
        if node is None and hive is None:
            self.nodes.get(name)  # raises HIVE_NOT_FOUND naming the known ones
        return view(node, hive, hive is not None and self.hives.is_live(hive), self._clock(), __version__)

    def list(self) -> list[NodeInfo]:
        """Every node added, and every live hive that registered without being added (started by hand)."""
        alone = {h.hive_id for h in self.hives.list() if self.hives.is_live(h)}
        names = sorted({n.name for n in self.nodes.list()} | alone)
        return [self.info(name) for name in names]

    def check_pin(self, name: str) -> None:
        """A request pinned to hive ``name``: 404 HIVE_NOT_FOUND unless some part of the queen knows it."""
        known = {n.name for n in self.nodes.list()} | {h.hive_id for h in self.hives.list()} | self.workers.hive_names()
        if name not in known:
            raise RbeeError(ErrorCode.HIVE_NOT_FOUND, f"No hive named '{name}' is known to this queen. Known: "
                            f"{', '.join(sorted(known)) or 'none'}. Pick one of those (`rbee-keeper hives list`).",
                            {"hive": name, "known": sorted(known)})

    # ------------------------------------------------------------ add, remove

    async def add(self, req: NodeAdd) -> tuple[NodeInfo, RemoteFacts]:
        """Log in, look whether rbee-hive is there (and its version), record the node. SSH failures refuse."""
        if not req.replace and self.nodes.find(req.name) is not None:
            self.nodes.add(self._node(req), replace=False)  # raises HIVE_ALREADY_EXISTS
        node = self._node(req)
        async with self._lock(node.name):
            facts = await self._look(node, record=False)
            node = node.model_copy(update={"hive_path": facts.hive_path, "installed_version": facts.hive_version})
            self.nodes.add(node, replace=req.replace)
        return self.info(node.name), facts

    def _node(self, req: NodeAdd) -> Node:
        try:
            target = SshTarget.parse(req.ssh)
            remote_dir = remote_dir_of(req.remote_dir)
        except ValueError as err:
            raise RbeeError(ErrorCode.INVALID_REQUEST, f"Invalid --ssh/--remote-dir: {err}. Use "
                            "[USER@]HOST[:PORT] and a folder path.", {"field": "ssh"}) from None
        identity = None
        if req.identity:
            path = Path(req.identity).expanduser()
            if not path.is_file():
                raise RbeeError(ErrorCode.INVALID_REQUEST, f"The identity file {path} does not exist on the "
                                "queen's machine (the queen runs ssh). Give the path of a private key there.",
                                {"field": "identity", "identity": str(path)})
            identity = str(path.resolve())
        return Node(name=req.name, host=target.host, port=target.port, user=target.user, identity=identity,
                    accept_new_host_key=req.accept_new_host_key, remote_dir=remote_dir, hive_port=req.hive_port,
                    added_at=self._clock())

    def remove(self, name: str) -> Node:
        info = self.info(name)
        if info.state == "online" and self.nodes.find(name) is not None:
            raise RbeeError(ErrorCode.HIVE_RUNNING, f"The hive on {name} is running. Stop it first with "
                            f"`rbee-keeper hives stop {name}`, then remove it.", {"name": name})
        return self.nodes.remove(name)

    # ------------------------------------------------------------ install

    async def plan_install(self, name: str) -> Plan:
        """The checks, before anything is sent: a node that cannot take the wheels is told at once."""
        node = self.nodes.get(name)
        return self.installer.plan(node, await self._look(node))

    async def install(self, plan: Plan) -> AsyncIterator[InstallEvent]:
        """The install's steps as events; the node's record says what is installed once it is."""
        async with self._lock(plan.node.name):
            async for event in self.installer.run(plan):
                if event.stage == "complete":
                    self.nodes.update(plan.node.name, installed_version=event.version,
                                      hive_path=plan.node.path("venv", "bin", "rbee-hive"))
                yield event

    # ------------------------------------------------------------ start, stop

    async def start(self, name: str) -> Started:
        node = self.nodes.get(name)
        async with self._lock(name):
            began = time.monotonic()
            facts = await self._look(node)
            hive_path = require_hive(node, facts)
            queen_url = queen_url_for(node, facts, listen_host=self.queen.listen_host, port=self.queen.port,
                                      advertise_url=self.queen.advertise_url)
            remote = RemoteHive(self.ssh, node)
            node = self.nodes.update(name, stopped_at=None, hive_path=hive_path,
                                     installed_version=facts.hive_version)
            since = self._clock()
            await remote.write_key(self.queen.cluster_key)
            pid, started = await remote.start(hive_path, hive_argv(node, facts, queen_url,
                                                                   self.queen.cluster_key is not None))
            await self._wait_registered(remote, since if started else 0.0)
            return Started(self.info(name), pid, queen_url, not started, time.monotonic() - began)

    async def _wait_registered(self, remote: RemoteHive, since: float) -> None:
        """Until the hive's first registration or heartbeat after ``since`` (bounded); a hive that dies
        on the way is reported with the end of its log."""
        name = remote.node.name
        deadline = time.monotonic() + self.start_timeout
        next_check = time.monotonic() + ALIVE_CHECK_EVERY_S
        while True:
            hive = self.hives.find(name)
            if hive is not None and hive.last_seen >= since and self.hives.is_live(hive):
                return
            now = time.monotonic()
            if now >= deadline or now >= next_check:
                alive = await remote.alive()
                if now >= deadline or not alive:
                    raise await self._start_failed(remote, alive)
                next_check = now + ALIVE_CHECK_EVERY_S
            await asyncio.sleep(REGISTERED_POLL_S)  # polling the registry, which the hive's POST fills

    async def _start_failed(self, remote: RemoteHive, alive: bool) -> RbeeError:
        name = remote.node.name
        log_tail = await self._log_tail(remote)
        why = (f"did not register with the queen within {self.start_timeout:g} s" if alive
               else "exited before it registered with the queen")
        return RbeeError(ErrorCode.HIVE_START_FAILED,
                         f"rbee-hive on {name} {why}. The end of its log ({remote.node.log_path}): "
                         f"{' / '.join(log_tail[-3:]) or '(empty)'}. Fix that (can {name} reach the queen's "
                         "address and port?), then start it again.",
                         {"name": name, "log_tail": log_tail, "running": alive})

    async def _log_tail(self, remote: RemoteHive) -> list[str]:
        with contextlib.suppress(RbeeError):
            text = await remote.tail(remote.node.log_path, LOG_LINES_ON_FAILURE)
            return [ln for ln in text.splitlines() if ln.strip()]
        return []

    async def stop(self, name: str) -> Stopped:
        node = self.nodes.get(name)
        async with self._lock(name):
            outcome = await self._ssh_of(node, RemoteHive(self.ssh, node).stop())
            self.nodes.update(name, stopped_at=self._clock())
            gone = [w for w in self.workers.list() if w.reg.node_name == name]
            for worker in gone:  # out of routing now, whether or not the hive's goodbye reached us
                self.workers.remove(worker.worker_id)
            return Stopped(self.info(name), outcome, len(gone))

    # ------------------------------------------------------------ logs

    async def log_text(self, name: str, program: str | None, lines: int) -> str:
        node = self.nodes.get(name)
        return await self._ssh_of(node, RemoteHive(self.ssh, node).tail(self._log_path(node, program), lines))

    @contextlib.asynccontextmanager
    async def log_follow(self, name: str, program: str | None, lines: int) -> AsyncIterator[asyncio.StreamReader]:
        node = self.nodes.get(name)
        remote = RemoteHive(self.ssh, node)
        path = self._log_path(node, program)
        await self._ssh_of(node, remote.exists(path))
        async with self.ssh.stream(node.target, remote.follow_command(path, lines)) as proc:
            assert proc.stdout is not None
            yield proc.stdout

    @staticmethod
    def _log_path(node: Node, program: str | None) -> str:
        return node.log_path if program in (None, "rbee-hive", "hive") else node.path("logs", f"{program}.log")

    # ------------------------------------------------------------ helpers

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _look(self, node: Node, *, record: bool = True) -> RemoteFacts:
        remote = RemoteHive(self.ssh, node)
        return await (self._ssh_of(node, remote.look()) if record else remote.look())

    async def _ssh_of(self, node: Node, call):
        """``await call``, noting in the registry whether the node could be reached."""
        try:
            result = await call
        except RbeeError as err:
            if err.code == ErrorCode.SSH_UNREACHABLE:
                self.nodes.unreachable(node.name, err.message)
            raise
        self.nodes.reached(node.name)
        return result

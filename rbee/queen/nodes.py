"""The queen's node registry: the machines it reaches over SSH to install, start and stop hives.

Unlike the worker and hive registries (soft state, rebuilt from heartbeats after a restart), this is
what a person told the queen (``rbee-keeper hives add``), so it is kept in a JSON file under the
queen's ``--state-dir`` and survives a restart. Written whole to a temporary file and renamed over
the old one, so a crash mid-write leaves the previous registry, never half a file. No aiohttp; the
clock is injected.

A node's name is its hive's name in the fleet (``rbee-hive --node-name``), which joins what the
node registry knows (how to reach the machine) with what the hive registry sees (is it alive).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import Identifier, NodeInfo
from rbee.queen.hive_registry import HiveRecord
from rbee.queen.ssh import SshTarget
from rbee.versions import compatible

FILE_NAME = "nodes.json"
FORMAT = 1
DEFAULT_REMOTE_DIR = ".local/share/rbee"  # relative to the remote home: the hive's own default data dir
HIVE_LOG = "rbee-hive.log"


class Node(BaseModel):
    """One machine, as recorded: how to log in, where rbee lives there, what was last seen of it."""

    model_config = ConfigDict(extra="ignore")  # a newer queen's file still loads

    name: Identifier
    host: str
    port: int | None = None
    user: str | None = None
    identity: str | None = None
    accept_new_host_key: bool = False
    remote_dir: str = DEFAULT_REMOTE_DIR
    hive_port: Annotated[int, Field(ge=1, le=65535)] = 9200
    added_at: float
    installed_version: str | None = None  # what `rbee-hive --version` said there at the last look
    hive_path: str | None = None  # the rbee-hive found there (the venv's, or one on PATH)
    unreachable_since: float | None = None  # the last SSH to it could not connect
    unreachable_reason: str | None = None
    stopped_at: float | None = None  # `hives stop`: heartbeats older than this do not count

    @property
    def target(self) -> SshTarget:
        return SshTarget(self.host, self.port, self.user, self.identity, self.accept_new_host_key)

    @property
    def ssh(self) -> str:
        return str(self.target)

    def path(self, *parts: str) -> str:
        """A path under the remote dir, as the remote shell takes it (relative paths: from the home)."""
        return "/".join([self.remote_dir.rstrip("/"), *parts])

    @property
    def log_path(self) -> str:
        return self.path("logs", HIVE_LOG)


def remote_dir_of(text: str | None) -> str:
    """``~/x`` and ``x`` are both under the remote home (where ssh starts); ``/x`` is absolute."""
    if not text:
        return DEFAULT_REMOTE_DIR
    if text in ("~", "~/"):
        raise ValueError("the remote dir must be a folder of its own, not the home itself")
    return text.removeprefix("~/")


class NodeRegistry:
    """Nodes by name, persisted to ``state_dir/nodes.json`` on every change."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = state_dir / FILE_NAME
        self._clock = clock
        self._nodes: dict[str, Node] = self._load()

    # ------------------------------------------------------------ persistence

    def _load(self) -> dict[str, Node]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise RuntimeError(f"cannot read the node registry {self.path} ({err}); fix or move it away, "
                               "then start the queen again") from None
        try:
            nodes = [Node.model_validate(n) for n in raw.get("nodes", [])]
        except (ValidationError, AttributeError) as err:
            raise RuntimeError(f"the node registry {self.path} is not valid ({err}); fix or move it away, "
                               "then start the queen again") from None
        return {n.name: n for n in nodes}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        body = {"format": FORMAT, "nodes": [n.model_dump(mode="json") for n in self._nodes.values()]}
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        tmp.replace(self.path)  # atomic: a reader (or a crash) sees the old file or the new one

    # ------------------------------------------------------------ membership

    def add(self, node: Node, *, replace: bool = False) -> Node:
        old = self._nodes.get(node.name)
        if old is not None and not replace:
            raise RbeeError(ErrorCode.HIVE_ALREADY_EXISTS,
                            f"A hive named '{node.name}' is already added ({old.ssh}). Pick another name, "
                            "or pass --replace to record this one in its place.",
                            {"name": node.name, "ssh": old.ssh})
        self._nodes[node.name] = node
        self._save()
        return node

    def get(self, name: str) -> Node:
        node = self._nodes.get(name)
        if node is None:
            known = sorted(self._nodes)
            raise RbeeError(ErrorCode.HIVE_NOT_FOUND,
                            f"No hive named '{name}' is added. Known: {', '.join(known) or 'none'}. "
                            "Add it with `rbee-keeper hives add NAME --ssh USER@HOST`.",
                            {"name": name, "known": known})
        return node

    def find(self, name: str) -> Node | None:
        return self._nodes.get(name)

    def remove(self, name: str) -> Node:
        node = self.get(name)
        del self._nodes[name]
        self._save()
        return node

    def list(self) -> list[Node]:
        return sorted(self._nodes.values(), key=lambda n: n.name)

    def update(self, name: str, **changes: Any) -> Node:
        node = self.get(name).model_copy(update=changes)
        self._nodes[name] = node
        self._save()
        return node

    # ------------------------------------------------------------ what SSH saw

    def reached(self, name: str) -> None:
        node = self._nodes.get(name)
        if node is not None and node.unreachable_since is not None:
            self.update(name, unreachable_since=None, unreachable_reason=None)

    def unreachable(self, name: str, reason: str) -> None:
        node = self._nodes.get(name)
        if node is not None:
            self.update(name, unreachable_since=node.unreachable_since or self._clock(), unreachable_reason=reason)


# ---------------------------------------------------------------- how a node looks to a person


State = Literal["online", "offline", "unreachable"]


def state_of(node: Node | None, hive: HiveRecord | None, live: bool) -> State:
    """online: its hive heartbeats (since it was last stopped); unreachable: the last SSH to it failed."""
    if hive is not None and live and (node is None or node.stopped_at is None or hive.last_seen > node.stopped_at):
        return "online"
    if node is not None and node.unreachable_since is not None:
        return "unreachable"
    return "offline"


def view(node: Node | None, hive: HiveRecord | None, live: bool, now: float, queen_version: str) -> NodeInfo:
    """What ``hives list`` shows of one node (added, or a hive that registered by itself)."""
    assert node is not None or hive is not None
    name = node.name if node is not None else hive.hive_id  # type: ignore[union-attr]
    state = state_of(node, hive, live)
    version = (hive.reg.version if hive is not None and state == "online" else None) or \
        (node.installed_version if node is not None else None)
    notes = []
    if node is not None:
        if node.hive_path is None:
            notes.append(f"rbee-hive is not installed there: `rbee-keeper hives install {name}`")
        elif version is not None and not compatible(version, queen_version):
            notes.append(f"rbee {version} there, {queen_version} here: `rbee-keeper hives install {name}`")
        if state == "unreachable":
            notes.append(node.unreachable_reason or "the last SSH to it failed")
        elif state == "offline" and node.hive_path is not None:
            notes.append(f"start it: `rbee-keeper hives start {name}`")
    return NodeInfo(
        hive_id=name, ssh=node.ssh if node is not None else None, state=state, live=state == "online",
        version=version,
        workers=hive.workers if hive is not None and state == "online" else 0,
        ram_free_bytes=hive.ram_free_bytes if hive is not None and state == "online" else None,
        memory=hive.memory if hive is not None and state == "online" else [],
        seconds_since_heartbeat=round(now - hive.last_seen, 1) if hive is not None else None,
        url=hive.reg.url if hive is not None else None,
        remote_dir=node.remote_dir if node is not None else None,
        installed=(node.hive_path is not None) if node is not None else None, notes=notes,
    )

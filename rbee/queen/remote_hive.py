"""What the queen runs on a node over SSH: look at it, start and stop its hive, read its logs.

Each remote action is one small POSIX ``sh`` script, run with its values as arguments (see
:func:`rbee.queen.ssh.script`) and answering in ``key=value`` lines that :func:`parse_facts` reads.
The hive is started detached from the SSH session (``setsid nohup``, stdin from /dev/null, output to
``<remote-dir>/logs/rbee-hive.log``), so it outlives the connection, and its pid goes to
``<remote-dir>/rbee-hive.pid`` for ``stop``. The cluster key travels on ssh's stdin into a 0600 file
that the hive reads (``--cluster-key-file``): it is never on a command line there.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from rbee import __version__
from rbee.errors import ErrorCode, RbeeError
from rbee.queen.nodes import Node
from rbee.queen.ssh import Ssh, script
from rbee.versions import compatible, from_version_output, upgrade_hint

PID_FILE = "rbee-hive.pid"
KEY_FILE = "cluster.key"
LOG_LINES_ON_FAILURE = 15
STOP_WAIT_TENTHS = 200  # 20 s for the hive to drain its workers and exit before SIGKILL

# Is the pid in the pid file a live rbee-hive (not a pid the system has handed on)? Defines `running`.
_RUNNING = r'''
running() {
  [ -f "$d/rbee-hive.pid" ] || return 1
  pid=$(cat "$d/rbee-hive.pid")
  kill -0 "$pid" 2>/dev/null || return 1
  [ ! -r "/proc/$pid/cmdline" ] || tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q rbee-hive
}
'''

PROBE = _RUNNING + r'''
d=$1
printf 'ssh_connection=%s\n' "$SSH_CONNECTION"
if [ -x "$d/venv/bin/rbee-hive" ]; then h=$d/venv/bin/rbee-hive; else h=$(command -v rbee-hive 2>/dev/null); fi
if [ -n "$h" ]; then
  printf 'hive_path=%s\n' "$h"
  printf 'hive_version=%s\n' "$("$h" --version 2>&1 | tail -n 1)"
fi
p=$(command -v python3 2>/dev/null)
if [ -n "$p" ]; then
  printf 'python=%s\n' "$p"
  "$p" -c 'import platform, sys; print("python_version=%d.%d.%d" % sys.version_info[:3]); print("machine=" + platform.machine())'
fi
if running; then printf 'hive_pid=%s\n' "$pid"; fi
exit 0
'''

WRITE_KEY = r'''
umask 077
mkdir -p "$1" && cat > "$1/cluster.key.tmp" && mv "$1/cluster.key.tmp" "$1/cluster.key"
'''

START = _RUNNING + r'''
d=$1; hive=$2; shift 2
mkdir -p "$d/logs" || exit 1
if running; then printf 'already=%s\n' "$pid"; exit 0; fi
printf '\n--- rbee-hive started over SSH at %s ---\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$d/logs/rbee-hive.log"
if command -v setsid >/dev/null 2>&1; then detach=setsid; else detach=; fi
$detach nohup "$hive" "$@" >> "$d/logs/rbee-hive.log" 2>&1 < /dev/null &
printf '%s\n' "$!" > "$d/rbee-hive.pid"
printf 'started=%s\n' "$!"
'''

ALIVE = _RUNNING + r'''
d=$1
if running; then echo "alive=$pid"; else echo "alive="; fi
'''

STOP = _RUNNING + r'''
d=$1; tenths=$2
if ! running; then rm -f "$d/rbee-hive.pid"; echo "state=not-running"; exit 0; fi
kill -TERM "$pid"
i=0
while kill -0 "$pid" 2>/dev/null; do
  i=$((i + 1))
  if [ "$i" -ge "$tenths" ]; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
    rm -f "$d/rbee-hive.pid"; echo "state=killed"; exit 0
  fi
  sleep 0.1
done
rm -f "$d/rbee-hive.pid"; echo "state=stopped"
'''

TAIL = r'''
[ -f "$1" ] || { echo "missing=$1"; exit 3; }
tail -n "$2" "$1"
'''

# Follows the log until our end lets go: ssh's stdin reaching EOF ends the tail too.
FOLLOW = r'''
[ -f "$1" ] || { echo "missing=$1"; exit 3; }
tail -n "$2" -F "$1" 2>/dev/null &
t=$!
cat > /dev/null
kill "$t" 2>/dev/null
'''


def parse_facts(text: str) -> dict[str, str]:
    """``key=value`` lines (the first of each key); other lines are ignored."""
    facts: dict[str, str] = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq and key.isidentifier() and key not in facts:
            facts[key] = value.strip()
    return facts


@dataclass(frozen=True)
class RemoteFacts:
    """What a look at a node found."""

    queen_address: str | None  # this machine's address as the node sees it (SSH_CONNECTION)
    node_address: str | None  # the node's address on that connection
    hive_path: str | None
    hive_version: str | None  # None with hive_path set: it is there but broken
    hive_version_said: str | None
    python: str | None
    python_version: str | None
    machine: str | None
    hive_pid: int | None

    @classmethod
    def parse(cls, text: str) -> RemoteFacts:
        f = parse_facts(text)
        conn = f.get("ssh_connection", "").split()
        said = f.get("hive_version")
        pid = f.get("hive_pid", "")
        return cls(conn[0] if len(conn) == 4 else None, conn[2] if len(conn) == 4 else None,
                   f.get("hive_path") or None, from_version_output(said) if said else None, said,
                   f.get("python") or None, f.get("python_version") or None, f.get("machine") or None,
                   int(pid) if pid.isdigit() else None)

    @property
    def python_line(self) -> str | None:
        """major.minor of the remote's python3."""
        return ".".join(self.python_version.split(".")[:2]) if self.python_version else None


def require_hive(node: Node, facts: RemoteFacts) -> str:
    """The rbee-hive to run there: installed, working and of this queen's line; else the error to answer."""
    if facts.hive_path is None:
        raise RbeeError(ErrorCode.HIVE_NOT_INSTALLED,
                        f"rbee-hive is not installed on {node.name} (not in {node.path('venv')} nor on PATH). "
                        f"Install it with `rbee-keeper hives install {node.name}`.",
                        {"name": node.name, "remote_dir": node.remote_dir})
    if facts.hive_version is None:
        raise RbeeError(ErrorCode.HIVE_NOT_INSTALLED,
                        f"rbee-hive on {node.name} ({facts.hive_path}) does not run: `rbee-hive --version` said "
                        f"'{facts.hive_version_said}'. Reinstall it with `rbee-keeper hives install {node.name}`.",
                        {"name": node.name, "hive_path": facts.hive_path, "said": facts.hive_version_said})
    if not compatible(facts.hive_version, __version__):
        raise RbeeError(ErrorCode.VERSION_MISMATCH,
                        f"{node.name} has rbee-hive {facts.hive_version}, the queen is {__version__} (major.minor "
                        f"must match). {upgrade_hint(node.name)}.",
                        {"name": node.name, "peer_version": facts.hive_version, "queen_version": __version__})
    return facts.hive_path


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "[::]")


def url_for(address: str, port: int) -> str:
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


def queen_url_for(node: Node, facts: RemoteFacts, *, listen_host: str, port: int, advertise_url: str | None) -> str:
    """The queen's URL as the node reaches it: ``--advertise-url``, else the address the node sees the SSH
    connection come from (this machine's address on the route to it), and the queen's port."""
    if advertise_url:
        return advertise_url.rstrip("/")
    seen = facts.queen_address
    if seen is None:
        raise RbeeError(ErrorCode.HIVE_START_FAILED,
                        f"Could not tell the queen's address as {node.name} sees it (no SSH_CONNECTION there). "
                        "Start the queen with --advertise-url http://ADDRESS:PORT.", {"name": node.name})
    if port == 0:
        raise RbeeError(ErrorCode.HIVE_START_FAILED, "The queen listens on a port picked at random (--port 0), "
                        "so no hive can be told where it is. Start it with a fixed --port, or --advertise-url.",
                        {"name": node.name})
    if _is_wildcard(listen_host) or listen_host == seen:
        return url_for(seen, port)
    if _is_loopback(listen_host):
        if _is_loopback(seen):
            return url_for(seen, port)
        raise RbeeError(ErrorCode.HIVE_START_FAILED,
                        f"The queen listens on {listen_host} only, so {node.name} could not reach it (it sees this "
                        f"machine as {seen}). Start queen-rbee with --host 0.0.0.0 (or --host {seen}), or set "
                        "--advertise-url.", {"name": node.name, "queen_host": listen_host, "seen_as": seen})
    return url_for(listen_host, port)  # bound to one address: the one to use, if the node can route to it


def hive_argv(node: Node, facts: RemoteFacts, queen_url: str, with_key: bool) -> list[str]:
    """rbee-hive's arguments there: bound to the address the queen reached the node on, so it registers
    (and its workers) at an address the queen can use."""
    bind = facts.node_address or node.host
    argv = ["--host", bind, "--port", str(node.hive_port), "--queen-url", queen_url, "--node-name", node.name,
            "--models-dir", node.path("models"), "--log-dir", node.path("logs")]
    if with_key:
        argv += ["--cluster-key-file", node.path(KEY_FILE)]
    return argv


class RemoteHive:
    """The scripts above, run on one node."""

    def __init__(self, ssh: Ssh, node: Node) -> None:
        self.ssh = ssh
        self.node = node

    async def look(self) -> RemoteFacts:
        result = await self.ssh.check(self.node.target, script(PROBE, self.node.remote_dir), what="a look around",
                                      timeout=60)
        return RemoteFacts.parse(result.text)

    async def write_key(self, key: str | None) -> None:
        if key is None:
            await self.ssh.check(self.node.target, script('rm -f "$1/cluster.key"', self.node.remote_dir),
                                 what="removing an old cluster key file")
            return
        await self.ssh.check(self.node.target, script(WRITE_KEY, self.node.remote_dir), stdin=key.encode() + b"\n",
                             what="writing the cluster key file")

    async def start(self, hive_path: str, argv: list[str]) -> tuple[int, bool]:
        """``(pid, started)``; started False when a hive already ran there."""
        result = await self.ssh.check(self.node.target, script(START, self.node.remote_dir, hive_path, *argv),
                                      what="starting rbee-hive", timeout=30)
        facts = parse_facts(result.text)
        if facts.get("already", "").isdigit():
            return int(facts["already"]), False
        if not facts.get("started", "").isdigit():
            raise RbeeError(ErrorCode.HIVE_START_FAILED, f"Starting rbee-hive on {self.node.name} said nothing "
                            f"of its pid: {result.text.strip()[-300:]}", {"name": self.node.name})
        return int(facts["started"]), True

    async def alive(self) -> bool:
        result = await self.ssh.check(self.node.target, script(ALIVE, self.node.remote_dir), what="a look at the hive")
        return parse_facts(result.text).get("alive", "") != ""

    async def stop(self) -> str:
        """``stopped``, ``killed`` (it did not exit in time) or ``not-running``."""
        result = await self.ssh.check(self.node.target, script(STOP, self.node.remote_dir, str(STOP_WAIT_TENTHS)),
                                      what="stopping rbee-hive", timeout=STOP_WAIT_TENTHS / 10 + 30)
        return parse_facts(result.text).get("state", "stopped")

    async def tail(self, path: str, lines: int) -> str:
        result = await self.ssh.run(self.node.target, script(TAIL, path, str(lines)), timeout=60)
        self._log_missing(result.exit_code, path)
        if result.exit_code != 0:
            raise RbeeError(ErrorCode.SSH_FAILED, f"Reading {path} on {self.node.name} failed: "
                            f"{result.error_text or 'exit ' + str(result.exit_code)}.", {"name": self.node.name})
        return result.text

    def _log_missing(self, exit_code: int, path: str) -> None:
        if exit_code == 3:
            raise RbeeError(ErrorCode.NOT_FOUND, f"There is no log at {path} on {self.node.name}: the hive has not "
                            f"been started there yet (`rbee-keeper hives start {self.node.name}`).",
                            {"name": self.node.name, "path": path})

    async def exists(self, path: str) -> None:
        result = await self.ssh.run(self.node.target, script('[ -f "$1" ] || exit 3', path), timeout=60)
        self._log_missing(result.exit_code, path)

    def follow_command(self, path: str, lines: int) -> str:
        return script(FOLLOW, path, str(lines))

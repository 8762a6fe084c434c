"""A test bed of real hosts made of Linux network namespaces, each with its own address and sshd.

The fleet tests (``@fleet``) need machines that are reached only through the network, that can die
and lose their link. One ``TestBed`` makes them on this machine (as root)::

    control host (root namespace)        switch namespace            host namespaces
    rb1a2b3c  10.231.N.1/24  ──veth──  [ bridge ]  ──veth──  eth0 10.231.N.2/24  sshd  (alpha)
                                                  ──veth──  eth0 10.231.N.3/24  sshd  (beta)

- The **control host** is this machine's own namespace: the queen runs there, bound to
  ``bed.control_address`` (or 0.0.0.0); the hosts reach it at that address.
- Each **host** is a network namespace (``rb<id>-<name>``) with loopback, one interface on the
  bridge, its own address and its own OpenSSH server on port 22 (Debian's ``openssh-server``).
  The only route there is to the test bed's /24: traffic goes to these hosts and loopback only.
- The bridge lives in a namespace of its own (``rb<id>-switch``) rather than in this machine's: its
  frames never meet this machine's firewall (``bridge-nf-call-iptables`` with a FORWARD policy of
  DROP, as Docker leaves it, would block host-to-host traffic), and no global sysctl is touched.
  This machine sees one new link, ``rb<id>``, with the control address on it.
- Keys are per run: one client key pair (authorised on every host), one host key per host, a
  ``known_hosts`` holding them all (so no prompt), and an ``ssh_config`` naming every host.
- Neighbour (ARP) entries are static, so a dead or cut host looks as one does across a switch:
  packets vanish and connections time out, rather than failing fast with "no route to host".

Faults, all from the control host:

- ``cut(name)``: the host's switch port stops forwarding (``bridge link set ... state disabled``).
  Packets both ways are dropped, nobody sends a reset: an established TCP connection stalls,
  a new one times out. ``heal(name)`` forwards again; the stalled connection resumes on TCP's next
  retransmission.
- ``kill_host(name)``: the link is cut first (so the dying host's FINs and resets vanish too, as
  with a machine that lost power), then every process in its namespace gets SIGKILL, sshd included,
  and the sockets its kernel still held are destroyed (``ss -K``). ``heal(name)`` then brings the
  link back, like a machine that rebooted with nothing started (its old connections are reset once
  they send, new ones refused), and ``restart_sshd(name)`` starts its sshd again.

Usage, with the queen on the control host and a hive started on alpha over SSH (this is what
``rbee-keeper hives start`` will do through the queen)::

    with TestBed(run_dir, ["alpha", "beta"]) as bed:
        alpha, queen_url = bed.host("alpha"), f"http://{bed.control_address}:8080"
        queen = ServiceProcess("queen", python_module("rbee.queen", "--host", bed.control_address,
                               "--port", "8080"), run_dir / "queen.log", f"{queen_url}/health")
        queen.start().wait_ready(20)
        # The hosts share this machine's files: the venv's rbee-hive runs there as it is. Give each
        # host folders of its own; the hive advertises the address the queen reaches it by.
        hive = subprocess.Popen(alpha.ssh_argv(
            [f"{sys.prefix}/bin/rbee-hive", "--host", "0.0.0.0", "--port", "9200", "--queen-url", queen_url,
             "--node-name", "alpha", "--models-dir", f"{run_dir}/alpha/models",
             "--log-dir", f"{run_dir}/alpha/logs"]))
        bed.cut("alpha"); ...; bed.heal("alpha")     # restart the queen: queen.stop(); queen.start()

From a shell: ``ssh -F <run_dir>/<id>/ssh_config alpha CMD``, or without the config file,
``ssh -i <dir>/id_ed25519 -o UserKnownHostsFile=<dir>/known_hosts root@<address> CMD`` (the files
are ``bed.ssh_config``, ``bed.client_key``, ``bed.known_hosts``). The config sends ``RBEE_TEST_RUN``
and every sshd accepts it, so what a run starts over SSH carries the run's marker. ``Host.run(argv)``
starts a process directly in a host's namespace (``ip netns exec``), without SSH. Each sshd logs to
``<dir>/hosts/<name>/sshd.log``.

``close()`` removes every namespace, link, sshd and process of the bed, and kills the ssh clients
still talking to its hosts (those naming its ``ssh_config``), even after a setup that failed half
way: each resource's cleanup is registered as it is created, and run in reverse. ``leftovers()``
says what is still there. A run that crashed leaves its ``rb<id>-*`` namespaces and its ``rb<id>``
link behind; they are not another run's to delete: ``python -m rbee.testing.hosts list`` shows
them, ``python -m rbee.testing.hosts clean ID`` removes one, and ``python -m rbee.testing.hosts up
DIR alpha beta`` holds a bed up for work by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import ipaddress
import json
import logging
import os
import random
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Self

from rbee.procfs import cmdline, other_pids

log = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"
SSH_PORT = 22
SUBNETS = ipaddress.ip_network("10.231.0.0/16")  # one /24 of it per bed, one not in use here
LOCK_FILE = Path("/run/lock/rbee-testbed.lock")  # beds of concurrent runs pick subnets in turn
RUN_ID = re.compile(r"rb[0-9a-f]{6}")
HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
TOOLS = {SSHD: "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
         "ip": "iproute2", "bridge": "iproute2"}
APT_INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", "openssh-server", "openssh-client",
               "iproute2"]
PORT_FORWARDING, PORT_DISABLED = "forwarding", "disabled"  # bridge port states: link up, link cut
PORT_STATES = {PORT_DISABLED: "0", PORT_FORWARDING: "3"}  # as `bridge link set ... state` takes them
_BEDS: list[TestBed] = []  # every bed this process started, for sweep_testbeds()


class TestBedError(RuntimeError):
    __test__ = False  # not a pytest test class


class Reach(str, Enum):
    """What a TCP connection attempt met."""
    OPEN = "open"
    REFUSED = "refused"          # the host is there, nothing listens: a reset came back
    TIMED_OUT = "timed out"      # packets vanished: a dead host, a cut link
    UNREACHABLE = "unreachable"  # no route (or no neighbour) for the address


def reach(address: str, port: int, timeout: float) -> Reach:
    """Try one TCP connection from this process (the control host, or wherever it runs)."""
    try:
        socket.create_connection((address, port), timeout=timeout).close()
    except ConnectionRefusedError:
        return Reach.REFUSED
    except TimeoutError:
        return Reach.TIMED_OUT
    except OSError as exc:
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return Reach.UNREACHABLE
        raise
    return Reach.OPEN


# ---------------------------------------------------------------- commands


def _run(argv: Sequence[str], timeout: float = 30) -> str:
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestBedError(f"{shlex.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise TestBedError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _quietly(argv: Sequence[str]) -> None:
    """A removal whose target may already be gone."""
    subprocess.run(argv, check=False, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)


def netns_names() -> list[str]:
    out = _run(["ip", "-j", "netns", "list"]).strip()
    return [entry["name"] for entry in json.loads(out or "[]")]


def netns_pids(netns: str) -> list[int]:
    """Every process in the namespace (none when it is gone)."""
    done = subprocess.run(["ip", "netns", "pids", netns], check=False, capture_output=True, text=True,
                          timeout=30)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def kill_everything_in(netns: str, timeout: float, reap: Sequence[subprocess.Popen[bytes]] = ()) -> None:
    """SIGKILL every process in the namespace until none is left (one may fork as we go). ``reap``: our
    own children among them, collected so that they leave no zombie."""
    deadline = time.monotonic() + timeout
    while pids := netns_pids(netns):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in reap:
            proc.poll()
        if time.monotonic() > deadline:
            raise TestBedError(f"processes in {netns} survive SIGKILL: {', '.join(map(_describe, pids))}")
        time.sleep(0.01)  # poll interval
    for proc in reap:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)


def ssh_clients(run_id: str) -> list[int]:
    """Processes here naming the bed's ssh_config (``ssh -F .../<id>/ssh_config``): its hosts' clients."""
    config = f"/{run_id}/ssh_config".encode()
    return [pid for pid in other_pids() if any(arg.endswith(config) for arg in cmdline(pid) or [])]


def kill_ssh_clients(run_id: str) -> None:
    # Without keepalives, an ssh client to a host that is gone would wait forever.
    for pid in ssh_clients(run_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _describe(pid: int) -> str:
    argv = cmdline(pid)
    return f"{pid} ({argv[0].decode(errors='replace') if argv and argv[0] else '?'})"


def ensure_tools() -> None:
    """Install OpenSSH and iproute2 with apt when one of their programs is missing (CI runs as root)."""
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)})
    if not missing:
        return
    print(f"rbee test bed: {', '.join(missing)} missing; running: {shlex.join(APT_INSTALL)}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(APT_INSTALL, check=False, env=env).returncode != 0:
        print("rbee test bed: retrying after apt-get update", file=sys.stderr)
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(APT_INSTALL, env=env, check=True)
    still = [tool for tool in TOOLS if not shutil.which(tool)]
    if still:
        raise TestBedError(f"still missing after apt-get: {', '.join(still)}")


def free_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    """A /24 of SUBNETS that no route or address of this machine overlaps (another bed's included)."""
    routes = json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]) or "[]")
    return pick_subnet([r["dst"] for r in routes if r.get("dst", "default") != "default"], rng)


def pick_subnet(taken: Sequence[str], rng: random.Random) -> ipaddress.IPv4Network:
    """A random /24 of SUBNETS overlapping none of the routes ``taken`` ("10.1.0.0/16", "10.1.2.3")."""
    nets = [ipaddress.ip_network(dst, strict=False) for dst in taken]
    candidates = list(SUBNETS.subnets(new_prefix=24))
    rng.shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(net) for net in nets):
            return subnet
    raise TestBedError(f"every /24 of {SUBNETS} is in use here: stale test beds? "
                       "(python -m rbee.testing.hosts list)")


@contextlib.contextmanager
def _subnet_lock() -> Iterator[None]:
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------- an SSH session


class SshSession:
    """``ssh HOST cat`` held open: one established TCP connection to a host, to watch through faults.

    A line sent comes back while the connection carries packets; across a cut link it does not,
    and the session stays open because no reset arrives."""

    def __init__(self, argv: Sequence[str]) -> None:  # the ssh command line of ``cat`` on the host
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self._buffer = b""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read_line(self, timeout: float) -> str | None:
        """The next line that comes back within ``timeout`` seconds, or None (nothing came, or it ended)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def ended_within(self, timeout: float) -> int | None:
        """The ssh exit code if the session ends within ``timeout`` seconds (a reset ends it), else None."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.proc.wait(timeout)
        return None

    def error(self) -> str:
        """What ssh said on stderr (once it has ended)."""
        assert self.proc.stderr is not None
        return "" if self.alive() else self.proc.stderr.read().decode(errors="replace").strip()

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()


# ---------------------------------------------------------------- hosts


@dataclass
class Host:
    """One machine of the bed: its own network namespace, address and sshd."""
    name: str
    address: str
    netns: str
    port: str            # its port on the bridge, in the switch namespace
    mac: str
    dir: Path            # its sshd's config, host key, pid file and log
    ssh_config: Path
    sshd: subprocess.Popen[bytes] | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, argv: Sequence[str], **popen_kw) -> subprocess.Popen[bytes]:
        """Start a process inside this host's namespace (without SSH). It dies with the host."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], **popen_kw)
        self.processes.append(proc)
        return proc

    def ssh_argv(self, cmd: str | Sequence[str]) -> list[str]:
        """The ssh command line that runs ``cmd`` on this host (a list is quoted for the remote shell)."""
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        return ["ssh", "-F", str(self.ssh_config), self.name, remote]

    def ssh(self, cmd: str | Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` over SSH and wait for it."""
        return subprocess.run(self.ssh_argv(cmd), check=False, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def session(self) -> SshSession:
        return SshSession(self.ssh_argv("cat"))

    def reach(self, address: str, port: int, timeout: float) -> Reach:
        """Try one TCP connection from inside this host."""
        done = subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-m", __name__, "reach",
                               address, str(port), str(timeout)], check=False, capture_output=True, text=True,
                              timeout=timeout + 30)
        if done.returncode != 0:
            raise TestBedError(f"reach from {self.name} failed: {done.stderr.strip()}")
        return Reach(done.stdout.strip())

    def own_processes(self) -> list[subprocess.Popen[bytes]]:
        """The processes this bed started on the host (its sshd, ``run``'s)."""
        return [*self.processes, *([self.sshd] if self.sshd else [])]

    def pids(self) -> list[int]:
        """Every process running on this host."""
        return netns_pids(self.netns)


# ---------------------------------------------------------------- the bed


class TestBed:
    """Hosts made of network namespaces on one private bridge, each with its own sshd. See the module doc."""

    __test__ = False  # not a pytest test class

    def __init__(self, run_dir: Path, names: Sequence[str], *, timeout_multiplier: float = 1.0,
                 sshd: str = SSHD, sshd_config_extra: Mapping[str, str] | None = None) -> None:
        if not names or len(set(names)) != len(names) or not all(HOST_NAME.fullmatch(n) for n in names):
            raise TestBedError(f"host names must be distinct, lower case, letters/digits/-: {list(names)}")
        if len(names) > 250:
            raise TestBedError("at most 250 hosts on one /24")
        self.names = list(names)
        self.k = timeout_multiplier
        self.sshd = sshd
        self.sshd_config_extra = dict(sshd_config_extra or {})
        self.id = self._new_id()
        self.dir = (Path(run_dir) / self.id).resolve()
        if re.search(r"\s", str(self.dir)):
            raise TestBedError(f"sshd configs cannot name a path with spaces: {self.dir}")
        self.bridge = self.id                 # in the switch namespace
        self.switch_ns = f"{self.id}-switch"
        self.control_link = self.id           # the control host's end, in this machine's namespace
        self.control_mac = self._mac(1)
        self.subnet: ipaddress.IPv4Network | None = None
        self.control_address = ""
        self.ssh_config = self.dir / "ssh_config"
        self.client_key = self.dir / "id_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.authorized_keys = self.dir / "authorized_keys"
        self.hosts: dict[str, Host] = {}
        self._cleanups: list[tuple[str, Callable[[], None]]] = []
        self._cut: set[str] = set()

    # ------------------------------------------------------------ naming

    @staticmethod
    def _new_id() -> str:
        present = set(netns_names()) if shutil.which("ip") else set()
        while True:
            run_id = f"rb{secrets.token_hex(3)}"
            if not link_exists(run_id) and not any(ns.startswith(run_id + "-") for ns in present):
                return run_id

    def _mac(self, index: int) -> str:
        """Locally administered, fixed per bed, so the static neighbour entries can name it."""
        return f"02:{self.id[2:4]}:{self.id[4:6]}:{self.id[6:8]}:00:{index:02x}"

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise TestBedError(f"no host {name!r} in this bed (hosts: {', '.join(self.hosts)})") from None

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> TestBed:
        """Make the bridge, the hosts and their sshds; wait until each answers over SSH. On failure,
        remove whatever was made and raise."""
        if os.geteuid() != 0:
            raise TestBedError("a test bed of network-namespace hosts needs root (CAP_NET_ADMIN)")
        if self in _BEDS:
            raise TestBedError(f"test bed {self.id} was started already; make a new one")
        ensure_tools()
        _BEDS.append(self)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._make_switch()
            for index, name in enumerate(self.names, start=2):
                self._make_host(name, index)
            self._make_keys()
            for host in self.hosts.values():
                self._start_sshd(host)
            for host in self.hosts.values():
                self._wait_sshd(host)
        except BaseException:
            with contextlib.suppress(TestBedError):
                self.close()
            raise
        return self

    def _on_close(self, what: str, fn: Callable[[], None]) -> None:
        self._cleanups.append((what, fn))

    def close(self) -> None:
        """Remove everything, last made first; safe to call again. Raises if something stays behind."""
        errors = []
        while self._cleanups:
            what, fn = self._cleanups.pop()
            try:
                fn()
            except (OSError, subprocess.SubprocessError, TestBedError) as exc:  # keep removing the rest
                errors.append(f"{what}: {exc}")
        if errors:
            raise TestBedError("test bed teardown: " + "; ".join(errors))

    def _make_switch(self) -> None:
        sw = self.switch_ns
        self._on_close(f"namespace {sw}", lambda: self._remove_netns(sw))
        _run(["ip", "netns", "add", sw])
        _run(["ip", "-n", sw, "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "-n", sw, "link", "set", self.bridge, "up"])
        with _subnet_lock():  # until our address is on the link, another bed could pick the same /24
            self.subnet = free_subnet(random.Random())
            self.control_address = str(self.subnet.network_address + 1)
            self._on_close(f"link {self.control_link}",
                           lambda: _quietly(["ip", "link", "del", self.control_link]))
            _run(["ip", "link", "add", self.control_link, "address", self.control_mac, "type", "veth",
                  "peer", "name", "control", "netns", sw])
            _run(["ip", "addr", "add", f"{self.control_address}/24", "dev", self.control_link])
        _run(["ip", "-n", sw, "link", "set", "control", "master", self.bridge, "up"])
        _run(["ip", "link", "set", self.control_link, "up"])

    def _make_host(self, name: str, index: int) -> None:
        assert self.subnet is not None
        netns, port = f"{self.id}-{name}", f"p{index}"
        host = Host(name, str(self.subnet.network_address + index), netns, port, self._mac(index),
                    self.dir / "hosts" / name, self.ssh_config)
        self.hosts[name] = host
        self._on_close(f"namespace {netns}", lambda: self._remove_netns(netns))
        _run(["ip", "netns", "add", netns])
        self._on_close(f"port {port}", lambda: _quietly(["ip", "-n", self.switch_ns, "link", "del", port]))
        _run(["ip", "-n", self.switch_ns, "link", "add", port, "type", "veth",
              "peer", "name", "eth0", "address", host.mac, "netns", netns])
        _run(["ip", "-n", self.switch_ns, "link", "set", port, "master", self.bridge, "up"])
        _run(["ip", "-n", netns, "addr", "add", f"{host.address}/24", "dev", "eth0"])
        _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        # Static neighbours both ways (and to the hosts made before it): across a cut link a
        # connection then times out, as across a real switch, instead of "no route to host".
        _run(["ip", "neigh", "replace", host.address, "lladdr", host.mac, "dev", self.control_link,
              "nud", "permanent"])
        _run(["ip", "-n", netns, "neigh", "replace", self.control_address, "lladdr", self.control_mac,
              "dev", "eth0", "nud", "permanent"])
        for other in self.hosts.values():
            if other is not host:
                for here, there in ((host, other), (other, host)):
                    _run(["ip", "-n", here.netns, "neigh", "replace", there.address, "lladdr", there.mac,
                          "dev", "eth0", "nud", "permanent"])

    def _make_keys(self) -> None:
        self._on_close("ssh clients", lambda: kill_ssh_clients(self.id))
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        _run([*keygen, "-C", f"rbee-testbed-{self.id}", "-f", str(self.client_key)])
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        known, config = [], [f"# rbee test bed {self.id}: ssh -F {self.ssh_config} HOST CMD", ""]
        for host in self.hosts.values():
            host.dir.mkdir(parents=True, exist_ok=True)
            key = host.dir / "ssh_host_ed25519_key"
            _run([*keygen, "-C", f"{host.name}.{self.id}", "-f", str(key)])
            key_type, key_data = Path(f"{key}.pub").read_text().split()[:2]
            known.append(f"{host.name},{host.address} {key_type} {key_data}")
            config += [f"Host {host.name}", f"  HostName {host.address}", ""]
            (host.dir / "sshd_config").write_text("\n".join([
                f"ListenAddress {host.address}:{SSH_PORT}",
                f"HostKey {key}",
                f"PidFile {host.dir / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",  # keys live under the run's log folder, whatever its modes
                "PrintMotd no",
                "LogLevel VERBOSE",
                "Subsystem sftp internal-sftp",  # scp and sftp (copying a wheelhouse over)
                "AcceptEnv RBEE_TEST_RUN",  # the run's marker: what it starts over SSH is found at the end
                self.sshd_config_extra.get(host.name, ""),
                "",
            ]))
        self.known_hosts.write_text("\n".join(known) + "\n")
        config += ["Host *", "  User root", f"  Port {SSH_PORT}", f"  IdentityFile {self.client_key}",
                   "  IdentitiesOnly yes", f"  UserKnownHostsFile {self.known_hosts}",
                   "  GlobalKnownHostsFile /dev/null", "  StrictHostKeyChecking yes", "  BatchMode yes",
                   "  ConnectTimeout 10", "  LogLevel ERROR", "  SendEnv RBEE_TEST_RUN", ""]
        self.ssh_config.write_text("\n".join(config))

    def _start_sshd(self, host: Host) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self._on_close(f"sshd on {host.name}", lambda: self._stop_sshd(host))
        with open(host.dir / "sshd.log", "ab") as log:
            host.sshd = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, self.sshd, "-D", "-e", "-f",
                 str(host.dir / "sshd_config")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_sshd(self, host: Host) -> None:
        """Poll until the host's sshd accepts connections, then prove a login works."""
        deadline = time.monotonic() + 10 * self.k
        while (outcome := reach(host.address, SSH_PORT, 0.5)) is not Reach.OPEN:
            if host.sshd is None or host.sshd.poll() is not None:
                raise TestBedError(f"sshd on {host.name} exited (code {host.sshd and host.sshd.returncode}) "
                                   f"before it answered. Its log:\n{self._log_tail(host)}")
            if time.monotonic() > deadline:
                raise TestBedError(f"sshd on {host.name} ({host.address}) not answering within "
                                   f"{10 * self.k:.0f}s ({outcome.value}). Its log:\n{self._log_tail(host)}")
            time.sleep(0.02)  # poll interval
        done = host.ssh("true", timeout=10 * self.k)
        if done.returncode != 0:
            raise TestBedError(f"ssh to {host.name} failed ({done.returncode}): {done.stderr.strip()}. "
                               f"sshd's log:\n{self._log_tail(host)}")

    @staticmethod
    def _log_tail(host: Host, lines: int = 15) -> str:
        try:
            return "\n".join((host.dir / "sshd.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _stop_sshd(self, host: Host) -> None:
        if host.sshd is None:
            return
        if host.sshd.poll() is None:
            host.sshd.terminate()
            try:
                host.sshd.wait(5 * self.k)
            except subprocess.TimeoutExpired:
                host.sshd.kill()
                host.sshd.wait(5 * self.k)
        host.sshd = None

    def _remove_netns(self, netns: str) -> None:
        if netns not in netns_names():
            return
        host = next((h for h in self.hosts.values() if h.netns == netns), None)
        kill_everything_in(netns, 10 * self.k, host.own_processes() if host else [])
        _run(["ip", "netns", "del", netns])  # only once empty: a process left would keep it alive unseen

    # ------------------------------------------------------------ faults

    def _set_port(self, name: str, state: str) -> None:
        port = self.host(name).port
        _run(["bridge", "-n", self.switch_ns, "link", "set", "dev", port, "state", PORT_STATES[state]])
        now = self.port_state(name)
        if now != state:
            raise TestBedError(f"port of {name} is {now} after setting it {state}")

    def port_state(self, name: str) -> str:
        """``forwarding`` or ``disabled``: the host's port on the switch."""
        out = _run(["bridge", "-n", self.switch_ns, "-j", "link", "show", "dev", self.host(name).port])
        return json.loads(out)[0]["state"]

    def cut(self, name: str) -> None:
        """Drop every packet to and from the host, without a reset: connections stall, new ones time out."""
        self._set_port(name, PORT_DISABLED)
        self._cut.add(name)

    def heal(self, name: str) -> None:
        """Forward the host's packets again (after a cut, or a kill: then it is up with nothing running)."""
        self._set_port(name, PORT_FORWARDING)
        self._cut.discard(name)

    def is_cut(self, name: str) -> bool:
        return name in self._cut

    def kill_host(self, name: str) -> None:
        """A dead machine: its link cut first (its dying sockets' FINs and resets vanish too), then every
        process on it SIGKILLed, sshd included, and its sockets destroyed. ``heal`` and ``restart_sshd``
        bring it back."""
        host = self.host(name)
        self.cut(name)
        kill_everything_in(host.netns, 10 * self.k, host.own_processes())
        host.sshd = None
        host.processes.clear()
        # The host's kernel would still hold the dead processes' sockets (FIN-WAIT, retransmitting
        # their FIN), and after heal() deliver a clean close no dead machine sends. Destroyed now,
        # the old connections meet a reset once healed, as they would from a rebooted machine.
        _run(["ip", "netns", "exec", host.netns, "ss", "-K", "-t", "-a"])
        if left := _run(["ip", "netns", "exec", host.netns, "ss", "-H", "-t", "-a"]).strip():
            log.warning("this kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY); left on %s:\n%s",
                        name, left)

    def restart_sshd(self, name: str) -> None:
        """Stop the host's sshd if it runs (sessions open through it carry on) and start it again."""
        host = self.host(name)
        if self.is_cut(name):
            raise TestBedError(f"{name} is cut off: heal it before restarting its sshd")
        self._stop_sshd(host)
        self._start_sshd(host)
        self._wait_sshd(host)

    # ------------------------------------------------------------ proof of teardown

    def leftovers(self) -> list[str]:
        """What of this bed is still present: namespaces (with the processes in them), its link, its sshds,
        processes started on its hosts, ssh clients to them."""
        found = []
        present = set(netns_names())
        for netns in [self.switch_ns, *(h.netns for h in self.hosts.values())]:
            if netns in present:
                found.append(f"namespace {netns}")
                found += [f"process {_describe(pid)} in {netns}" for pid in netns_pids(netns)]
        if link_exists(self.control_link):
            found.append(f"link {self.control_link}")
        found += [f"ssh client {_describe(pid)}" for pid in ssh_clients(self.id)]
        for host in self.hosts.values():
            for proc in host.own_processes():
                if proc.poll() is None and not any(f"process {proc.pid} " in f for f in found):
                    found.append(f"process {_describe(proc.pid)} started on {host.name}")
        return found


def sweep_testbeds() -> list[str]:
    """What every bed this process started still left behind; then close them all (for ``after_all``)."""
    found = [item for bed in _BEDS for item in bed.leftovers()]
    for bed in _BEDS:
        with contextlib.suppress(TestBedError):
            bed.close()
    _BEDS.clear()
    return found


# ---------------------------------------------------------------- beds on this machine, by hand


def beds_present() -> dict[str, list[str]]:
    """Run id -> its namespaces and link, for every bed on this machine (this run's or a crashed one's)."""
    beds: dict[str, list[str]] = {}
    for netns in netns_names():
        run_id, _, rest = netns.partition("-")
        if RUN_ID.fullmatch(run_id) and rest:
            beds.setdefault(run_id, []).append(f"namespace {netns}")
    for link in Path("/sys/class/net").iterdir():
        if RUN_ID.fullmatch(link.name):
            beds.setdefault(link.name, []).append(f"link {link.name}")
    return beds


def clean(run_id: str) -> None:
    """Remove a bed a crashed run left: what runs in its namespaces, them, its link, its ssh clients."""
    if not RUN_ID.fullmatch(run_id):
        raise TestBedError(f"not a test bed id: {run_id!r}")
    for netns in netns_names():
        if netns.startswith(run_id + "-"):
            kill_everything_in(netns, 10)
            _run(["ip", "netns", "del", netns])
    if link_exists(run_id):
        _run(["ip", "link", "del", run_id])
    kill_ssh_clients(run_id)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rbee.testing.hosts", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="make a bed and hold it until Ctrl+C")
    up.add_argument("dir", type=Path)
    up.add_argument("names", nargs="+")
    sub.add_parser("list", help="beds present on this machine (this run's or left by a crash)")
    rm = sub.add_parser("clean", help="remove a bed left behind by a run that crashed")
    rm.add_argument("run_id")
    probe = sub.add_parser("reach", help="one TCP connection attempt: open, refused, timed out, unreachable")
    probe.add_argument("address")
    probe.add_argument("port", type=int)
    probe.add_argument("timeout", type=float)
    args = parser.parse_args(argv)
    if args.command == "reach":
        print(reach(args.address, args.port, args.timeout).value)
    elif args.command == "list":
        for run_id, items in sorted(beds_present().items()):
            print(f"{run_id}: {', '.join(items)}")
    elif args.command == "clean":
        clean(args.run_id)
    else:
        with TestBed(args.dir, args.names) as bed:
            print(f"control host {bed.control_address}; ssh -F {bed.ssh_config} HOST CMD")
            for host in bed.hosts.values():
                print(f"  {host.name}: {host.address}  (ip netns exec {host.netns} CMD)")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

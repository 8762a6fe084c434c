"""The servers bench/chat.py measures, started idle: one queen + one N-slot worker and llama-server
--parallel N (rows 1-3), and the fleets (rows 4-6): two queens, each over two workers of its own (one
routing by cache, one by load alone), and two llama-servers that the bench asks round-robin.

Workers are registered with their queen by hand, as DESIGN.md allows. The fleets split the same
cores and slots between their two servers that the single servers get whole."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests
from common import BenchError, free_port
from peers import CTX_PER_SLOT

from rbee.process import ServiceProcess

BINDIR = Path(sys.executable).parent
# Raised from 30 s: with the cache off, prompts queued behind others' prefill wait long for a first
# byte on two busy cores (the worker's prefill notes cover one prompt's own decode, not the queue).
QUEUE_TIMEOUT = "600"  # more conversations than slots wait in the queen's queue, as llama-server queues them
STALL_TIMEOUT = "600"
_TAKEN: set[int] = set()  # ports handed out: the servers start only after all are chosen


def _port() -> int:
    """A free port no other server of this bench was given (the OS may hand the same one out twice
    while none of them is listening yet: it happened once, a worker failed to bind)."""
    while (port := free_port()) in _TAKEN:
        pass
    _TAKEN.add(port)
    return port


@dataclass
class Servers:
    """What was started: the processes (to stop), base URLs by role, and process groups by role."""

    children: list[ServiceProcess] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)
    pgids: dict[str, int] = field(default_factory=dict)

    def add(self, role: str, child: ServiceProcess, url: str) -> None:
        self.children.append(child)
        self.urls[role] = url

    def start(self, ready_timeout: float) -> None:
        for child in self.children:
            child.start()
        for child in self.children:
            child.wait_ready(ready_timeout)
        roles = list(self.urls)
        self.pgids = {role: child.pid or 0 for role, child in zip(roles, self.children, strict=True)}

    def stop(self) -> None:
        for child in self.children:
            child.stop()


def worker(servers: Servers, role: str, model: Path, slots: int, threads: int, logdir: Path,
           cache_ram_mb: int = 0) -> None:
    port = _port()
    url = f"http://127.0.0.1:{port}"
    servers.add(role, ServiceProcess(
        "llm-worker-rbee", [str(BINDIR / "llm-worker-rbee"), "--port", str(port), "--worker-id", role,
                            "--slots", str(slots), "--model", str(model), "--threads", str(threads),
                            "--ctx-size", str(CTX_PER_SLOT), "--cache-ram-mb", str(cache_ram_mb)],
        logdir / f"{role}.log", f"{url}/v1/ready",
        ready_check=lambda r: r.status_code == 200 and r.json().get("ready") is True), url)


def queen(servers: Servers, role: str, logdir: Path, *extra: str) -> None:
    port = _port()
    url = f"http://127.0.0.1:{port}"
    servers.add(role, ServiceProcess("queen-rbee", [str(BINDIR / "queen-rbee"), "--port", str(port),
                                                    "--stall-timeout", STALL_TIMEOUT,
                                                    "--queue-timeout", QUEUE_TIMEOUT, *extra],
                                     logdir / f"{role}.log", f"{url}/health"), url)


def llama_server(servers: Servers, role: str, binary: Path, model: Path, slots: int, threads: int,
                 logdir: Path) -> None:
    port = _port()
    url = f"http://127.0.0.1:{port}"
    servers.add(role, ServiceProcess(
        "llama-server", [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t",
                         str(threads), "-tb", str(threads), "--parallel", str(slots), "-c",
                         str(slots * CTX_PER_SLOT)],
        logdir / f"{role}.log", f"{url}/health"), url)


def register(servers: Servers, queen_role: str, worker_role: str, model: Path, slots: int) -> None:
    r = requests.post(f"{servers.urls[queen_role]}/v2/workers/register", timeout=10, json={
        "worker_id": worker_role, "url": servers.urls[worker_role], "model_ref": str(model), "slots_total": slots})
    if r.status_code != 200:
        raise BenchError(f"queen {queen_role} refused worker {worker_role}: HTTP {r.status_code} {r.text}")


def start_single(servers: Servers, model: Path, binary: Path | None, slots: int, threads: int, cache_ram_mb: int,
                 logdir: Path) -> None:
    """Roles: queen, worker (on the queen), llama-server (when ``binary``)."""
    worker(servers, "worker", model, slots, threads, logdir, cache_ram_mb)
    queen(servers, "queen", logdir)
    if binary is not None:
        llama_server(servers, "llama-server", binary, model, slots, threads, logdir)


def start_fleets(servers: Servers, model: Path, binary: Path | None, slots: int, threads: int, cache_ram_mb: int,
                 logdir: Path) -> None:
    """Roles: queen-cache over cache-w1/cache-w2, queen-load (--no-cache-routing) over
    load-w1/load-w2, llama-1/llama-2 (when ``binary``); each server half the slots and threads."""
    half_slots, half_threads = max(1, slots // 2), max(1, threads // 2)
    for kind in ("cache", "load"):
        for n in (1, 2):
            worker(servers, f"{kind}-w{n}", model, half_slots, half_threads, logdir, cache_ram_mb // 2)
    queen(servers, "queen-cache", logdir)
    queen(servers, "queen-load", logdir, "--no-cache-routing")
    if binary is not None:
        for n in (1, 2):
            llama_server(servers, f"llama-{n}", binary, model, half_slots, half_threads, logdir)


def register_fleets(servers: Servers, model: Path, slots: int) -> None:
    for kind in ("cache", "load"):
        for n in (1, 2):
            register(servers, f"queen-{kind}", f"{kind}-w{n}", model, max(1, slots // 2))

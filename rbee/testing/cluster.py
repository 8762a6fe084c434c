"""A local rbee fleet made of real processes on free loopback ports: queen, hives, workers.

One ``Cluster`` per scenario (or feature). Everything it starts is stopped by :meth:`stop_all`,
which the behave hooks register as a cleanup *before* starting anything.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rbee.client import HiveClient, QueenClient, WorkerClient
from rbee.ports import free_port
from rbee.process import ServiceProcess
from rbee.testing.clients import wait_until

# Set for the whole run (environment.py's before_all) and so inherited by every worker the suite starts,
# directly, through a hive or over SSH: one llama.cpp thread each. A worker's threads meet at a barrier
# after every op of the graph; with more runnable threads than cores (two workers in a scenario, or
# anything else busy on a 2-core CI machine) a thread waits out another's time slice at each of them,
# and decoding fell from ~80 to under 1 token/s in a run beside a benchmark, past every deadline.
WORKER_ENV = {"RBEE_THREADS": "1"}


@dataclass
class RunningWorker:
    worker_id: str
    url: str
    process: ServiceProcess
    client: WorkerClient
    model_ref: str
    slots: int
    capability: str = "generate"  # "embeddings" when started with --embeddings


class Cluster:
    def __init__(self, log_dir: Path, timeout_multiplier: float = 1.0) -> None:
        self.log_dir = log_dir
        self.k = timeout_multiplier
        self.processes: list[ServiceProcess] = []
        self.workers: dict[str, RunningWorker] = {}
        self.queen: QueenClient | None = None
        self.queen_process: ServiceProcess | None = None
        self.hive: HiveClient | None = None
        self.hive_process: ServiceProcess | None = None
        self._ids = itertools.count(1)

    # ------------------------------------------------------------ starting

    def _start(self, name: str, module: str, args: list[str], ready_url: str, timeout: float,
               ready_check=None, env: dict[str, str] | None = None) -> ServiceProcess:
        proc = ServiceProcess(name, [sys.executable, "-m", module, *args], self.log_dir / f"{name}.log",
                              ready_url, env=env, ready_check=ready_check)
        self.processes.append(proc)  # tracked before start, so a half-failed start is still stopped
        proc.start()
        proc.wait_ready(timeout * self.k)
        return proc

    def start_queen(self, *extra: str) -> QueenClient:
        port = free_port()
        self._queen_args = ["--port", str(port), *extra]
        url = f"http://127.0.0.1:{port}"
        self.queen_process = self._start("queen", "rbee.queen", self._queen_args, f"{url}/health", 20)
        self.queen = QueenClient(url)
        return self.queen

    def start_other_queen(self, name: str, *extra: str) -> tuple[QueenClient, ServiceProcess]:
        """Another queen beside the first (several queens serving one fleet)."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = self._start(name, "rbee.queen", ["--port", str(port), *extra], f"{url}/health", 20)
        return QueenClient(url), proc

    def kill_queen(self) -> None:
        """SIGKILL: the queen dies as a crashed machine's would, without a word to anyone."""
        assert self.queen_process is not None and self.queen_process.proc is not None
        self.queen_process.proc.kill()
        self.queen_process.proc.wait(10)

    def restart_queen(self) -> QueenClient:
        """The queen again, on the same port and settings, after it died."""
        assert self.queen_process is not None and not self.queen_process.alive(), "the queen still runs"
        url = self.queen_url
        self.queen_process = self._start("queen-again", "rbee.queen", self._queen_args, f"{url}/health", 20)
        return self.queen

    @property
    def queen_url(self) -> str:
        assert self.queen is not None, "no queen started"
        return self.queen.base_url

    def start_worker(self, *, model: str | None = None, slots: int = 1, worker_id: str | None = None,
                     ctx_size: int | None = None, extra: tuple[str, ...] = ()) -> RunningWorker:
        """A real llm-worker-rbee on llama.cpp, started directly (not through a hive)."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        worker_id = worker_id or f"worker-{next(self._ids)}"
        args = ["--port", str(port), "--worker-id", worker_id, "--slots", str(slots), *extra]
        if model:
            args += ["--model", model]
        if ctx_size:
            args += ["--ctx-size", str(ctx_size)]
        proc = self._start(worker_id, "rbee.worker", args, f"{url}/v1/ready", 60,
                           ready_check=lambda r: r.status_code == 200 and r.json().get("ready") is True)
        worker = RunningWorker(worker_id, url, proc, WorkerClient(url), model or "smollm2-135m-instruct", slots,
                               "embeddings" if "--embeddings" in extra else "generate")
        self.workers[worker_id] = worker
        return worker

    def register(self, worker: RunningWorker) -> None:
        assert self.queen is not None
        r = self.queen.register({"worker_id": worker.worker_id, "url": worker.url, "model_ref": worker.model_ref,
                                 "backend": "cpu", "device": 0, "node_name": "test-node",
                                 "slots_total": worker.slots, "capability": worker.capability})
        assert r.status_code == 200, r.text

    def start_hive(self, *extra: str, queen_url: str | None = None) -> HiveClient:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = ["--port", str(port), "--queen-url", queen_url or self.queen_url, "--node-name", "test-hive",
                "--models-dir", str(self.log_dir / "models"), "--log-dir", str(self.log_dir / "hive-workers"), *extra]
        self.hive_process = self._start("hive", "rbee.hive", args, f"{url}/v1/health", 20)
        self.hive = HiveClient(url)
        return self.hive

    def spawn_on_hive(self, timeout: float = 60, **body) -> str:
        """Ask the hive for a worker and wait until the queen lists it as idle. Returns its id."""
        assert self.hive is not None and self.queen is not None
        r = self.hive.spawn(**body)
        assert r.status_code == 202, r.text
        worker_id = r.json()["worker_id"]
        wait_until(lambda: (w := self.queen.worker(worker_id)) is not None and w.state == "idle",
                   timeout * self.k, what=f"worker {worker_id} registered and idle at the queen")
        return worker_id

    def start_fake_hub(self, files: dict[str, Path], faults: dict[str, str] | None = None,
                       token: str | None = None) -> str:
        """A local stand-in for Hugging Face (rbee.testing.fake_hub) serving ``files`` ("org/repo/x.gguf" ->
        local path). Returns its base URL, for the hive's ``--hf-base-url``."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = ["--port", str(port)]
        args += [a for name, path in files.items() for a in ("--file", f"{name}={path}")]
        args += [a for name, fault in (faults or {}).items() for a in ("--fault", f"{name}={fault}")]
        if token:
            args += ["--token", token]
        self._start("fake-hub", "rbee.testing.fake_hub", args, f"{url}/health", 20)
        return url

    def restart_hive(self, *extra: str) -> HiveClient:
        """Start the hive again (a fresh process on a new port) after it stopped or was killed."""
        assert self.hive_process is not None and not self.hive_process.alive(), "the hive still runs"
        return self.start_hive(*extra)

    # ------------------------------------------------------------ stopping

    def stop_all(self) -> None:
        """Stop in reverse order of start: workers and hive before the queen."""
        errors = []
        for proc in reversed(self.processes):
            try:
                proc.stop(grace=15 * self.k)
            except (OSError, subprocess.SubprocessError) as exc:  # keep stopping the rest
                errors.append(f"{proc.name}: {exc}")
        self.processes.clear()
        self.workers.clear()
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))


def start_fake_worker(cluster: Cluster, worker_id: str, *, slots: int = 4, interval: float = 0.01,
                      stall_after: int | None = None, die_after: int | None = None,
                      slow_health: float = 0.0) -> RunningWorker:
    """The scripted stand-in (rbee.testing.fake_worker): for stalls, crashes and high request counts."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--port", str(port), "--slots", str(slots), "--interval", str(interval)]
    if stall_after is not None:
        args += ["--stall-after", str(stall_after)]
    if die_after is not None:
        args += ["--die-after", str(die_after)]
    if slow_health:
        args += ["--slow-health", str(slow_health)]
    proc = cluster._start(worker_id, "rbee.testing.fake_worker", args, f"{url}/v1/health", 20)
    worker = RunningWorker(worker_id, url, proc, WorkerClient(url), "scripted", slots)
    cluster.workers[worker_id] = worker
    return worker


def launch_worker(cluster: Cluster, worker_id: str, *, model: str | None = None, slots: int = 1,
                  extra: tuple[str, ...] = ()) -> RunningWorker:
    """A real worker started without waiting for anything, to watch it load (or fail to)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--port", str(port), "--worker-id", worker_id, "--slots", str(slots), *extra]
    if model:
        args += ["--model", model]
    proc = ServiceProcess(worker_id, [sys.executable, "-m", "rbee.worker", *args],
                          cluster.log_dir / f"{worker_id}.log", f"{url}/v1/health")
    cluster.processes.append(proc)  # tracked before start, so it is stopped whatever happens next
    proc.start()
    worker = RunningWorker(worker_id, url, proc, WorkerClient(url), model or "smollm2-135m-instruct", slots)
    cluster.workers[worker_id] = worker
    return worker

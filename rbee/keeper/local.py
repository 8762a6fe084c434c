"""A local trio on this machine: queen + hive + one worker the hive spawns, ready when the queen lists it idle.

Used by ``rbee-keeper up`` (foreground) and by ``infer`` when no queen answers (ephemeral). Every
start polls readiness against a deadline while checking the process is alive; a part that fails
stops everything already started and reports its last log lines.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from rbee.client import HiveClient, QueenClient
from rbee.keeper.config import OPTIONS
from rbee.keeper.failures import KeeperError, envelope_of
from rbee.keeper.records import HIVE_LOG, QUEEN_LOG, ClusterRecord, ProcessRecord
from rbee.process import ServiceError, ServiceProcess, python_module
from rbee.protocol import WorkerInfo, WorkerState

QUEEN_READY_S = 20.0
HIVE_READY_S = 20.0
WORKER_READY_S = 90.0
POLL_S = 0.05


@dataclass(frozen=True)
class TrioPlan:
    queen_port: int
    hive_port: int
    log_dir: Path
    model: str | None = None
    slots: int = 1
    backend: str = "cpu"
    host: str = "127.0.0.1"

    @property
    def queen_url(self) -> str:
        return f"http://{self.host}:{self.queen_port}"

    @property
    def hive_url(self) -> str:
        return f"http://{self.host}:{self.hive_port}"




def forget_keeper_environment() -> None:
    """Drop rbee-keeper's own RBEE_* variables before starting children, which inherit the environment.

    The names overlap with the services' flags (RBEE_MODEL is also llm-worker-rbee's --model,
    RBEE_API_KEY also queen-rbee's --api-key); the local trio gets its settings as explicit flags.
    """
    for option in OPTIONS.values():
        os.environ.pop(option.env, None)


class LocalTrio:
    def __init__(self, plan: TrioPlan) -> None:
        self.plan = plan
        logs = plan.log_dir
        self.queen_process = ServiceProcess(
            QUEEN_LOG, python_module("rbee.queen", "--host", plan.host, "--port", str(plan.queen_port)),
            logs / f"{QUEEN_LOG}.log", f"{plan.queen_url}/health",
        )
        self.hive_process = ServiceProcess(
            HIVE_LOG, python_module("rbee.hive", "--host", plan.host, "--port", str(plan.hive_port),
                                    "--queen-url", plan.queen_url, "--log-dir", str(logs)),
            logs / f"{HIVE_LOG}.log", f"{plan.hive_url}/v1/health",
        )
        self.queen = QueenClient(plan.queen_url, timeout=5)
        self.hive = HiveClient(plan.hive_url, timeout=5)
        self.worker: WorkerInfo | None = None

    # ------------------------------------------------------------ start

    def start(self) -> WorkerInfo:
        """Queen, then hive, then a worker; stops whatever started if any step fails (or is interrupted)."""
        forget_keeper_environment()
        try:
            for process, timeout in ((self.queen_process, QUEEN_READY_S), (self.hive_process, HIVE_READY_S)):
                process.start()
                try:
                    process.wait_ready(timeout)
                except ServiceError as exc:
                    raise KeeperError(str(exc),
                                      f"read the whole log: {process.log_path}") from None
            self.worker = self._spawn_worker()
            return self.worker
        except BaseException:
            self.stop()
            raise

    def _spawn_worker(self) -> WorkerInfo:
        body = {"slots": self.plan.slots, "backend": self.plan.backend,
                **({"model_ref": self.plan.model} if self.plan.model else {})}
        r = self.hive.spawn(**body)
        if r.status_code != 202:
            error = envelope_of(r)
            raise KeeperError(f"the hive could not start a worker: {error['message']}",
                              f"read the hive's log: {self.hive_process.log_path}", code=error["code"])
        worker_id = r.json()["worker_id"]
        deadline = time.monotonic() + WORKER_READY_S
        while time.monotonic() < deadline:
            self._check_alive()
            info = self._queen_sees(worker_id)
            if info is not None and info.state == WorkerState.IDLE:
                return info
            if info is None and not self._hive_runs(worker_id):
                raise self._worker_failed(worker_id, "exited before it was ready")
            time.sleep(POLL_S)  # poll interval
        raise self._worker_failed(worker_id, f"was not ready within {WORKER_READY_S:.0f} s")

    def _queen_sees(self, worker_id: str) -> WorkerInfo | None:
        try:
            return self.queen.worker(worker_id)
        except (requests.RequestException, ValueError):
            return None

    def _hive_runs(self, worker_id: str) -> bool:
        try:
            return any(w["worker_id"] == worker_id for w in self.hive.workers())
        except (requests.RequestException, ValueError, KeyError):
            return True  # can't tell; the deadline decides

    def _check_alive(self) -> None:
        for process in (self.queen_process, self.hive_process):
            if not process.alive():
                raise KeeperError(f"{process.name} exited while the worker was starting. Last log lines:\n"
                                  f"{process.log_tail()}", f"read the whole log: {process.log_path}")

    def _worker_failed(self, worker_id: str, what: str) -> KeeperError:
        log_path = self.plan.log_dir / f"{worker_id}.log"
        try:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            tail = "(no log)"
        return KeeperError(f"llm-worker-rbee ({worker_id}) {what}. Last log lines:\n{tail}",
                           f"read the whole log: {log_path}")

    # ------------------------------------------------------------ running and stopping

    def dead_part(self) -> ServiceProcess | None:
        """The first of queen/hive that has exited, if any."""
        return next((p for p in (self.queen_process, self.hive_process) if p.proc is not None and not p.alive()),
                    None)

    def stop(self) -> None:
        """The hive first (it drains and stops its workers), then the queen.

        Ctrl+C and SIGTERM are ignored meanwhile: a second Ctrl+C cutting this short would orphan processes.
        """
        quiet = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} if quiet else {}
        try:
            for process in (self.hive_process, self.queen_process):
                process.stop(grace=20)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def record(self, keeper_pid: int | None) -> ClusterRecord:
        assert self.queen_process.pid is not None and self.hive_process.pid is not None
        return ClusterRecord(
            queen=ProcessRecord(QUEEN_LOG, self.queen_process.pid, self.plan.queen_url),
            hive=ProcessRecord(HIVE_LOG, self.hive_process.pid, self.plan.hive_url),
            log_dir=str(self.plan.log_dir), keeper_pid=keeper_pid,
        )

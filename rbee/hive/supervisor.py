"""Worker processes the hive started: spawn on a free port, watch, stop (graceful, then kill).

No aiohttp here: the HTTP side (queen registration, heartbeats) lives in ``rbee.hive.app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import HiveWorker

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks; the worker binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: if the hive dies without cleaning up (SIGKILL), the worker gets SIGTERM."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ManagedWorker:
    worker_id: str
    model_ref: str
    backend: str
    device: int
    port: int
    host: str
    slots: int
    process: asyncio.subprocess.Process
    log_path: Path
    state: str = "starting"  # starting → ready → stopping → exited
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def view(self) -> HiveWorker:
        return HiveWorker(
            worker_id=self.worker_id, url=self.url, model_ref=self.model_ref, backend=self.backend,
            device=self.device, pid=self.process.pid, port=self.port, state=self.state, slots_total=self.slots,
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Supervisor:
    def __init__(self, log_dir: Path, host: str = "127.0.0.1", worker_command: list[str] | None = None) -> None:
        self.log_dir = log_dir
        self.host = host
        self.worker_command = worker_command or [sys.executable, "-m", "rbee.worker"]
        self._workers: dict[str, ManagedWorker] = {}
        self._counter = 0
        self.on_exit: Callable[[ManagedWorker], None] | None = None
        self._watchers: set[asyncio.Task] = set()

    def list(self) -> list[ManagedWorker]:
        return list(self._workers.values())

    def get(self, worker_id: str) -> ManagedWorker:
        try:
            return self._workers[worker_id]
        except KeyError:
            raise RbeeError(
                ErrorCode.WORKER_NOT_FOUND,
                f"This hive runs no worker '{worker_id}'. List them with GET /v1/workers/list.",
                {"worker_id": worker_id},
            ) from None

    def _next_id(self, node_name: str) -> str:
        self._counter += 1
        return f"{node_name}-w{self._counter}-{os.getpid() % 10000}"[:64]

    async def spawn(
        self, *, node_name: str, model_arg: str | None, model_ref: str, backend: str, device: int, slots: int,
        ctx_size: int | None, callback_url: str, cluster_key: str | None,
    ) -> ManagedWorker:
        worker_id = self._next_id(node_name)
        port = free_port(self.host)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{worker_id}.log"
        args = [
            *self.worker_command, "--port", str(port), "--host", self.host, "--worker-id", worker_id,
            "--backend", backend, "--device", str(device), "--slots", str(slots), "--callback-url", callback_url,
        ]
        if model_arg:
            args += ["--model", model_arg]
        if ctx_size:
            args += ["--ctx-size", str(ctx_size)]
        env = dict(os.environ)
        if cluster_key:
            env["RBEE_CLUSTER_KEY"] = cluster_key
        with open(log_path, "ab") as out:
            process = await asyncio.create_subprocess_exec(
                *args, stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL, env=env,
                start_new_session=True,  # Ctrl+C on a terminal reaches the hive, which then stops workers in order
                preexec_fn=_die_with_parent,
            )
        worker = ManagedWorker(
            worker_id=worker_id, model_ref=model_ref, backend=backend, device=device, port=port, host=self.host,
            slots=slots, process=process, log_path=log_path,
        )
        self._workers[worker_id] = worker
        task = asyncio.get_running_loop().create_task(self._watch(worker))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        log.info("spawned worker", extra={"fields": {"worker_id": worker_id, "pid": process.pid, "port": port}})
        return worker

    async def _watch(self, worker: ManagedWorker) -> None:
        code = await worker.process.wait()
        was = worker.state
        worker.state = "exited"
        self._workers.pop(worker.worker_id, None)
        log.info("worker exited", extra={"fields": {"worker_id": worker.worker_id, "code": code, "was": was}})
        if self.on_exit is not None:
            self.on_exit(worker)

    def mark_ready(self, worker_id: str) -> ManagedWorker:
        worker = self.get(worker_id)
        worker.state = "ready"
        worker.ready.set()
        return worker

    async def stop(self, worker: ManagedWorker, grace: float = 10.0) -> None:
        """SIGTERM (the worker drains), then SIGKILL after ``grace`` seconds."""
        if worker.process.returncode is not None:
            return
        worker.state = "stopping"
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.process.wait(), grace)
        except TimeoutError:
            log.warning("worker %s ignored SIGTERM; killing it", worker.worker_id)
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            await worker.process.wait()

    async def stop_all(self, grace: float = 10.0) -> None:
        await asyncio.gather(*(self.stop(w, grace) for w in list(self._workers.values())))
        for task in list(self._watchers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

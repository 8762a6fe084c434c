"""Worker processes the hive started: spawn on a free port, wait for ready, watch, restart, stop, adopt.

No aiohttp here: the HTTP side (queen registration, health checks, idle shutdown) lives in
``rbee.hive.app`` and ``rbee.hive.watch``. Every change of the worker set is written to a small
state file, so a hive that restarts after a crash can adopt the workers it had started.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rbee.deadline import Deadline
from rbee.errors import ErrorCode, RbeeError
from rbee.hive.address import http_url
from rbee.hive.saved_workers import ProcessHandle, SavedWorker, SavedWorkers, adopt_process
from rbee.ports import free_port, port_is_free
from rbee.protocol import Capability, HiveWorker

log = logging.getLogger(__name__)
RestartPolicy = Literal["no", "on-failure"]


def pick_port(host: str = "127.0.0.1", ports: range | None = None, taken: frozenset[int] = frozenset()) -> int:
    """A port nothing listens on: the first free one of ``ports`` (skipping those in use or ``taken``),
    else one the OS picks."""
    if ports is None:
        return free_port(host)
    for port in ports:
        if port not in taken and port_is_free(port, host):
            return port
    raise RbeeError(ErrorCode.SPAWN_FAILED, f"No free port for a worker in {ports.start}-{ports.stop - 1}: "
                    "every one is in use. Stop a worker or widen --worker-ports.",
                    {"ports": [ports.start, ports.stop - 1]})


def _die_with_parent() -> None:
    """In the child before exec: if the hive dies without cleaning up (SIGKILL), the worker gets SIGTERM."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class WorkerSpec:
    """What to run: kept so a worker can be restarted the same way."""

    model_ref: str
    model_arg: str | None  # local GGUF path; None = the worker's built-in default
    backend: str = "cpu"
    device: int = 0
    slots: int = 1
    ctx_size: int | None = None
    ram_bytes: int = 0  # its footprint estimate on the host (rbee.hive.footprint)
    vram_bytes: int = 0  # and on its device, when it offloads
    embeddings: bool = False  # --embeddings: it serves /v1/embeddings and no generation

    @property
    def capability(self) -> Capability:
        return Capability.EMBEDDINGS if self.embeddings else Capability.GENERATE


@dataclass
class ManagedWorker:
    worker_id: str
    spec: WorkerSpec
    port: int
    host: str
    process: ProcessHandle
    log_path: Path
    state: str = "starting"  # starting → ready → stopping → exited
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    health_failures: int = 0
    last_active: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.monotonic)  # for --min-resident
    busy: bool = False  # as the last health check saw it
    generations: float | None = None  # the worker's finished-generation count when last looked at
    exit_code: int | None = None

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    @property
    def model_ref(self) -> str:
        return self.spec.model_ref

    def view(self) -> HiveWorker:
        s = self.spec
        return HiveWorker(
            worker_id=self.worker_id, url=self.url, model_ref=s.model_ref, backend=s.backend, device=s.device,
            pid=self.process.pid, port=self.port, state=self.state, slots_total=s.slots, capability=s.capability,
        )

    def record(self) -> SavedWorker:
        s = self.spec
        return SavedWorker(worker_id=self.worker_id, pid=self.process.pid, port=self.port, host=self.host,
                            model_ref=s.model_ref, model_arg=s.model_arg, backend=s.backend, device=s.device,
                            slots=s.slots, ctx_size=s.ctx_size, ram_bytes=s.ram_bytes, vram_bytes=s.vram_bytes,
                            log_path=str(self.log_path), embeddings=s.embeddings)

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []


class Supervisor:
    def __init__(
        self, log_dir: Path, *, host: str = "127.0.0.1", advertise_host: str | None = None,
        node_name: str = "local", callback_url: str = "",
        cluster_key: str | None = None, state_path: Path | None = None, ports: range | None = None,
        restart: RestartPolicy = "no", max_restarts: int = 3, keep_on_crash: bool = False,
        worker_command: list[str] | None = None, insecure_no_auth: bool = False,
    ) -> None:
        self.insecure_no_auth = insecure_no_auth  # the hive runs open on purpose: so may its workers
        self.log_dir = log_dir
        self.host = host  # where workers listen
        self.advertise_host = advertise_host or host  # how other machines reach them
        self.node_name = node_name
        self.callback_url = callback_url
        self.cluster_key = cluster_key
        self.state = SavedWorkers(state_path) if state_path else None
        self.ports = ports
        self.restart = restart
        self.max_restarts = max_restarts
        self.keep_on_crash = keep_on_crash
        self.worker_command = worker_command or [sys.executable, "-m", "rbee.worker"]
        self._workers: dict[str, ManagedWorker] = {}
        self._counter = 0
        self.on_exit: Callable[[ManagedWorker], None] | None = None
        self._watchers: set[asyncio.Task] = set()
        self._closing = False
        # What happened to workers, for the hive's /metrics: spawns, restarts, crashes, health_check_failures.
        self.counts: collections.Counter[str] = collections.Counter()

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

    def ram_in_use(self) -> int:
        return sum(w.spec.ram_bytes for w in self._workers.values())

    def _next_id(self) -> str:
        self._counter += 1
        taken = set(self._workers)
        while (worker_id := f"{self.node_name}-w{self._counter}-{os.getpid() % 10000}"[:64]) in taken:
            self._counter += 1
        return worker_id

    # ------------------------------------------------------------ starting

    async def spawn(self, spec: WorkerSpec, *, restarts: int = 0) -> ManagedWorker:
        worker_id = self._next_id()
        port = pick_port(self.host, self.ports, frozenset(w.port for w in self._workers.values()))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{worker_id}.log"
        args = [
            *self.worker_command, "--port", str(port), "--host", self.host, "--worker-id", worker_id,
            *(["--insecure-no-auth"] if self.insecure_no_auth else []),
            "--backend", spec.backend, "--device", str(spec.device), "--slots", str(spec.slots),
            "--callback-url", self.callback_url,
        ]
        if spec.model_arg:
            args += ["--model", spec.model_arg]
        if spec.ctx_size:
            args += ["--ctx-size", str(spec.ctx_size)]
        if spec.embeddings:
            args.append("--embeddings")
        env = dict(os.environ)
        if self.cluster_key:
            env["RBEE_CLUSTER_KEY"] = self.cluster_key
        out = await asyncio.to_thread(open, log_path, "ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *args, stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL, env=env,
                start_new_session=True,  # Ctrl+C on a terminal reaches the hive, which then stops workers in order
                preexec_fn=None if self.keep_on_crash else _die_with_parent,
            )
        finally:
            out.close()
        worker = ManagedWorker(worker_id=worker_id, spec=spec, port=port, host=self.advertise_host, process=process,
                               log_path=log_path, restarts=restarts)
        self._track(worker)
        self.counts["restarts" if restarts else "spawns"] += 1
        log.info("spawned worker", extra={"fields": {"worker_id": worker_id, "pid": process.pid, "port": port}})
        return worker

    def _track(self, worker: ManagedWorker) -> None:
        self._workers[worker.worker_id] = worker
        self.save_state()
        self._keep(asyncio.get_running_loop().create_task(self._watch(worker)))

    async def wait_ready(self, worker: ManagedWorker, timeout: float,
                         deadline: Deadline | None = None) -> ManagedWorker:
        """Until the worker's ready callback arrived; else stop it and raise SPAWN_FAILED with its log tail.

        With a request's ``deadline`` that comes sooner, DEADLINE_EXCEEDED when it passes: the worker goes
        on starting (one spawn serves every request waiting for its model, and the next finds it ready),
        still bounded by ``timeout``, watched in the background."""
        started = time.monotonic()
        bound = timeout if deadline is None else min(timeout, max(0.0, deadline.remaining()))
        if await self._ready_within(worker, bound):
            return worker
        if bound < timeout and worker.process.returncode is None:
            assert deadline is not None
            self._keep(asyncio.get_running_loop().create_task(
                self._finish_start(worker, timeout - (time.monotonic() - started))))
            err = deadline.exceeded(
                f"while worker '{worker.worker_id}' for '{worker.model_ref}' was starting",
                f"The worker goes on starting here (up to --spawn-timeout {timeout:g} s); the next request for "
                f"'{worker.model_ref}' may find it ready. Send it again with a later deadline.")
            err.details["worker_id"] = worker.worker_id
            raise err
        code = worker.process.returncode
        why = f"exited with code {code}" if code is not None else f"was not ready within {timeout:g}s"
        if code is None:
            await self.stop(worker, grace=2.0)
        tail = worker.log_tail()
        raise RbeeError(
            ErrorCode.SPAWN_FAILED,
            f"Worker '{worker.worker_id}' for '{worker.model_ref}' {why}. Last log lines:\n" + "\n".join(tail[-5:]),
            {"worker_id": worker.worker_id, "exit_code": code, "log_tail": tail, "log_path": str(worker.log_path)},
        )

    async def _ready_within(self, worker: ManagedWorker, timeout: float) -> bool:
        exited = asyncio.ensure_future(worker.process.wait())
        ready = asyncio.ensure_future(worker.ready.wait())
        try:
            await asyncio.wait({exited, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (exited, ready):
                task.cancel()
        return worker.ready.is_set() and worker.process.returncode is None

    async def _finish_start(self, worker: ManagedWorker, timeout: float) -> None:
        """The rest of a start whose request stopped waiting: ready, or stopped at ``timeout`` and logged."""
        try:
            await self.wait_ready(worker, max(0.0, timeout))
        except RbeeError as err:
            log.warning("a worker started for a request that stopped waiting did not become ready: %s",
                        err.message.splitlines()[0], extra={"fields": {"worker_id": worker.worker_id}})

    def _keep(self, task: asyncio.Task) -> None:
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    def mark_ready(self, worker_id: str) -> ManagedWorker:
        worker = self.get(worker_id)
        worker.state = "ready"
        worker.last_active = time.monotonic()
        worker.ready.set()
        return worker

    # ------------------------------------------------------------ watching

    async def _watch(self, worker: ManagedWorker) -> None:
        code = await worker.process.wait()
        was = worker.state
        worker.state, worker.exit_code = "exited", code
        self._workers.pop(worker.worker_id, None)
        self.save_state()
        log.info("worker exited", extra={"fields": {"worker_id": worker.worker_id, "code": code, "was": was}})
        if code != 0 and was != "stopping":
            self.counts["crashes"] += 1
        if self.on_exit is not None:
            self.on_exit(worker)
        if self._should_restart(worker, was, code):
            log.warning("restarting worker %s (exit %s, restart %d/%d)", worker.worker_id, code,
                        worker.restarts + 1, self.max_restarts)
            try:
                await self.spawn(worker.spec, restarts=worker.restarts + 1)
            except (RbeeError, OSError) as exc:
                log.error("could not restart worker %s: %s", worker.worker_id, exc)

    def _should_restart(self, worker: ManagedWorker, was: str, code: int | None) -> bool:
        return (self.restart == "on-failure" and not self._closing and was != "stopping" and code != 0
                and worker.restarts < self.max_restarts)

    # ------------------------------------------------------------ stopping

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
            await self.kill(worker)

    async def kill(self, worker: ManagedWorker) -> None:
        worker.state = "stopping"
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()
        await worker.process.wait()

    async def stop_all(self, grace: float = 10.0) -> None:
        self._closing = True
        await asyncio.gather(*(self.stop(w, grace) for w in list(self._workers.values())))
        for task in list(self._watchers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------ after a restart of the hive

    def leftovers(self) -> list[SavedWorker]:
        """Workers an earlier run of this hive wrote down; the file is cleared as they are handled."""
        return self.state.load() if self.state else []

    def adopt(self, record: SavedWorker) -> ManagedWorker | None:
        """Take over a worker an earlier run started, if its process still runs; None when it is gone."""
        process = adopt_process(record.pid, record.worker_id)
        if process is None:
            return None
        spec = WorkerSpec(model_ref=record.model_ref, model_arg=record.model_arg, backend=record.backend,
                          device=record.device, slots=record.slots, ctx_size=record.ctx_size,
                          ram_bytes=record.ram_bytes, vram_bytes=record.vram_bytes, embeddings=record.embeddings)
        worker = ManagedWorker(worker_id=record.worker_id, spec=spec, port=record.port, host=record.host,
                               process=process, log_path=Path(record.log_path))
        self._track(worker)
        return worker

    def save_state(self) -> None:
        if self.state is not None:
            try:
                self.state.save([w.record() for w in self._workers.values()])
            except OSError as exc:
                log.warning("could not write the worker state file: %s", exc)

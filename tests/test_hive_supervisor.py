"""The hive's supervisor with stand-in worker commands: ports, ready or not, restarts, state file, adoption."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from rbee.errors import ErrorCode, RbeeError
from rbee.hive.saved_workers import SavedWorker, SavedWorkers, runs_worker
from rbee.hive.supervisor import Supervisor, WorkerSpec, pick_port
from rbee.hive.watch import generations

T = TypeVar("T")
SPEC = WorkerSpec(model_ref="m", model_arg=None)
# Stand-in workers: argv after the command is the supervisor's flags, ignored here.
SLEEPER = [sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(60)"]
CRASHER = [sys.executable, "-c", "import sys; print('could not load the model: bad file', flush=True); sys.exit(3)"]


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def supervisor(tmp_path: Path, command: list[str], **kw) -> Supervisor:
    return Supervisor(tmp_path / "logs", node_name="n", state_path=tmp_path / "workers.json",
                      worker_command=command, **kw)


def test_pick_port_skips_ports_in_use_and_taken() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        first = busy.getsockname()[1]
        ports = range(first, first + 50)
        assert pick_port(ports=ports) != first
        chosen = pick_port(ports=ports)
        assert pick_port(ports=ports, taken=frozenset({chosen})) not in (first, chosen)


def test_a_range_with_no_free_port_is_spawn_failed() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(RbeeError) as caught:
            pick_port(ports=range(port, port + 1))
    assert caught.value.code == ErrorCode.SPAWN_FAILED


def test_a_worker_that_exits_before_ready_fails_with_its_log_tail(tmp_path: Path) -> None:
    async def scenario() -> None:
        sup = supervisor(tmp_path, CRASHER)
        worker = await sup.spawn(SPEC)
        with pytest.raises(RbeeError) as caught:
            await sup.wait_ready(worker, timeout=20)
        err = caught.value
        assert err.code == ErrorCode.SPAWN_FAILED and "exited with code 3" in err.message
        assert "could not load the model: bad file" in err.details["log_tail"]
        await asyncio.sleep(0)  # the watcher notices the exit
        assert sup.list() == [] and SavedWorkers(tmp_path / "workers.json").load() == []

    run(scenario())


def test_a_worker_that_never_gets_ready_is_stopped_after_the_deadline(tmp_path: Path) -> None:
    async def scenario() -> None:
        sup = supervisor(tmp_path, SLEEPER)
        worker = await sup.spawn(SPEC)
        with pytest.raises(RbeeError) as caught:
            await sup.wait_ready(worker, timeout=0.5)
        assert "was not ready within 0.5s" in caught.value.message
        assert worker.process.returncode is not None

    run(scenario())


def test_ready_and_the_state_file_names_the_worker(tmp_path: Path) -> None:
    async def scenario() -> None:
        sup = supervisor(tmp_path, SLEEPER)
        worker = await sup.spawn(SPEC)
        sup.mark_ready(worker.worker_id)
        assert await sup.wait_ready(worker, timeout=5) is worker
        [record] = SavedWorkers(tmp_path / "workers.json").load()
        assert (record.worker_id, record.pid, record.port) == (worker.worker_id, worker.process.pid, worker.port)
        await sup.stop_all(grace=2)
        assert worker.process.returncode is not None

    run(scenario())


def test_on_failure_restarts_a_crashing_worker_a_bounded_number_of_times(tmp_path: Path) -> None:
    async def scenario() -> None:
        sup = supervisor(tmp_path, CRASHER, restart="on-failure", max_restarts=2)
        exits: list[int] = []
        done = asyncio.Event()

        def on_exit(worker) -> None:
            exits.append(worker.restarts)
            if worker.restarts == 2:
                done.set()

        sup.on_exit = on_exit
        await sup.spawn(SPEC)
        await asyncio.wait_for(done.wait(), 20)
        await asyncio.sleep(0.3)  # a third restart would have been spawned by now
        assert exits == [0, 1, 2] and sup.list() == []

    run(scenario())


def test_a_live_worker_from_the_last_run_is_adopted_and_a_reused_pid_is_not(tmp_path: Path) -> None:
    other = subprocess.Popen(SLEEPER, stdout=subprocess.DEVNULL)
    worker = subprocess.Popen([*SLEEPER, "--worker-id", "n-w1"], stdout=subprocess.DEVNULL)
    try:
        # Right after fork, /proc/<pid>/cmdline can still be the parent's: poll until exec shows.
        deadline = time.monotonic() + 10
        while not runs_worker(worker.pid, "n-w1") and time.monotonic() < deadline:
            time.sleep(0.01)  # poll
        assert runs_worker(worker.pid, "n-w1") and not runs_worker(other.pid, "n-w1")

        async def scenario() -> None:
            sup = supervisor(tmp_path, SLEEPER)
            records = [SavedWorker("n-w1", worker.pid, 1234, "127.0.0.1", "m", None, "cpu", 0, 1, None, 0, "x"),
                       SavedWorker("n-w9", other.pid, 1235, "127.0.0.1", "m", None, "cpu", 0, 1, None, 0, "y")]
            SavedWorkers(tmp_path / "workers.json").save(records)
            adopted = [sup.adopt(r) for r in sup.leftovers()]
            assert adopted[0] is not None and adopted[1] is None
            await sup.stop_all(grace=5)  # the adopted one is signalled by pid and its exit polled
            assert adopted[0].process.returncode is not None

        run(scenario())
        assert worker.wait(5) is not None and other.poll() is None
    finally:
        for p in (other, worker):
            p.kill()
            p.wait()


def test_generations_sums_the_finished_generation_counters() -> None:
    text = ('# HELP rbee_worker_generations_total Generations finished.\n'
            'rbee_worker_generations_total{finish_reason="stop"} 2.0\n'
            'rbee_worker_generations_total{finish_reason="length"} 3.0\n'
            'rbee_worker_generations_created{finish_reason="stop"} 1.7e9\n')
    assert generations(text) == 5.0
    assert generations("nothing here") is None

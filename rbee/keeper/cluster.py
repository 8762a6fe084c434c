"""``up`` (a local trio in the foreground), ``down`` (stop it from another shell) and ``status``."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from rbee.client import QueenClient
from rbee.keeper import records
from rbee.keeper.failures import EXIT_ERROR, EXIT_OK, KeeperError
from rbee.keeper.local import LocalTrio, TrioPlan
from rbee.keeper.output import Output
from rbee.models import DEFAULT_MODEL_REF

WATCH_INTERVAL_S = 0.5
KEEPER_STOP_S = 60.0  # `up` stopping its hive (which drains workers) and its queen
PROCESS_STOP_S = 25.0


@dataclass
class UpOptions:
    queen_port: int = 8080
    hive_port: int = 9200
    slots: int = 1
    model: str | None = None
    backend: str = "cpu"


def up(opts: UpOptions, out: Output) -> int:
    existing = records.read_record()
    if existing is not None and existing.anything_running():
        raise KeeperError(f"rbee is already up (queen {existing.queen.url}, hive {existing.hive.url})",
                          "use it, or stop it first with `rbee-keeper down`")
    plan = TrioPlan(queen_port=opts.queen_port, hive_port=opts.hive_port, log_dir=records.log_dir(),
                    model=opts.model, slots=opts.slots, backend=opts.backend)
    _refuse_if_taken(plan.queen_url, "/health", "something", "--queen-port")
    _refuse_if_taken(plan.hive_url, "/v1/health", "something", "--hive-port")
    out.note(f"rbee-keeper: starting queen, hive and a worker on {opts.model or DEFAULT_MODEL_REF} "
             f"(logs: {plan.log_dir})")
    trio = LocalTrio(plan)
    t0 = time.monotonic()
    worker = trio.start()
    try:
        records.write_record(trio.record(keeper_pid=os.getpid()))
        out.say(f"rbee is up in {time.monotonic() - t0:.1f} s")
        out.table(["part", "url", "detail"], [
            ["queen", plan.queen_url, f"pid {trio.queen_process.pid}"],
            ["hive", plan.hive_url, f"pid {trio.hive_process.pid}"],
            ["worker", worker.url, f"{worker.worker_id} · {worker.model_ref} · {worker.slots_total} slot(s)"],
        ])
        out.say(f"logs: {plan.log_dir}")
        out.say('try:  rbee-keeper infer --prompt "Hello"      stop: Ctrl+C, or rbee-keeper down')
        return _watch(trio, out)
    finally:
        out.note("rbee-keeper: stopping the hive (and its workers), then the queen")
        trio.stop()
        records.remove_record()
        out.note("rbee-keeper: stopped")


def _refuse_if_taken(base_url: str, health_path: str, what: str, flag: str) -> None:
    try:
        requests.get(base_url + health_path, timeout=1)
    except requests.RequestException:
        return
    raise KeeperError(f"{what} already answers at {base_url}",
                      f"use it, stop it, or choose another port with {flag}")


def _watch(trio: LocalTrio, out: Output) -> int:
    """Until Ctrl+C/SIGTERM (KeyboardInterrupt): a queen or hive that dies ends `up` with its log tail."""
    try:
        while (dead := trio.dead_part()) is None:
            time.sleep(WATCH_INTERVAL_S)  # supervision period
    except KeyboardInterrupt:
        return EXIT_OK
    raise KeeperError(f"{dead.name} exited unexpectedly (code {dead.proc.returncode if dead.proc else '?'}). "
                      f"Last log lines:\n{dead.log_tail()}", f"read the whole log: {dead.log_path}")


# ---------------------------------------------------------------- down


def _wait_gone(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)  # poll interval
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def down(out: Output) -> int:
    record = records.read_record()
    if record is None:
        out.say(f"nothing to stop: no local cluster is recorded ({records.cluster_file()})")
        return EXIT_OK
    if record.keeper_running():
        # The `up` in the foreground stops its parts in order, as Ctrl+C would.
        assert record.keeper_pid is not None
        _signal(record.keeper_pid, signal.SIGTERM)
        _wait_gone(record.keeper_running, KEEPER_STOP_S)
    for process in record.processes():  # left over, or started by `infer --keep`
        if process.running():
            _signal(process.pid, signal.SIGTERM)
            if not _wait_gone(process.running, PROCESS_STOP_S):
                out.note(f"rbee-keeper: {process.name} (pid {process.pid}) ignored SIGTERM; killing it")
                _signal(process.pid, signal.SIGKILL)
                _wait_gone(process.running, 5)
    records.remove_record()
    out.say(f"stopped: hive {record.hive.url} (pid {record.hive.pid}), queen {record.queen.url} "
            f"(pid {record.queen.pid})")
    return EXIT_OK


# ---------------------------------------------------------------- status


def _health(url: str) -> str:
    try:
        r = requests.get(url, timeout=2)
        return "healthy" if r.status_code == 200 else f"HTTP {r.status_code}"
    except requests.RequestException:
        return "not answering"


def status(queen_url: str, api_key: str | None, out: Output) -> int:
    record = records.read_record()
    if record is not None and not record.anything_running():
        out.note(f"rbee-keeper: removing a stale record of a cluster that no longer runs ({records.cluster_file()})")
        records.remove_record()
        record = None
    if record is not None:
        queen_url = record.queen.url
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started_at))
        by = f"rbee-keeper up (pid {record.keeper_pid})" if record.keeper_running() else "rbee-keeper infer --keep"
        out.say(f"local cluster started {since} by {by}; logs: {record.log_dir}")
        rows = [[p.name, p.url, p.pid, "running" if p.running() else "gone",
                 _health(p.url + ("/health" if p.name == records.QUEEN_LOG else "/v1/health"))]
                for p in [record.queen, record.hive]]
        out.table(["program", "url", "pid", "process", "health"], rows)
    queen_health = _health(f"{queen_url}/health")
    if queen_health != "healthy":
        if record is None:
            out.say(f"nothing runs: no queen answers at {queen_url}. Start one with: rbee-keeper up")
        return EXIT_ERROR
    if record is None:
        out.say(f"a queen answers at {queen_url} (not started by rbee-keeper on this machine)")
    try:
        workers = QueenClient(queen_url, api_key=api_key, timeout=5).workers()
    except (requests.RequestException, ValueError) as exc:
        out.note(f"rbee-keeper: could not list workers ({exc.__class__.__name__})")
        return EXIT_ERROR
    out.say(f"workers: {len(workers)} ({sum(w.state == 'idle' for w in workers)} idle)")
    return EXIT_OK

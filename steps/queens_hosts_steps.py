"""Steps for two queens on different machines of the test bed serving one hive on a third
(``@fixture.hosts``): the first queen on the control host, the second started directly in alpha's
namespace (bound to alpha's address), and beta's hive told both (``--queen-url A,B``). Clients reach
each queen only by its address. Each fault prints what it measured.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from behave import given, then, when

from rbee.client import QueenClient
from rbee.testing.clients import BackgroundStream, at_once, wait_until
from rbee.testing.fleet import (
    API_KEY,
    CLUSTER_KEY,
    HEARTBEAT_TIMEOUT,
    ROUTED,
    STALL_TIMEOUT,
    measured,
    spawn_fleet_workers,
    start_fleet_hive,
    start_fleet_queen,
)

QUEEN_PORT = 8080  # alpha's own: the namespace has nothing else on it
HOLD = {"prompt": "Count from one to one hundred.", "max_tokens": 48, "ignore_eos": True, "temperature": 0}


def _k(context) -> float:
    return context.cluster.k


def _control(context) -> QueenClient:
    assert context.cluster.queen is not None
    return context.cluster.queen


def _queens(context) -> dict[str, QueenClient]:
    return {"control": _control(context), "alpha": context.alpha_queen}


def _worker(context) -> str:
    return context.fleet_workers["beta"]


@given("a queen on the control host and a second queen on alpha")
def step_two_queens(context):
    start_fleet_queen(context)
    alpha = context.testbed.host("alpha")
    base = Path(context.log_dir) / context.fleet_run / "alpha-queen"
    base.mkdir(parents=True)
    log = open(base / "queen.log", "ab")  # noqa: SIM115 - the queen's log, open for as long as it runs
    context.add_cleanup(log.close)
    alpha.run([f"{sys.prefix}/bin/queen-rbee", "--host", alpha.address, "--port", str(QUEEN_PORT),
               "--state-dir", str(base / "state"), "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT),
               "--stall-timeout", str(STALL_TIMEOUT), "--queue-timeout", "120", "--api-key", API_KEY,
               "--cluster-key", CLUSTER_KEY], stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=dict(os.environ))
    context.alpha_queen = QueenClient(f"http://{alpha.address}:{QUEEN_PORT}", api_key=API_KEY)
    wait_until(lambda: context.alpha_queen.get("/health").status_code == 200, 30 * _k(context),
               what="the queen on alpha")


@given("a hive on beta that serves both queens, with a worker of 2 slots")
def step_hive_on_beta(context):
    both = f"{context.control_queen_url},{context.alpha_queen.base_url}"
    context.fleet_hives = {"beta": start_fleet_hive(context, "beta", queen_url=both)}
    spawn_fleet_workers(context, context.fleet_hives)  # registered and idle at the control host's queen


def _routed_at(queen: QueenClient, worker_id: str) -> bool:
    info = queen.worker(worker_id)
    return info is not None and info.state in ROUTED


@then("both queens route to the worker on beta within {n:d} seconds")
def step_both_route(context, n):
    for name, queen in _queens(context).items():
        wait_until(lambda q=queen: _routed_at(q, _worker(context)), n * _k(context),
                   what=f"the worker on beta in routing at the queen on {name}")


def _served(queen: QueenClient, worker_id: str, i: int = 0) -> dict:
    result = queen.infer({"prompt": f"Say the number {i}.", "max_tokens": 4, "temperature": 0, "ignore_eos": True})
    assert result.status == 200 and result.terminated and result.done, (result.status, result.error, result.events[-3:])
    assert result.done["worker_id"] == worker_id and len(result.tokens) == 4, result.events[-3:]
    return result.done


@given("2 answers streaming through the queen on alpha hold both slots of the worker on beta")
def step_hold_slots(context):
    streams = [BackgroundStream(context.alpha_queen, "/v1/inference", HOLD) for _ in range(2)]
    for stream in streams:
        context.add_cleanup(lambda s=stream: s.response.close())
        assert stream.response.status_code == 200, stream.response.text
        stream.wait_first_event(60 * _k(context))
    context.holding = streams
    worker = context.fleet_hives["beta"].workers()
    assert any(w["worker_id"] == _worker(context) for w in worker), worker


def _failovers(queen: QueenClient) -> float:
    text = queen.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rbee_queen_failovers_total"))


@then("2 requests through the queen on the control host wait for those slots and are served by the worker on beta")
def step_wait_then_served(context):
    """The control host's queen sees two free slots that alpha's queen holds: the worker says
    ALL_SLOTS_BUSY, and the requests must wait for the slots rather than fail."""
    queen, before = _control(context), _failovers(_control(context))
    started = time.monotonic()
    results = at_once(*[lambda i=i: _served(queen, _worker(context), i) for i in range(2)], timeout=120 * _k(context))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    measured(context, "two queens: requests served after waiting out the other queen's slots",
             time.monotonic() - started)
    for stream in context.holding:  # the slots were held for real, and given back by an answer that ended
        stream.wait_finished(60 * _k(context))
        assert stream.terminated and stream.events and stream.events[-1].get("done"), stream.events[-2:]
    assert _failovers(queen) > before, "no ALL_SLOTS_BUSY race happened: the test proved nothing"
    assert all(done["queued_ms"] > 0 for done in results), results


@when("the queen on the control host is killed")
def step_kill_control_queen(context):
    context.cluster.kill_queen()
    context.fault, context.fault_at = "control host's queen killed", time.monotonic()


@when("alpha, the second queen's host, is killed")
def step_kill_alpha(context):
    context.testbed.kill_host("alpha")
    context.fault, context.fault_at = "alpha (a queen's host) killed", time.monotonic()


@then("{n:d} requests through the queen on {name:w} are served by the worker on beta")
def step_served_through(context, n, name):
    started = time.monotonic()
    for i in range(n):
        _served(_queens(context)[name], _worker(context), i)
    if getattr(context, "fault", None):
        measured(context, f"{context.fault}: {n} requests served through the queen on {name}",
                 time.monotonic() - started)


@then("the queen on {name:w} keeps the hive on beta live and its worker in routing for {n:d} seconds")
def step_keeps_live(context, name, n):
    """What a hive that waits on a dead queen would break: its heartbeats to the other one."""
    queen = _queens(context)[name]
    end = time.monotonic() + n
    while time.monotonic() < end:  # an invariant held throughout, checked continuously
        hives = {h["hive_id"]: h for h in queen.get("/v2/hives/list").json()["hives"]}
        assert hives.get("beta", {}).get("live") is True, hives
        assert _routed_at(queen, _worker(context)), queen.worker(_worker(context))
        time.sleep(0.2)  # poll

"""Steps for queens that restart, several queens, and the address a hive advertises."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from behave import given, then, when

from rbee.client import QueenClient
from rbee.testing.clients import wait_until

WILDCARDS = {"0.0.0.0", "::", ""}
ANSWER = {"prompt": "Name a colour.", "max_tokens": 8, "temperature": 0}


def _k(context) -> float:
    return context.cluster.k


def _hive_worker_id(context) -> str:
    return context.hive_worker_id


def _reachable(url: str) -> bool:
    host = urlsplit(url).hostname
    return host is not None and host not in WILDCARDS


@given("a hive listening on every address, with a worker on the default model")
def step_hive_wildcard(context):
    context.cluster.start_hive("--host", "0.0.0.0", "--insecure-no-auth",
                               "--models-dir", str(context.log_dir / "models-wild"))
    context.hive_worker_id = context.cluster.spawn_on_hive()


@given("a second queen")
def step_second_queen(context):
    context.second_queen, context.second_queen_process = context.cluster.start_other_queen("queen-2")


@given("a hive that serves both queens, with a worker on the default model")
def step_hive_both(context):
    both = f"{context.cluster.queen_url},{context.second_queen.base_url}"
    context.cluster.start_hive("--models-dir", str(context.log_dir / "models-both"), queen_url=both)
    context.hive_worker_id = context.cluster.spawn_on_hive()


@then("the queen lists the hive at an address other machines can use")
def step_hive_address(context):
    hives = context.cluster.queen.get("/v2/hives/list").json()["hives"]
    assert hives and all(_reachable(h["url"]) for h in hives), hives


@then("the queen lists the hive's worker at an address other machines can use")
def step_worker_address(context):
    worker = context.cluster.queen.worker(_hive_worker_id(context))
    assert worker is not None and _reachable(worker.url), worker


def _served(queen: QueenClient, worker_id: str) -> None:
    result = queen.infer(ANSWER)
    assert result.status == 200 and result.terminated, (result.status, result.error)
    assert result.done is not None and result.done.get("worker_id") == worker_id, result.events
    assert result.tokens, "no token came back"


@then("a client of the queen is served an answer by the hive's worker")
def step_served_first(context):
    _served(context.cluster.queen, _hive_worker_id(context))


@then("a client of the second queen is served an answer by the hive's worker")
def step_served_second(context):
    _served(context.second_queen, _hive_worker_id(context))


@when("the queen is killed")
def step_kill_queen(context):
    context.cluster.kill_queen()


@when("the queen is killed and started again on the same address")
def step_restart_queen(context):
    context.cluster.kill_queen()
    context.cluster.restart_queen()
    context.queen_back_at = time.monotonic()


def _idle_at(queen: QueenClient, worker_id: str) -> bool:
    worker = queen.worker(worker_id)
    return worker is not None and worker.state == "idle"


@then("the restarted queen lists the hive's worker as idle within {seconds:d} seconds")
def step_back_idle(context, seconds):
    worker_id = _hive_worker_id(context)
    wait_until(lambda: _idle_at(context.cluster.queen, worker_id), seconds * _k(context),
               what=f"worker {worker_id} registered again after the queen's restart")
    print(f"re-registered {time.monotonic() - context.queen_back_at:.2f} s after the queen answered again")


@then("the second queen lists the hive's worker as idle within {seconds:d} seconds")
def step_second_idle(context, seconds):
    worker_id = _hive_worker_id(context)
    wait_until(lambda: _idle_at(context.second_queen, worker_id), seconds * _k(context),
               what=f"worker {worker_id} registered with the second queen")


@then("the restarted queen lists the hive as live")
def step_hive_live(context):
    wait_until(lambda: any(h["live"] for h in context.cluster.queen.get("/v2/hives/list").json()["hives"]),
               3 * _k(context), what="the hive registered again")


@then("the hive's worker has all its slots free within {seconds:d} seconds")
def step_worker_free(context, seconds):
    workers = context.cluster.hive.workers()
    url = next(w["url"] for w in workers if w["worker_id"] == _hive_worker_id(context))
    worker = QueenClient(url)  # any client will do: /v1/ready is the worker's own
    started = time.monotonic()
    wait_until(lambda: (r := worker.get("/v1/ready").json())["slots_available"] == r["slots_total"],
               seconds * _k(context), what="the worker's slots free after the queen died")
    print(f"slots free {time.monotonic() - started:.2f} s after the queen was killed")

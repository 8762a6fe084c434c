"""Steps for faults across the test bed's hosts (``@fixture.hosts``: context.testbed).

Each of alpha and beta runs a hive started directly in its namespace (``Host.run``, no SSH: quicker,
and what is under test is the fleet's behaviour across the switch, not ``hives start``), bound to
the host's own address, with one real worker on the default model spawned through it. The queen
runs on the control host (listening on every address; the hives are told the control address) and
keeps its state dir, so that a restarted queen is the same queen. Every fault prints what it measured.
"""

from __future__ import annotations

import time

from behave import given, then, when

from rbee.client import QueenClient, WorkerClient
from rbee.testing.clients import BackgroundStream, at_once, wait_until
from rbee.testing.fleet import (
    CLUSTER_KEY,
    ROUTED,
    measured,
    spawn_fleet_workers,
    start_fleet_hive,
    start_fleet_queen,
)

LONG = {"prompt": "Write a very long story about a bee who travels the world.", "max_tokens": 4000,
        "ignore_eos": True, "temperature": 0}
WORDS = ["Apple", "Bridge", "Cloud", "Desert", "Engine", "Forest", "Garden", "Harbour", "Island", "Jungle"]


def _k(context) -> float:
    return context.cluster.k


def _queen(context) -> QueenClient:
    assert context.cluster.queen is not None
    return context.cluster.queen


# ---------------------------------------------------------------- the fleet


@given("a queen on the control host and a hive with a worker on each of alpha and beta")
def step_fleet(context):
    start_fleet_queen(context)
    context.fleet_hives = {name: start_fleet_hive(context, name) for name in ("alpha", "beta")}
    spawn_fleet_workers(context, context.fleet_hives)


def _host_of(context, worker_id: str) -> str:
    return next(name for name, w in context.fleet_workers.items() if w == worker_id)


def _ask(context, i: int, **extra) -> dict:
    body = {"prompt": f"{WORDS[i % len(WORDS)]} is the word. Say it back.", "max_tokens": 4,
            "temperature": 0, "ignore_eos": True, **extra}
    result = _queen(context).stream("/v1/inference", body, read_timeout=60 * _k(context))
    assert result.status == 200 and result.terminated and result.done, (result.status, result.error)
    assert len(result.tokens) == 4, result.events
    return result.done


@then("{n:d} requests at once are served by the workers of both hosts")
def step_spread(context, n):
    results = at_once(*[lambda i=i: _ask(context, i) for i in range(n)], timeout=240 * _k(context))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    served = {}
    for done in results:
        host = _host_of(context, done["worker_id"])
        served[host] = served.get(host, 0) + 1
    print(f"served per host: {served}")
    assert set(served) == {"alpha", "beta"}, served


# ---------------------------------------------------------------- faults


@given("a long answer is streaming from the worker of one host")
def step_long_stream(context):
    stream = BackgroundStream(_queen(context), "/v1/inference", LONG)
    context.add_cleanup(lambda: stream.response.close())
    assert stream.response.status_code == 200, stream.response.text
    stream.wait_first_event(60 * _k(context))
    assert stream.events and "token" in stream.events[0], stream.events[:3]
    context.stream = stream
    context.victim = _host_of(context, stream.worker_id)
    context.survivor = next(name for name in context.fleet_workers if name != context.victim)
    print(f"streaming from {context.victim} ({stream.worker_id})")


@when("that host is killed")
def step_kill(context):
    context.fault = "host killed"
    context.fault_at = time.monotonic()
    context.testbed.kill_host(context.victim)


@when("that host's link is cut")
def step_cut(context):
    context.fault = "link cut"
    context.fault_at = time.monotonic()
    context.testbed.cut(context.victim)


@when("that host's link is healed")
def step_heal(context):
    context.fault = "link healed"
    context.testbed.heal(context.victim)
    context.fault_at = time.monotonic()


def _routed(context, worker_id: str) -> bool:
    info = _queen(context).worker(worker_id)
    return info is not None and info.state in ROUTED


@then("its worker leaves routing within {n:d} seconds")
def step_leaves(context, n):
    worker_id = context.fleet_workers[context.victim]
    wait_until(lambda: not _routed(context, worker_id), n * _k(context),
               what=f"worker {worker_id} out of routing after the {context.fault}")
    measured(context, f"{context.fault} on {context.victim}: worker out of routing",
              time.monotonic() - context.fault_at)


@then('the stream on it ends with a "{code:Q}" error event and [DONE] within {n:d} seconds')
def step_stream_ends(context, code, n):
    stream = context.stream
    left = n * _k(context) - (time.monotonic() - context.fault_at)
    stream.wait_finished(max(0.0, left))
    measured(context, f"{context.fault} on {context.victim}: stream ended", time.monotonic() - context.fault_at)
    errors = [e["error"] for e in stream.events if "error" in e]
    assert errors and errors[-1]["code"] == code, stream.events[-3:]
    assert stream.terminated, f"no [DONE] after {stream.events[-3:]}"


@then("{n:d} new requests are all served by the other host's worker")
def step_other_serves(context, n):
    started = time.monotonic()
    for i in range(n):
        done = _ask(context, i)
        assert done["worker_id"] == context.fleet_workers[context.survivor], (done, context.fleet_workers)
    print(f"{n} requests served by {context.survivor} in {time.monotonic() - started:.2f} s")


@then("the other host's worker has all its slots free")
def step_survivor_free(context):
    worker = WorkerClient(context.fleet_worker_urls[context.survivor], api_key=CLUSTER_KEY)
    wait_until(lambda: (r := worker.ready())["slots_available"] == r["slots_total"], 5 * _k(context),
               what=f"the worker on {context.survivor} with all its slots free")
    info = _queen(context).worker(context.fleet_workers[context.survivor])
    assert info is not None and info.slots_available == info.slots_total, info


def _hive_live(context, name: str) -> bool | None:
    hives = _queen(context).get("/v2/hives/list").json()["hives"]
    return next((h["live"] for h in hives if h["hive_id"] == name), None)


@then("the queen's hives list shows that host not live")
def step_hive_not_live(context):
    wait_until(lambda: _hive_live(context, context.victim) is False, 10 * _k(context),
               what=f"the queen's hives list showing {context.victim} not live")
    measured(context, f"{context.fault} on {context.victim}: hive not live", time.monotonic() - context.fault_at)


@then("the queen's hives list shows that host live")
def step_hive_live(context):
    wait_until(lambda: _hive_live(context, context.victim) is True, 5 * _k(context),
               what=f"the queen's hives list showing {context.victim} live")
    measured(context, f"{context.fault} on {context.victim}: hive live again", time.monotonic() - context.fault_at)


@then("its worker is back in routing within {n:d} seconds")
def step_back(context, n):
    worker_id = context.fleet_workers[context.victim]
    wait_until(lambda: (info := _queen(context).worker(worker_id)) is not None and info.state == "idle",
               n * _k(context), what=f"worker {worker_id} back in routing after the {context.fault}")
    measured(context, f"{context.fault} on {context.victim}: worker back in routing",
              time.monotonic() - context.fault_at)


@then("the queen lists each host's worker exactly once")
def step_once(context):
    workers = _queen(context).workers()
    for name, worker_id in context.fleet_workers.items():
        mine = [w for w in workers if w.node_name == name]
        assert [w.worker_id for w in mine] == [worker_id], (name, [w.model_dump() for w in workers])


@then("a request pinned to that host is served by its worker")
def step_pinned(context):
    done = _ask(context, 0, hive=context.victim)
    assert done["worker_id"] == context.fleet_workers[context.victim], done


# ---------------------------------------------------------------- the queen


@when("the queen on the control host is killed and started again on the same address and state dir")
def step_restart_queen(context):
    context.cluster.kill_queen()
    context.cluster.restart_queen()
    context.queen_back_at = time.monotonic()


@then("the restarted queen routes to the workers of both hosts within {n:d} seconds")
def step_routes_again(context, n):
    for name, worker_id in context.fleet_workers.items():
        wait_until(lambda w=worker_id: _routed(context, w), n * _k(context) - (time.monotonic() - context.queen_back_at),
                   what=f"worker {worker_id} on {name} registered again with the restarted queen")
        measured(context, f"queen restarted: worker on {name} re-registered",
                  time.monotonic() - context.queen_back_at)

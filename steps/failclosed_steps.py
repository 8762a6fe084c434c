"""Steps for the last of "fail closed": the worker's metrics behind the cluster key, body read deadlines,
the hive bounding a spawn by the request's deadline, the keeper waiting for a starting queen, and the
queen's retried health probes of hives."""

from __future__ import annotations

import contextlib
import json
import time

from behave import given, then, when

from rbee import models
from rbee.client import QueenClient, WorkerClient
from rbee.deadline import TIMEOUT_HEADER
from rbee.ports import free_port
from rbee.testing.clients import ask_queen_timed, wait_until


def _worker_metrics(context, worker_id: str, key: str | None):
    return WorkerClient(context.cluster.workers[worker_id].url, api_key=key).get("/metrics")


@then('worker "{worker_id:Q}" refuses its metrics with {status:d} "{code:Q}" without a key')
def step_metrics_no_key(context, worker_id, status, code):
    r = _worker_metrics(context, worker_id, None)
    assert r.status_code == status and r.json()["error"]["code"] == code, (r.status_code, r.text)


@then('worker "{worker_id:Q}" refuses its metrics with {status:d} "{code:Q}" with the key "{key:Q}"')
def step_metrics_wrong_key(context, worker_id, status, code, key):
    r = _worker_metrics(context, worker_id, key)
    assert r.status_code == status and r.json()["error"]["code"] == code, (r.status_code, r.text)
    assert key not in r.text, "the refusal echoes the key"


@then('worker "{worker_id:Q}" serves its metrics with the key "{key:Q}"')
def step_metrics_key(context, worker_id, key):
    r = _worker_metrics(context, worker_id, key)
    assert r.status_code == 200, (r.status_code, r.text)
    assert "rbee_worker_generations_total" in r.text, r.text[:500]


# ---------------------------------------------------------------- rbee-keeper and a queen that is starting


@given('a real worker "{worker_id:Q}" with {slots:d} slot, not yet known to any queen')
def step_unregistered_worker(context, worker_id, slots):
    context.cluster.start_worker(worker_id=worker_id, slots=slots)


@given("rbee-keeper points at a queen on 127.0.0.2 that is not listening yet")
def step_keeper_at_late_queen(context):
    context.execute_steps("Given rbee-keeper points at a queen that is not running")
    context.late_queen_port = free_port("127.0.0.2")
    context.keeper_env["RBEE_QUEEN_URL"] = f"http://127.0.0.2:{context.late_queen_port}"


@when("rbee-keeper has said the queen refused the connection")
def step_keeper_said_refused(context):
    wait_until(lambda: "refused the connection" in context.keeper.stderr, 15 * context.cluster.k,
               what="rbee-keeper saying the queen refused the connection")
    assert context.keeper.proc.poll() is None, f"rbee-keeper gave up at once:\n{context.keeper.stderr}"


@when('the queen starts on that address a moment later and worker "{worker_id:Q}" registers with it')
def step_late_queen(context, worker_id):
    cluster, port = context.cluster, context.late_queen_port
    url = f"http://127.0.0.2:{port}"
    # What start_queen does, on the address the keeper was given (start_queen picks a port of its own).
    cluster._queen_args = ["--host", "127.0.0.2", "--port", str(port)]
    cluster.queen_process = cluster._start("queen", "rbee.queen", cluster._queen_args, f"{url}/health", 20)
    cluster.queen = QueenClient(url)
    cluster.register(cluster.workers[worker_id])


@then("rbee-keeper exits with code {code:d} within {n:d} seconds")
def step_keeper_exit_within(context, code, n):
    context.keeper_code = context.keeper.wait(n * context.cluster.k)
    context.execute_steps(f"Then rbee-keeper exits with code {code}")


@then("rbee-keeper's stderr says the queen refused the connection once")
def step_refused_once(context):
    err = context.keeper.stderr
    print(err)
    assert err.count("refused the connection") == 1, err


# ---------------------------------------------------------------- the deadline on a spawn


@when("the hive is asked for a worker on the default model and to wait, with {ms:d} ms left in the hop header")
def step_spawn_with_deadline(context, ms):
    context.sent_at = time.monotonic()
    context.response = context.cluster.hive.post("/v1/workers/spawn", json={"wait": True},
                                                 headers={TIMEOUT_HEADER: str(ms)}, timeout=120 * context.cluster.k)
    context.answered_after = time.monotonic() - context.sent_at


@then('the hive answers {status:d} "{code:Q}" within {n:g} seconds of the request')
def step_hive_answered(context, status, code, n):
    r = context.response
    assert r.status_code == status and r.json()["error"]["code"] == code, (r.status_code, r.text[:500])
    print(f"the hive answered {status} after {context.answered_after:.2f} s")
    assert context.answered_after <= n * context.cluster.k, f"answered after {context.answered_after:.2f} s"


@then("the hive's refusal says how long it waited and that the worker goes on starting")
def step_hive_refusal_says(context):
    error = context.response.json()["error"]
    assert "goes on starting" in error["message"] and "later deadline" in error["message"], error
    details = error["details"]
    assert details["stage"].startswith("while worker") and details["budget_ms"] <= 200, details
    assert 0 <= details["waited_ms"] <= 3000, details
    context.started_worker = details["worker_id"]


@then("the worker the hive started is idle at the queen within {n:d} seconds")
def step_started_worker_idle(context, n):
    queen = context.cluster.queen
    wait_until(lambda: (w := queen.worker(context.started_worker)) is not None and w.state == "idle",
               n * context.cluster.k, interval=0.2, what=f"worker {context.started_worker} idle at the queen")


SHORT = {"prompt": "Say hello.", "max_tokens": 4, "temperature": 0, "ignore_eos": True, "stream": False,
         "model": models.DEFAULT_MODEL_REF}


@when("a short whole answer of the default model is asked of the queen with a timeout of {n:g} seconds")
def step_short_default_timeout(context, n):
    ask_queen_timed(context, {**SHORT, "timeout": n})


@then("the queen answered within {n:g} seconds of the request")
def step_queen_answered_in(context, n):
    took = time.monotonic() - context.sent_at  # the step that asked waited for the answer
    print(f"the queen answered {context.response.status_code} after at most {took:.2f} s")
    assert took <= n * context.cluster.k, f"{took:.2f} s"


def _hive_log_fields(context, msg: str, model: str) -> list[dict]:
    """The hive's log lines with ``msg`` about ``model`` (the log file is the feature's: earlier scenarios'
    lines come first)."""
    lines = context.cluster.hive_process.log_path.read_text(errors="replace").splitlines()
    found = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("msg") == msg and entry.get("model_ref") == model:
                found.append(entry)
    return found


@then("the hive's log says it waited for the worker within the request's deadline, at most {ms:d} ms")
def step_hive_log_deadline(context, ms):
    msg = "spawn: waiting for the worker within the request's deadline"
    model = models.DEFAULT_MODEL_REF
    wait_until(lambda: _hive_log_fields(context, msg, model), 10 * context.cluster.k,
               what=f"'{msg}' in the hive's log")
    entry = _hive_log_fields(context, msg, model)[-1]
    print(f"hive log: {entry}")
    assert 0 <= entry["deadline_ms"] <= ms, entry  # 0 on a loaded machine: the queen's plan call took it all
    workers = context.cluster.hive.workers()
    assert len(workers) == 1, workers
    context.started_worker = workers[0]["worker_id"]


@then("a short whole answer through the queen is served once the worker that went on starting is idle")
def step_served_after(context):
    context.execute_steps("Then the worker the hive started is idle at the queen within 60 seconds")
    r = context.cluster.queen.post("/v1/inference", json=SHORT, timeout=60 * context.cluster.k)
    assert r.status_code == 200, r.text[:500]
    workers = [w.worker_id for w in context.cluster.queen.workers()]
    assert workers == [context.started_worker], f"one spawn for the model, not {workers}"


@given("the hive knows its devices")
def step_hive_devices_known(context):
    r = context.cluster.hive.get("/v1/devices", timeout=60 * context.cluster.k)  # answers once detected
    assert r.status_code == 200, r.text

"""Steps for the last of "fail closed": the worker's metrics behind the cluster key, body read deadlines,
the hive bounding a spawn by the request's deadline, the keeper waiting for a starting queen, and the
queen's retried health probes of hives."""

from __future__ import annotations

from behave import then

from rbee.client import WorkerClient


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

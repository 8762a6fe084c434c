"""Steps about the queen's worker registry. Each one calls the real queen over HTTP."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from behave import step, then, when

SEED_URL = "http://localhost:8081"


def _payload(worker_id: str, model: str = "tinyllama-q4", node: str = "test-node", slots: int = 4,
             url: str = SEED_URL) -> dict:
    return {"worker_id": worker_id, "url": url, "model_ref": model, "backend": "cpu", "device": 0,
            "node_name": node, "slots_total": slots}


@step('worker "{worker_id:Q}" registers with model "{model:Q}" on node "{node:Q}" with {slots:d} slots')
def step_register(context, worker_id, model, node, slots):
    context.response = context.cluster.queen.register(_payload(worker_id, model, node, slots))


@then('the queen confirms exactly that worker "{worker_id:Q}" registered successfully')
def step_exact_confirmation(context, worker_id):
    expected = {"success": True, "message": f"Worker '{worker_id}' registered successfully", "worker_id": worker_id}
    assert context.response.status_code == 200, context.response.text
    assert context.response.text == json.dumps(expected, separators=(",", ":")), context.response.text


@then("the registration succeeds")
def step_registration_ok(context):
    assert context.response.status_code == 200, context.response.text
    assert context.response.json()["success"] is True


@then('the queen lists worker "{worker_id:Q}" with')
def step_listed_with(context, worker_id):
    worker = context.cluster.queen.worker(worker_id)
    assert worker is not None, f"{worker_id} not listed"
    listed = worker.model_dump(mode="json")
    for row in context.table:
        assert str(listed[row["field"]]) == row["value"], f"{row['field']}: {listed[row['field']]!r} != {row['value']!r}"


@when("{count:d} distinct workers register at the same time")
def step_concurrent_registrations(context, count):
    queen = context.cluster.queen
    payloads = [_payload(f"conc-{i:02d}", url=f"http://127.0.0.1:{20000 + i}") for i in range(count)]
    with ThreadPoolExecutor(max_workers=count) as pool:
        context.responses = list(pool.map(queen.register, payloads))


@then("all {count:d} registrations succeed")
def step_all_succeed(context, count):
    codes = [r.status_code for r in context.responses]
    assert codes == [200] * count, codes


@then("the queen lists each of the {count:d} workers exactly once")
def step_each_once(context, count):
    ids = [w.worker_id for w in context.cluster.queen.workers()]
    assert sorted(ids) == [f"conc-{i:02d}" for i in range(count)], ids


@then('the queen lists worker "{worker_id:Q}" exactly once with {slots:d} slots')
def step_once_with_slots(context, worker_id, slots):
    matches = [w for w in context.cluster.queen.workers() if w.worker_id == worker_id]
    assert len(matches) == 1, matches
    assert matches[0].slots_total == slots, matches[0]


@when('another worker registers as "{worker_id:Q}" at a different address')
def step_conflicting(context, worker_id):
    context.response = context.cluster.queen.register(_payload(worker_id, url="http://localhost:9999"))


@then('the queen lists worker "{worker_id:Q}" at its original address')
def step_original_address(context, worker_id):
    worker = context.cluster.queen.worker(worker_id)
    assert worker is not None and worker.url == SEED_URL, worker


@when('worker "{worker_id:Q}" is removed')
def step_remove(context, worker_id):
    context.response = context.cluster.queen.delete(f"/v2/workers/{worker_id}")


@then("the removal succeeds")
def step_removal_ok(context):
    assert context.response.status_code == 204, context.response.text


@then('the queen does not list worker "{worker_id:Q}"')
def step_not_listed(context, worker_id):
    assert context.cluster.queen.worker(worker_id) is None


@then('removing worker "{worker_id:Q}" again is refused with {status:d} "{code:Q}"')
def step_remove_again(context, worker_id, status, code):
    context.response = context.cluster.queen.delete(f"/v2/workers/{worker_id}")
    context.execute_steps(f'Then the queen refuses with {status} "{code}"')


@when("a registration arrives whose {field} is {bad_value}")
def step_bad_registration(context, field, bad_value):
    payload = _payload("worker-bad")
    payload[field] = json.loads(bad_value)
    context.response = context.cluster.queen.register(payload)


@then('the error message names the field "{field:Q}"')
def step_message_names_field(context, field):
    error = context.response.json()["error"]
    assert field in error["message"], error
    assert any(f["field"] == field for f in error["details"]["fields"]), error


@then("the queen lists no workers")
def step_no_workers(context):
    assert context.cluster.queen.workers() == []

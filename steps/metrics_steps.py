"""Steps about the Prometheus metrics of the queen and of the workers."""

from __future__ import annotations

from behave import given, then, when
from prometheus_client.parser import text_string_to_metric_families

from rbee.testing.clients import wait_until


def scrape(client) -> list[tuple[str, dict[str, str], float]]:
    """Every sample at ``/metrics`` as (name, labels, value)."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(r.text) for s in f.samples]


def total(samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


def _queen(context):
    return scrape(context.cluster.queen)


def _worker(context, worker_id: str):
    return scrape(context.cluster.workers[worker_id].client)


def _slots(context, worker_id: str) -> tuple[float, float]:
    samples = _queen(context)
    return (total(samples, "rbee_queen_worker_slots_busy", worker_id=worker_id),
            total(samples, "rbee_queen_worker_slots_total", worker_id=worker_id))


@given('the queen\'s and worker "{worker_id:Q}"\'s metrics have been read')
def step_baseline(context, worker_id):
    context.before = {"queen": _queen(context), "worker": _worker(context, worker_id)}


@when("the queen's metrics are read")
def step_read(context):
    context.samples = _queen(context)


@then('the metrics count {n:d} workers "{state:Q}"')
def step_workers_in_state(context, n, state):
    assert total(context.samples, "rbee_queen_workers", state=state) == n, context.samples


@then('the metrics show worker "{worker_id:Q}" with {busy:d} of {slots:d} slots busy')
def step_slots_now(context, worker_id, busy, slots):
    got = (total(context.samples, "rbee_queen_worker_slots_busy", worker_id=worker_id),
           total(context.samples, "rbee_queen_worker_slots_total", worker_id=worker_id))
    assert got == (busy, slots), got


@then('the queen\'s metrics show worker "{worker_id:Q}" with {busy:d} of {slots:d} slots busy within {n:d} seconds')
def step_slots_soon(context, worker_id, busy, slots, n):
    wait_until(lambda: _slots(context, worker_id) == (busy, slots), n * context.cluster.k,
               what=f"{busy} of {slots} slots busy on {worker_id}")


@then("the queen's metrics count {count:d} cancellation within {n:d} seconds")
def step_cancellations(context, count, n):
    wait_until(lambda: total(_queen(context), "rbee_queen_cancellations_total") == count, n * context.cluster.k,
               what=f"{count} cancellation(s) counted")


@then('the queen counted one more "{route:Q}" answer with status {status:d}')
def step_one_more_request(context, route, status):
    def count(samples):
        return total(samples, "rbee_queen_requests_total", route=route, status=str(status))

    # Counted when the handler returns, a moment after the client read the last byte.
    expected = count(context.before["queen"]) + 1
    wait_until(lambda: count(_queen(context)) == expected, 5 * context.cluster.k, what=f"{route} counted")


@then("the queen counted the answer's tokens as generated, one more time to first token and one more queue wait")
def step_queen_tokens(context):
    now, before, tokens = _queen(context), context.before["queen"], context.result.done["total_tokens"]
    assert tokens > 0
    for name, more in (("rbee_queen_tokens_generated_total", tokens), ("rbee_queen_time_to_first_token_seconds_count", 1),
                       ("rbee_queen_queue_wait_seconds_count", 1)):
        assert total(now, name) == total(before, name) + more, name


@then('worker "{worker_id:Q}" counted the answer\'s tokens as generated')
def step_worker_tokens(context, worker_id):
    tokens = context.result.done["total_tokens"]
    name = "rbee_worker_tokens_generated_total"
    assert total(_worker(context, worker_id), name) == total(context.before["worker"], name) + tokens

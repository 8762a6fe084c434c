"""Steps for the hive's /metrics, read from a real hive in Prometheus' text format."""

from __future__ import annotations

from behave import then
from prometheus_client.parser import text_string_to_metric_families

from rbee.testing.clients import wait_until


def _samples(context, key: str | None = None) -> dict[tuple[str, tuple], float]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = context.cluster.hive.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def _value(context, name: str) -> float:
    return _samples(context, getattr(context, "hive_key", None)).get((name, ()), float("nan"))


@then("the hive's metric {name} reads {value:d}")
def step_metric_reads(context, name, value):
    # Counted where it happens, which may be a moment after what the scenario saw: poll briefly for the figure.
    wait_until(lambda: _value(context, name) == value, 10 * context.cluster.k,
               what=f"{name} == {value} (it is {_value(context, name)})")


@then("the hive's metric {name} reads at least {value:d}")
def step_metric_at_least(context, name, value):
    wait_until(lambda: _value(context, name) >= value, 10 * context.cluster.k,
               what=f"{name} >= {value} (it is {_value(context, name)})")


@then('the hive\'s metrics count 1 completed download, 1 resume, 0 failures and the bytes of "{ref:Q}"')
def step_download_counts(context, ref):
    size = next(m["size_bytes"] for m in context.cluster.hive.get("/v1/models").json()["models"]
                if m["model_ref"] == ref)
    got = {n: _value(context, f"rbee_hive_{n}_total")
           for n in ("downloads_completed", "download_resumes", "download_failures", "download_bytes")}
    assert (got["downloads_completed"], got["download_resumes"], got["download_failures"]) == (1, 1, 0), got
    # 40 % before the drop, then the rest from there: the file once, give or take the chunk in flight at the drop.
    assert size <= got["download_bytes"] < size * 1.5, (size, got)


@then("the hive's metrics report host memory, free at most total")
def step_host_memory(context):
    samples = _samples(context)
    total = samples[("rbee_hive_memory_total_bytes", (("device", "host"),))]
    free = samples[("rbee_hive_memory_free_bytes", (("device", "host"),))]
    assert 0 < free <= total, (free, total)


@then("the hive's metrics are refused without the cluster key and served with it")
def step_metrics_keyed(context):
    refused = context.cluster.hive.get("/metrics")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "MISSING_API_KEY", refused.text
    wrong = context.cluster.hive.get("/metrics", headers={"Authorization": "Bearer not-the-cluster-key-at-all"})
    assert wrong.status_code == 401, wrong.text
    assert ("rbee_hive_worker_spawns_total", ()) in _samples(context, context.hive_key)

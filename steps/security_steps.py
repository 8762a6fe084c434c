"""Steps about who may drive the parts (API keys, cluster key, rate limits), hostile input, and logs."""

from __future__ import annotations

import json
import re

import requests
from behave import given, then, when

from rbee.client import QueenClient, WorkerClient
from rbee.testing.clients import wait_until
from rbee.testing.cluster import start_fake_worker

SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _client(context, key: str | None = None) -> QueenClient:
    return QueenClient(context.cluster.queen_url, api_key=key)


def _caller(context) -> QueenClient:
    """Any client of the queen: with no key, or with the deployed fleet's (``-D api_key``)."""
    return _client(context, context.fleet_key)


def _start_queen(context, *flags: str, key: str | None = None) -> None:
    """Start a queen; the cluster's own client (registrations, listings) carries ``key``."""
    queen = context.cluster.start_queen(*flags)
    if key:
        queen.session.headers["Authorization"] = f"Bearer {key}"


def _envelope(response: requests.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body
    return body["error"]


# ---------------------------------------------------------------- queens with keys and limits


@given('a queen that requires the API key "{key:Q}"')
def step_queen_key(context, key):
    _start_queen(context, "--api-key", key, key=key)


@given('a queen that reads its API keys from a file holding "{a:Q}" and "{b:Q}"')
def step_queen_key_file(context, a, b):
    path = context.log_dir / "api-keys.txt"
    path.write_text(f"{a}\n\n  {b}  \n")
    path.chmod(0o600)  # a key file others can read is refused
    _start_queen(context, "--api-key-file", str(path), key=a)


@given('a queen with the API key "{key:Q}" and the cluster key "{cluster:Q}"')
def step_queen_key_cluster(context, key, cluster):
    _start_queen(context, "--api-key", key, "--cluster-key", cluster, key=key)


@given('a queen with the cluster key "{cluster:Q}"')
def step_queen_cluster(context, cluster):
    _start_queen(context, "--cluster-key", cluster, key=cluster)


@given('a queen that requires the API key "{a:Q}" or "{b:Q}" and allows each {rpm:d} request a minute')
@given('a queen that requires the API key "{a:Q}" or "{b:Q}" and allows each {rpm:d} requests a minute')
def step_queen_rpm(context, a, b, rpm):
    _start_queen(context, "--api-key", a, "--api-key", b, "--rate-limit-rpm", str(rpm), key=a)


@given('a queen that requires the API key "{a:Q}" or "{b:Q}" and lets each run {n:d} answer at a time')
def step_queen_concurrent(context, a, b, n):
    _start_queen(context, "--api-key", a, "--api-key", b, "--rate-limit-concurrent", str(n), key=a)


@given("a queen that logs prompts")
def step_queen_log_prompts(context):
    _start_queen(context, "--log-prompts")


@given('a scripted worker "{worker_id:Q}" with {slots:d} slots that streams slowly is registered')
def step_slow_worker_slots(context, worker_id, slots):
    context.cluster.register(start_fake_worker(context.cluster, worker_id, slots=slots, interval=0.05))


# ---------------------------------------------------------------- asking with and without keys


@when("a client without a key lists the workers")
def step_list_no_key(context):
    context.response = _client(context).get("/v2/workers/list")


@when('a client with the key "{key:Q}" lists the workers')
def step_list_key(context, key):
    context.response = _client(context, key).get("/v2/workers/list")


@when('a client with the key "{key:Q}" asks for the model list')
def step_models_key(context, key):
    context.response = _client(context, key).get("/v1/models")


@when('a client with the key "{key:Q}" reads the metrics')
def step_metrics_key(context, key):
    context.response = _client(context, key).get("/metrics")


@when("a client without a key reads the metrics")
def step_metrics_no_key(context):
    context.response = _client(context).get("/metrics")


@when('"{key:Q}" asks for the model list {n:d} times')
@when('"{key:Q}" asks for the model list {n:d} time')
def step_models_times(context, key, n):
    client = _client(context, key)
    context.answers = [client.get("/v1/models") for _ in range(n)]
    context.response = context.answers[-1]


@when('"{key:Q}" asks the queen for {n:d} tokens')
def step_key_infer(context, key, n):
    context.response = None
    context.result = _client(context, key).infer({"prompt": "Hi", "max_tokens": n})


@when('"{key:Q}" streams {n:d} tokens of "{prompt:Q}" through the queen')
def step_key_stream(context, key, n, prompt):
    context.response = None
    context.result = _client(context, key).infer({"prompt": prompt, "max_tokens": n})


@when('a client streams {n:d} tokens of "{prompt:Q}" through the queen with the request id "{rid:Q}"')
def step_stream_with_id(context, n, prompt, rid):
    context.response = None
    context.result = _client(context).infer({"prompt": prompt, "max_tokens": n}, headers={"X-Request-Id": rid})


@when('a client asks the completions route of model "{model:Q}" for {n:d} tokens of "{prompt:Q}"')
def step_plain_completion(context, model, n, prompt):
    context.response = _client(context).post("/v1/completions", json={"model": model, "prompt": prompt,
                                                                      "max_tokens": n})


# ---------------------------------------------------------------- answers


@then("the queen serves it")
def step_served(context):
    assert context.response.status_code == 200, context.response.text


@then("a client without a key still gets the queen's health")
def step_health_open(context):
    assert _client(context).get("/health").status_code == 200


@then('the queen refuses the OpenAI call with {status:d} "{code:Q}" of type "{kind:Q}"')
def step_refused_openai(context, status, code, kind):
    assert context.response.status_code == status, (context.response.status_code, context.response.text)
    error = _envelope(context.response)
    assert error["code"] == code and error["type"] == kind and error["message"], error


@then("the first {n:d} answers were served")
def step_first_served(context, n):
    assert [r.status_code for r in context.answers[:n]] == [200] * n, [r.text for r in context.answers]


@then('"{key:Q}" is served again within {n:d} seconds')
def step_served_again(context, key, n):
    client = _client(context, key)
    wait_until(lambda: client.infer({"prompt": "Hi", "max_tokens": 2}).done, n * context.cluster.k,
               what=f"an answer for {key}")


# ---------------------------------------------------------------- cluster key on workers and hives


@given('a real worker "{worker_id:Q}" started with the cluster key "{cluster:Q}" is registered')
def step_guarded_worker(context, worker_id, cluster):
    context.cluster.register(context.cluster.start_worker(worker_id=worker_id, extra=("--cluster-key", cluster)))


@when('a client asks worker "{worker_id:Q}" directly for {n:d} tokens without the key')
def step_worker_no_key(context, worker_id, n):
    context.response = context.cluster.workers[worker_id].client.post("/v1/inference",
                                                                       json={"prompt": "Hi", "max_tokens": n})


@when('a client tells worker "{worker_id:Q}" to shut down with the key "{key:Q}"')
def step_worker_shutdown_key(context, worker_id, key):
    url = context.cluster.workers[worker_id].url
    context.response = WorkerClient(url, api_key=key).post("/v1/admin/shutdown")


@when('a client cancels request "{rid:Q}" at worker "{worker_id:Q}" without the key')
def step_worker_cancel_no_key(context, rid, worker_id):
    context.response = context.cluster.workers[worker_id].client.delete(f"/v1/inference/{rid}")


@given('a hive started with the cluster key "{cluster:Q}"')
def step_hive_key(context, cluster):
    context.cluster.start_hive("--cluster-key", cluster)
    context.hive_key = cluster


@when("a client without the cluster key asks the hive for a worker")
def step_hive_spawn_no_key(context):
    context.response = context.cluster.hive.spawn()


@when("the hive is asked for a worker with the cluster key")
def step_hive_spawn_key(context):
    context.cluster.hive.session.headers["Authorization"] = f"Bearer {context.hive_key}"
    context.hive_worker_id = context.cluster.spawn_on_hive()


@then('the worker refuses with {status:d} "{code:Q}"')
@then('the hive refuses with {status:d} "{code:Q}"')
def step_part_refused(context, status, code):
    assert context.response.status_code == status, (context.response.status_code, context.response.text)
    assert _envelope(context.response)["code"] == code


@when('the queen is told to shut down worker "{worker_id:Q}"')
def step_queen_shutdown(context, worker_id):
    context.response = context.cluster.queen.post("/v2/workers/shutdown", json={"worker_id": worker_id})


@then('the queen says worker "{worker_id:Q}" accepted the shutdown')
def step_shutdown_accepted(context, worker_id):
    assert context.response.status_code == 200, context.response.text
    assert context.response.json() == {"worker_id": worker_id, "shutdown_requested": True, "removed": True}


@then('worker "{worker_id:Q}" is still ready')
def step_worker_ready(context, worker_id):
    assert context.cluster.workers[worker_id].client.ready()["ready"] is True


# ---------------------------------------------------------------- hostile input


@when("a client sends a chat completion body that breaks off after {n:d} characters")
def step_broken_json(context, n):
    body = json.dumps({"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]})
    context.response = _caller(context).post("/v1/chat/completions", data=body[:n],
                                             headers={"Content-Type": "application/json"})


@then("the error says the JSON broke at line {line:d} column {column:d}")
def step_broken_where(context, line, column):
    error = _envelope(context.response)
    assert error["details"] == {"line": line, "column": column}, error
    assert f"line {line} column {column}" in error["message"], error


@when("a client sends an inference request of {mib:d} MiB")
def step_huge(context, mib):
    body = json.dumps({"prompt": "x" * (mib * 1024 * 1024)})
    context.response = _caller(context).post("/v1/inference", data=body, headers={"Content-Type": "application/json"})


@when("a client asks for a chat completion with {field} set to {value}")
def step_chat_field(context, field, value):
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value  # a bare word is sent as a string
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}], field: parsed}
    context.response = _caller(context).post("/v1/chat/completions", json=body)


@when('a client marks worker "{worker_id:Q}" as draining')
def step_patch_worker(context, worker_id):
    context.response = _caller(context).patch(f"/v2/workers/{requests.utils.quote(worker_id, safe='')}",
                                              json={"state": "draining"})


def _hive_headers(context) -> dict[str, str]:
    return {"Authorization": f"Bearer {context.hive_key}", "Content-Type": "application/json"}


@when("the hive is asked with the cluster key to spawn a worker with {field} set to {value}")
def step_hive_field(context, field, value):
    context.response = context.cluster.hive.post("/v1/workers/spawn", data=json.dumps({field: json.loads(value)}),
                                                 headers=_hive_headers(context))


@when("the hive is sent a spawn body that is not JSON with the cluster key")
def step_hive_broken(context):
    context.response = context.cluster.hive.post("/v1/workers/spawn", data=b"{spawn", headers=_hive_headers(context))


BROKEN = [  # (method, path, body): each must be refused with a 4xx, whatever the route
    ("POST", "/v1/inference", b"{"), ("POST", "/v1/inference", b"[]"), ("POST", "/v1/inference", b'{"prompt": 5}'),
    ("POST", "/v1/inference", b'{"prompt": "x", "max_tokens": -1}'), ("POST", "/v1/inference", b'{"prompt":""}'),
    ("POST", "/v1/inference", b'{"prompt": "x", "surprise": true}'), ("POST", "/v1/inference", b"\xff\xfe"),
    ("POST", "/v1/chat/completions", b'{"model": "x"}'), ("POST", "/v1/chat/completions", b'{"messages": []}'),
    ("POST", "/v1/chat/completions", b'{"model": "x", "messages": [{"role": "robot", "content": "x"}]}'),
    ("POST", "/v1/completions", b'{"model": "x", "prompt": [1, 2, 3]}'), ("POST", "/v1/completions", b"null"),
    ("POST", "/v1/completions", b'{"model": "nobody-serves-this", "prompt": "x"}'),
    ("POST", "/v2/workers/register", b'{"worker_id": "../x", "url": "http://a", "model_ref": "m"}'),
    ("POST", "/v2/workers/register", b'{"worker_id": "ok", "url": "ftp://a", "model_ref": "m"}'),
    ("POST", "/v2/workers/register", b'{"worker_id": "ok", "url": "http://a", "model_ref": "a b"}'),
    ("PATCH", "/v2/workers/steady", b'{"state": "sleeping"}'), ("PATCH", "/v2/workers/nobody", b'{"state": "idle"}'),
    ("POST", "/v2/workers/steady/heartbeat", b'{"slots_available": -3}'),
    ("POST", "/v2/workers/shutdown", b'{"worker_id": "a/b"}'), ("DELETE", "/v2/workers/nobody", b""),
    ("DELETE", "/v2/workers/%2e%2e", b""), ("GET", "/v1/models/nobody", b""), ("PUT", "/v1/inference", b"{}"),
    ("GET", "/nowhere", b""),
]


@when("a client sends every kind of broken request to the queen")
def step_barrage(context):
    client = _client(context)
    context.answers = [client.session.request(m, client.base_url + path, data=body, timeout=10,
                                              headers={"Content-Type": "application/json"})
                       for m, path, body in BROKEN]


@then("each was refused with a 4xx in the one envelope")
def step_each_refused(context):
    for (method, path, _), r in zip(BROKEN, context.answers, strict=True):
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
        assert _envelope(r)["message"], (method, path, r.text)


@then('the queen still lists only worker "{worker_id:Q}", idle, and answers its health')
def step_unchanged(context, worker_id):
    workers = context.cluster.queen.workers()
    assert [(w.worker_id, w.state) for w in workers] == [(worker_id, "idle")], workers
    assert _client(context).get("/health").status_code == 200


@then("the answer carries a fresh request id that is a safe name")
def step_fresh_id(context):
    assert context.result.status == 200, context.result.error_body
    rid = context.result.headers.get("X-Request-Id", "")
    assert SAFE_ID.match(rid), rid


@then('the answer carries the request id "{rid:Q}"')
def step_same_id(context, rid):
    assert context.result.headers.get("X-Request-Id") == rid, context.result.headers


# ---------------------------------------------------------------- logs


def _log_text(context, name: str) -> str:
    proc = context.cluster.queen_process if name == "queen" else context.cluster.workers[name].process
    return proc.log_path.read_text(errors="replace")


@then("every line of the queen's log is a JSON object")
def step_json_lines(context):
    lines = [ln for ln in _log_text(context, "queen").splitlines() if ln.strip()]
    assert lines and all(json.loads(ln)["service"] == "queen-rbee" for ln in lines), lines[:5]


@then('the queen\'s log does not contain "{a:Q}", "{b:Q}" or "{c:Q}"')
def step_log_lacks(context, a, b, c):
    text = _log_text(context, "queen")
    assert not [s for s in (a, b, c) if s in text], text[-2000:]


@then('the queen\'s log contains "{text:Q}" within {n:d} seconds')
def step_log_has(context, text, n):
    wait_until(lambda: text in _log_text(context, "queen"), n * context.cluster.k, what=f"{text!r} in the log")


@then('the request id "{rid:Q}" is in the queen\'s log and in worker "{worker_id:Q}"\'s log within {n:d} seconds')
def step_rid_logged(context, rid, worker_id, n):
    def logged(name: str) -> bool:
        return any(json.loads(ln).get("request_id") == rid for ln in _log_text(context, name).splitlines()
                   if ln.startswith("{"))

    wait_until(lambda: logged("queen") and logged(worker_id), n * context.cluster.k, what=f"{rid} in both logs")

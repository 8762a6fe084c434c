"""Steps for rotating keys without a restart: real queen and hive processes, real key files, real SIGHUP."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from behave import given, then, when

from rbee.client import HiveClient, QueenClient
from rbee.testing.clients import BackgroundStream, wait_until

CONTROL_KEY = "control-cluster-0123456789"  # the cluster's own client (registrations) uses it, never rotated


def _write_keys(path: Path, *keys: str) -> None:
    path.write_text("".join(f"{k}\n" for k in keys))
    path.chmod(0o600)


def _key_path(context, name: str) -> Path:
    return context.log_dir / f"{name}-{id(context.scenario)}.keys"


def _start_keyed_queen(context, key: str, *extra: str) -> None:
    context.key_file = _key_path(context, "api")
    _write_keys(context.key_file, key)
    queen = context.cluster.start_queen("--api-key-file", str(context.key_file), "--cluster-key", CONTROL_KEY,
                                        *extra)
    queen.session.headers["Authorization"] = f"Bearer {CONTROL_KEY}"
    context.signalled = context.cluster.queen_process
    context.signalled_log = context.log_dir / "queen.log"


@given('a queen whose API key file holds "{key:Q}"')
def step_queen_key_file(context, key):
    _start_keyed_queen(context, key)


@given('a queen whose API key file holds "{key:Q}" and whose admin key is "{admin:Q}"')
def step_queen_admin(context, key, admin):
    admin_file = _key_path(context, "admin")
    _write_keys(admin_file, admin)
    _start_keyed_queen(context, key, "--admin-key-file", str(admin_file))


@given('a hive whose cluster key file holds "{key:Q}"')
def step_hive_key_file(context, key):
    context.cluster.start_queen()
    context.key_file = _key_path(context, "cluster")
    _write_keys(context.key_file, key)
    context.cluster.start_hive("--cluster-key-file", str(context.key_file))
    context.signalled = context.cluster.hive_process
    context.signalled_log = context.log_dir / "hive.log"


# ---------------------------------------------------------------- changing the files


@when('the API key file is changed to hold "{key:Q}" only')
def step_new_key(context, key):
    _write_keys(context.key_file, key)


@when('the cluster key file is changed to hold "{a:Q}" and "{b:Q}"')
def step_new_cluster_keys(context, a, b):
    _write_keys(context.key_file, a, b)


@when("the API key file is made readable by other users")
@when("the cluster key file is made readable by other users")
def step_loose(context):
    context.key_file.chmod(0o644)


@when("the API key file is emptied")
def step_emptied(context):
    context.key_file.write_text("\n \n")


@when("the API key file is removed")
def step_removed(context):
    context.key_file.unlink()


@when('the API key file is changed to hold the short key "{key:Q}"')
def step_short(context, key):
    _write_keys(context.key_file, key)


# ---------------------------------------------------------------- reloading


def _log_lines(context, message: str) -> list[dict]:
    lines = []
    for line in context.signalled_log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("msg", "").startswith(message):
            lines.append(entry)
    return lines


def _sighup(context, says: str) -> None:
    before = len(_log_lines(context, says))
    os.kill(context.signalled.pid, signal.SIGHUP)
    wait_until(lambda: len(_log_lines(context, says)) > before, 10 * context.cluster.k,
               what=f"'{says}' in {context.signalled_log.name} after SIGHUP")
    running = getattr(context, "rotation_stream", None)
    context.stream_running_at_reload = running is not None and not running.terminated


@when("the queen is sent SIGHUP and says it reloaded its keys")
@when("the hive is sent SIGHUP and says it reloaded its keys")
def step_sighup_ok(context):
    _sighup(context, "keys reloaded")


@when("the queen is sent SIGHUP and says the reload failed")
@when("the hive is sent SIGHUP and says the reload failed")
def step_sighup_failed(context):
    _sighup(context, "key reload failed")


@when('a client with the key "{key:Q}" asks the queen to reload its keys')
def step_reload_http(context, key):
    context.response = QueenClient(context.cluster.queen_url, api_key=key).post("/v2/admin/reload")


# ---------------------------------------------------------------- a stream across the reload


@given('"{key:Q}" is streaming a {n:d}-token answer through the queen')
def step_rotation_stream(context, key, n):
    body = {"prompt": "Count from one to a thousand:", "max_tokens": n, "ignore_eos": True, "temperature": 0}
    stream = BackgroundStream(QueenClient(context.cluster.queen_url, api_key=key), "/v1/inference", body)
    context.add_cleanup(stream.abandon)
    assert stream.response.status_code == 200, stream.response.text
    stream.wait_first_event(60 * context.cluster.k)
    context.rotation_stream = stream


@then('the answer of "{key:Q}" was still streaming when the keys changed')
def step_was_streaming(context, key):
    assert context.stream_running_at_reload, "the answer had already ended before the reload: make it longer"


@then('the answer of "{key:Q}" ends with all {n:d} tokens and [DONE]')
def step_stream_finished(context, key, n):
    stream = context.rotation_stream
    stream.wait_finished(300 * context.cluster.k)  # a loaded 2-core machine may give ~1 token a second
    done = [e for e in stream.events if "done" in e]
    assert stream.terminated and done, stream.events[-3:]
    assert done[-1]["total_tokens"] == n, done[-1]


# ---------------------------------------------------------------- answers


def _error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def _refused(response, status: int, code: str, words: str = "") -> None:
    assert response.status_code == status, (response.status_code, response.text)
    error = _error(response)
    assert error["code"] == code, error
    assert words in error["message"], error


@then('a client with the key "{key:Q}" is refused with {status:d} "{code:Q}"')
def step_key_refused(context, key, status, code):
    _refused(QueenClient(context.cluster.queen_url, api_key=key).get("/v1/models"), status, code)


@then('a client without a key is refused with {status:d} "{code:Q}"')
def step_no_key_refused(context, status, code):
    _refused(QueenClient(context.cluster.queen_url).get("/v1/models"), status, code)


@then('the key "{key:Q}" still opens the model list')
def step_key_lists(context, key):
    r = QueenClient(context.cluster.queen_url, api_key=key).get("/v1/models")
    assert r.status_code == 200, r.text


@then('a client with the key "{key:Q}" is served')
def step_key_served(context, key):
    result = QueenClient(context.cluster.queen_url, api_key=key).infer({"prompt": "Hi", "max_tokens": 2})
    assert result.done is not None, (result.status, result.events[-2:])


@then('the reload is refused with {status:d} "{code:Q}"')
def step_reload_refused(context, status, code):
    _refused(context.response, status, code)


@then('the reload is refused with {status:d} "{code:Q}" saying "{words:Q}"')
def step_reload_refused_saying(context, status, code, words):
    _refused(context.response, status, code, words)


@then("the reload answer says 1 API key, with one fingerprint added and one removed, and no key itself")
def step_reload_answer(context):
    r = context.response
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reloaded"] is True and body["keys"]["api"] == 1, body
    assert len(body["added"]["api"]) == 1 and len(body["removed"]["api"]) == 1, body
    assert all(fp.startswith("key-") and len(fp) == 16 for fp in body["added"]["api"] + body["removed"]["api"])
    assert "0123456789abcdef" not in r.text, r.text  # neither the old key nor the new one is echoed


@then('the queen\'s log says the reload failed saying "{words:Q}"')
def step_log_failed(context, words):
    wait_until(lambda: any(words in e["msg"] for e in _log_lines(context, "key reload failed")),
               5 * context.cluster.k, what=f"a failed reload saying '{words}' in the queen's log")
    assert "0123456789abcdef" not in context.signalled_log.read_text(), "a key reached the log"


@then("the queen is still running")
def step_queen_alive(context):
    assert context.cluster.queen_process.alive(), "the queen died"
    assert context.cluster.queen.get("/health").status_code == 200


def _hive_call(context, key: str | None):
    return HiveClient(context.cluster.hive.base_url, api_key=key).post("/v1/workers/no-such-worker/shutdown")


@then('a control call to the hive with the key "{key:Q}" is refused with {status:d} "{code:Q}"')
def step_hive_refused(context, key, status, code):
    _refused(_hive_call(context, key), status, code)


@then('a control call to the hive without a key is refused with {status:d} "{code:Q}"')
def step_hive_refused_no_key(context, status, code):
    _refused(_hive_call(context, None), status, code)


@then('a control call to the hive with the key "{key:Q}" gets past the key check')
def step_hive_passes(context, key):
    r = _hive_call(context, key)
    assert r.status_code == 404 and _error(r)["code"] == "WORKER_NOT_FOUND", r.text

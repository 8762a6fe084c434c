"""Steps for the audit log: real queen and hive processes writing real files (a real tmpfs for a full
disk), checked with the real rbee-keeper."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from behave import given, then, when

from rbee.auth import fingerprint
from rbee.client import HiveClient, QueenClient
from rbee.ports import free_port
from rbee.testing.clients import wait_until

CONTROL = "audit-control-0123456789ab"  # the cluster key: registrations and metrics
ADMIN = "audit-admin-0123456789abc"


def _secret(context, name: str, key: str) -> Path:
    path = context.log_dir / f"{name}-{id(context.scenario)}.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


def _start_queen(context, key: str, *extra: str, audit_log: Path | None = None) -> None:
    context.audit_log = audit_log or context.log_dir / f"audit-{id(context.scenario)}.log"
    context.keys_seen = [key, CONTROL, ADMIN]
    args = ["--api-key", key, "--cluster-key", CONTROL, "--audit-log", str(context.audit_log), *extra]
    queen = context.cluster.start_queen(*args)
    queen.session.headers["Authorization"] = f"Bearer {CONTROL}"


@given('an audited queen with the API key "{key:Q}"')
def step_audited_queen(context, key):
    _start_queen(context, key)


@given('an audited queen with the API key "{key:Q}" and an admin key')
def step_audited_queen_admin(context, key):
    _start_queen(context, key, "--admin-key-file", str(_secret(context, "admin", ADMIN)))


@given('an audited queen with the API key "{key:Q}" and an admin key, rotating at {kb:d} KB')
def step_audited_queen_rotating(context, key, kb):
    _start_queen(context, key, "--admin-key-file", str(_secret(context, "admin", ADMIN)),
                 "--audit-max-mb", str(kb / 1024))
    context.max_bytes = kb * 1024


@given("an audited queen whose audit log is on a tiny file system")
def step_queen_on_tmpfs(context):
    mount = context.log_dir / f"tmpfs-{id(context.scenario)}"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True, timeout=30)
    context.add_cleanup(lambda: subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30))
    context.tmpfs = mount
    _start_queen(context, "audit-key-0123456789abcdef", audit_log=mount / "audit.log")


@given('an audited hive with the cluster key "{key:Q}"')
def step_audited_hive(context, key):
    context.cluster.start_queen()
    context.audit_log = context.log_dir / f"hive-audit-{id(context.scenario)}.log"
    context.keys_seen = [key]
    context.hive_key = key
    context.cluster.start_hive("--cluster-key-file", str(_secret(context, "cluster", key)),
                               "--audit-log", str(context.audit_log))


# ---------------------------------------------------------------- what clients do


@when('"{key:Q}" streams {n:d} tokens of "{prompt:Q}" through the queen with the request id "{rid:Q}"')
def step_stream_rid(context, key, n, prompt, rid):
    result = QueenClient(context.cluster.queen_url, api_key=key).infer({"prompt": prompt, "max_tokens": n},
                                                                       headers={"X-Request-Id": rid})
    assert result.done is not None, (result.status, result.events[-2:])


@when('a client with the key "{key:Q}" asks the audited queen for the model list')
def step_wrong_key(context, key):
    r = QueenClient(context.cluster.queen_url, api_key=key).get("/v1/models")
    assert r.status_code == 401, r.text


def _register(context, worker_id: str):
    return context.cluster.queen.register({"worker_id": worker_id, "url": "http://127.0.0.1:9",
                                           "model_ref": "scripted", "backend": "cpu", "device": 0,
                                           "node_name": "audit-node", "slots_total": 1})


@when('a worker "{worker_id:Q}" is registered with the audited queen')
def step_register(context, worker_id):
    r = _register(context, worker_id)
    assert r.status_code == 200, r.text


@when("the admin reloads the audited queen's keys")
def step_admin_reload(context):
    r = QueenClient(context.cluster.queen_url, api_key=ADMIN).post("/v2/admin/reload")
    assert r.status_code == 200, r.text


@given("the admin has reloaded the audited queen's keys {n:d} times")
@when("the admin has reloaded the audited queen's keys {n:d} times")
def step_admin_reloads(context, n):
    for _ in range(n):
        step_admin_reload(context)


@when('worker "{worker_id:Q}" is deregistered from the audited queen')
def step_deregister(context, worker_id):
    r = context.cluster.queen.delete(f"/v2/workers/{worker_id}")
    assert r.status_code == 204, r.text


def _hive(context, key: str | None) -> HiveClient:
    return HiveClient(context.cluster.hive.base_url, api_key=key)


@when('the hive is asked with its cluster key to shut down worker "{worker_id:Q}"')
def step_hive_shutdown(context, worker_id):
    assert _hive(context, context.hive_key).post(f"/v1/workers/{worker_id}/shutdown").status_code == 404


@when("the hive is asked with its cluster key to download a model with an empty body")
def step_hive_download(context):
    assert _hive(context, context.hive_key).post("/v1/models/download", json={}).status_code == 400


@when('the hive is asked with the key "{key:Q}" to shut down worker "{worker_id:Q}"')
def step_hive_wrong_key(context, key, worker_id):
    assert _hive(context, key).post(f"/v1/workers/{worker_id}/shutdown").status_code == 401


# ---------------------------------------------------------------- changing the log


def _file_lines(context) -> list[str]:
    return context.audit_log.read_text().splitlines(keepends=True)


@when("line {n:d} of the audit log is edited")
def step_edit_line(context, n):
    lines = _file_lines(context)
    lines[n - 1] = lines[n - 1].replace('"ok":true', '"ok":false').replace("127.0.0.1", "10.9.9.9")
    assert lines[n - 1] != _file_lines(context)[n - 1], lines[n - 1]
    context.audit_log.write_text("".join(lines))


@when("line {n:d} of the audit log is removed")
def step_remove_line(context, n):
    lines = _file_lines(context)
    context.audit_log.write_text("".join(lines[:n - 1] + lines[n:]))


@when("line {n:d} of the audit log is swapped with the line after it")
def step_swap_lines(context, n):
    lines = _file_lines(context)
    lines[n - 1], lines[n] = lines[n], lines[n - 1]
    context.audit_log.write_text("".join(lines))


@when("the audited queen is stopped and started again")
def step_restart(context):
    context.cluster.queen_process.stop(grace=15 * context.cluster.k)
    context.cluster.restart_queen()


@when("the audit log file is removed")
def step_remove_file(context):
    context.audit_log.unlink()


@when("the audited queen is sent SIGHUP")
def step_sighup(context):
    os.kill(context.cluster.queen_process.pid, signal.SIGHUP)
    wait_until(context.audit_log.exists, 10 * context.cluster.k, what="the audit log reopened after SIGHUP")


@when("the file system of the audit log is filled up")
def step_fill(context):
    filler = context.tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"x" * 512):
            pass
    except OSError:
        pass  # full
    finally:
        os.close(fd)
    context.filler = filler


@when("room is made on the file system of the audit log")
def step_room(context):
    context.filler.unlink()


# ---------------------------------------------------------------- what the log says


def _entries(context) -> list[dict]:
    return [json.loads(line) for line in _file_lines(context)]


def _find(context, event: str, **fields) -> dict:
    found = [e for e in _entries(context) if e["event"] == event and all(e.get(k) == v for k, v in fields.items())]
    assert found, (event, fields, [e for e in _entries(context) if e["event"] == event])
    return found[-1]


@then('the audit log records "{event:Q}" for "{route:Q}" from {client} with the fingerprint of "{key:Q}"')
def step_records_auth(context, event, route, client, key):
    entry = _find(context, event, route=route, client=client, key=fingerprint(key))
    assert entry["request_id"], entry


@then('the audit log records "inference.admitted", "inference.assigned" to "{worker_id:Q}" and '
      '"inference.finished" for "{rid:Q}"')
def step_records_inference(context, worker_id, rid):
    _find(context, "auth.ok", request_id=rid, action="inference")
    _find(context, "inference.admitted", request_id=rid)
    _find(context, "inference.assigned", request_id=rid, worker_id=worker_id)
    _find(context, "inference.finished", request_id=rid, worker_id=worker_id, outcome="done")
    seqs = [_find(context, e, request_id=rid)["seq"] for e in ("inference.admitted", "inference.assigned",
                                                               "inference.finished")]
    assert seqs == sorted(seqs), seqs


@then('the audit log records "auth.refused" for "{route:Q}" offering the fingerprint of "{key:Q}"')
def step_records_refused(context, route, key):
    _find(context, "auth.refused", route=route, offered=fingerprint(key), code="INVALID_API_KEY")


@then("neither key is anywhere in the audit log")
def step_no_keys(context):
    text = context.audit_log.read_text()
    assert not any(k in text for k in [*context.keys_seen, "wrong-key-0123456789abcdef"]), "a key is in the log"


@then('the audit log records, in order, the admin actions "{a:Q}" ({sa:d}), "{b:Q}" ({sb:d}) and "{c:Q}" ({sc:d})')
def step_records_actions(context, a, sa, b, sb, c, sc):
    seqs = [_find(context, "admin", action=name, status=status, key=fingerprint(k))["seq"]
            for name, status, k in ((a, sa, CONTROL), (b, sb, ADMIN), (c, sc, CONTROL))]
    assert seqs == sorted(seqs), seqs


@then('the audit log records "keys.reload" via "{via:Q}"')
def step_records_reload(context, via):
    _find(context, "keys.reload", via=via, ok=True)


@then('the hive\'s audit log records the admin action "{action:Q}" with status {status:d}')
def step_hive_action(context, action, status):
    entry = _find(context, "admin", action=action, status=status, key=fingerprint(context.hive_key))
    assert entry["part"] == "hive", entry


@then('the hive\'s audit log records "auth.refused" for "{route:Q}"')
def step_hive_refused(context, route):
    _find(context, "auth.refused", route=route, code="INVALID_API_KEY")


@then("the audit log was rotated into more than one file, none over {kb:d} KB")
def step_rotated(context, kb):
    files = sorted(context.audit_log.parent.glob(context.audit_log.name + ".*")) + [context.audit_log]
    assert len(files) > 1, files
    assert all(f.stat().st_size <= kb * 1024 for f in files), [(f.name, f.stat().st_size) for f in files]


# ---------------------------------------------------------------- rbee-keeper audit verify


def _verify(context) -> subprocess.CompletedProcess[str]:
    keeper = Path(sys.executable).parent / "rbee-keeper"
    return subprocess.run([str(keeper), "audit", "verify", str(context.audit_log)], capture_output=True, text=True,
                          check=False, timeout=60 * context.cluster.k)


@then("rbee-keeper audit verify says OK")
@then("rbee-keeper audit verify says OK of the hive's audit log")
def step_verify_ok(context):
    r = _verify(context)
    assert r.returncode == 0 and r.stdout.startswith("OK"), (r.returncode, r.stdout, r.stderr)


@then("rbee-keeper audit verify says OK with entries numbered 1 on without a gap")
def step_verify_whole(context):
    r = _verify(context)
    assert r.returncode == 0 and r.stdout.startswith("OK") and "starts at" not in r.stdout, (r.stdout, r.stderr)
    files = sorted(context.audit_log.parent.glob(context.audit_log.name + ".*")) + [context.audit_log]
    seqs = [json.loads(line)["seq"] for f in files for line in f.read_text().splitlines()]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert len(seqs) > 12, seqs


@then('rbee-keeper audit verify exits 1 naming line {n:d} as "{words:Q}"')
def step_verify_fails(context, n, words):
    r = _verify(context)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert re.search(rf"line {n}: .*{words}", r.stdout), r.stdout


# ---------------------------------------------------------------- refusals and metrics


@then('registering a worker with the audited queen is refused with {status:d} "{code:Q}"')
def step_register_refused(context, status, code):
    r = _register(context, "audit-refused")
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == code and "audit" in error["message"], error
    assert context.cluster.queen.worker("audit-refused") is None, "the refused registration ran anyway"


@then('registering workers with the audited queen is refused with {status:d} "{code:Q}" once the file\'s last '
      'page is full')
def step_register_refused_soon(context, status, code):
    """tmpfs gives room by the page: the entries that still fit in the audit file's last page are written."""
    for attempt in range(40):  # a 4 KiB page holds fewer than 40 entries
        r = _register(context, f"audit-fill-{attempt}")
        if r.status_code != 200:
            break
    assert r.status_code == status and r.json()["error"]["code"] == code, (attempt, r.status_code, r.text)
    assert context.cluster.queen.worker(f"audit-fill-{attempt}") is None, "the refused registration ran anyway"


@then("registering a worker with the audited queen is answered 200")
def step_register_ok(context):
    r = _register(context, "audit-accepted")
    assert r.status_code == 200, r.text


def _metric(context, name: str) -> float:
    text = context.cluster.queen.get("/metrics").text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


@then("the audited queen's metrics say the audit log is unavailable")
def step_metric_down(context):
    assert _metric(context, "rbee_audit_available") == 0
    assert _metric(context, "rbee_audit_write_failures_total") >= 1


@then("the audited queen's metrics say the audit log is available")
def step_metric_up(context):
    assert _metric(context, "rbee_audit_available") == 1


@then("the hive's metrics say the audit log is available")
def step_hive_metric(context):
    text = _hive(context, context.hive_key).get("/metrics").text
    assert re.search(r"^rbee_audit_available 1", text, re.MULTILINE), text[-2000:]
    assert re.search(r"^rbee_audit_entries_total [1-9]", text, re.MULTILINE), text[-2000:]


@then("the audited queen still answers its health check")
def step_health(context):
    assert context.cluster.queen.get("/health").status_code == 200


# ---------------------------------------------------------------- refusing to start


@when("the queen is started with an audit log {where}")
def step_start_bad_audit(context, where):
    path = context.log_dir / f"bad-audit-{id(context.scenario)}.log"
    if where == "in a folder that does not exist":
        path = context.log_dir / "no-such-folder" / "audit.log"
    else:
        path.write_text('{"seq":1,"prev":"' + "0" * 64 + '","hash":"forged"}\n')
    argv = [sys.executable, "-m", "rbee.queen", "--port", str(free_port()), "--audit-log", str(path)]
    context.result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60 * context.cluster.k)

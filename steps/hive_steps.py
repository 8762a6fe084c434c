"""Steps about one hive: its catalog, downloads from a stand-in hub, preflight, supervision, cold starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import requests
from behave import given, then, when

from rbee import models
from rbee.client import HiveClient, iter_events
from rbee.procfs import pid_alive
from rbee.testing.clients import wait_until
from rbee.testing.tiny_gguf import make_tiny_gguf

TINY_KB = 2048


def _k(context, seconds: float) -> float:
    return seconds * context.cluster.k


def _scenario_dir(context) -> Path:
    if not hasattr(context, "scenario_dir"):
        context.scenario_dir = context.log_dir / f"scenario-{uuid.uuid4().hex[:8]}"
        context.scenario_dir.mkdir(parents=True)
    return context.scenario_dir


# ---------------------------------------------------------------- a stand-in hub


def _hub(context, repo: str, file: str, local: Path, fault: str | None = None, token: str | None = None) -> None:
    name = f"{repo}/{file}"
    context.hub_url = context.cluster.start_fake_hub({name: local}, {name: fault} if fault else None, token)
    context.hub_file = name


def _tiny_file(context, file: str) -> Path:
    return make_tiny_gguf(_scenario_dir(context) / "hub" / file, size_kb=TINY_KB)


@given('a model hub that serves "{repo:Q}" with the file "{file:Q}"')
def step_hub(context, repo, file):
    _hub(context, repo, file, _tiny_file(context, file))


@given('a model hub that serves "{repo:Q}" with the file "{file:Q}" and drops the first transfer at 40 %')
def step_hub_drop(context, repo, file):
    _hub(context, repo, file, _tiny_file(context, file), fault="drop")


@given('a model hub that serves "{repo:Q}" with the file "{file:Q}" only with a token')
def step_hub_gated(context, repo, file):
    _hub(context, repo, file, _tiny_file(context, file), fault="gated", token="secret-token")


@given('a model hub that serves "{repo:Q}" with the file "{file:Q}" holding the default model\'s weights')
def step_hub_real(context, repo, file):
    _hub(context, repo, file, models.default_model_path())


@given('a model hub that serves "{repo:Q}" with the file "{file:Q}" holding the default model\'s weights over a slow link')
def step_hub_real_slow(context, repo, file):
    _hub(context, repo, file, models.default_model_path(), fault="slow")


@then("the hub was asked to resume the file where the transfer dropped")
def step_hub_resumed(context):
    seen = requests.get(f"{context.hub_url}/_requests", timeout=5).json()["requests"]
    ranges = [r["range"] for r in seen if r["file"] == context.hub_file]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes="), ranges
    assert int(ranges[1].removeprefix("bytes=").rstrip("-")) > 0, ranges


# ---------------------------------------------------------------- hives


def _start_hive(context, *flags: str) -> None:
    """A hive with its own models folder (scenarios do not share catalogs), remembered for a restart."""
    context.hive_flags = ["--models-dir", str(_scenario_dir(context) / "models"), *flags]
    if hasattr(context, "hub_url"):
        context.hive_flags += ["--hf-base-url", context.hub_url]
    context.cluster.start_hive(*context.hive_flags)


def _spawn_default(context) -> None:
    context.hive_worker_id = context.cluster.spawn_on_hive()


@given("a hive")
@given("a hive that downloads models from that hub")
def step_hive(context):
    _start_hive(context)


@given('a hive started with the cluster key "{cluster:Q}" that downloads models from that hub')
def step_hive_key_hub(context, cluster):
    _start_hive(context, "--cluster-key", cluster)
    context.cluster.hive.session.headers["Authorization"] = f"Bearer {cluster}"  # the cluster's own calls bear it


@given("a hive with a memory budget of {mib:d} MiB")
def step_hive_budget(context, mib):
    _start_hive(context, "--ram-budget-mb", str(mib))


@given("a hive with a worker on the default model")
def step_hive_worker(context):
    _start_hive(context)
    _spawn_default(context)


@given("a hive that stops workers idle for {n:d} seconds, with a worker on the default model")
def step_hive_idle(context, n):
    _start_hive(context, "--idle-timeout", str(n))
    _spawn_default(context)


@given("a hive that restarts failed workers, with a worker on the default model")
def step_hive_restarts(context):
    _start_hive(context, "--restart", "on-failure", "--max-restarts", "2")
    _spawn_default(context)


@given("a hive that keeps workers when it crashes, with a worker on the default model")
def step_hive_keeps(context):
    _start_hive(context, "--keep-workers-on-crash")
    _spawn_default(context)


@given("the hive has told the queen it is alive")
def step_hive_known(context):
    wait_until(lambda: any(h["live"] for h in context.cluster.queen.get("/v2/hives/list").json()["hives"]),
               _k(context, 10), what="the hive in the queen's hive list")


@when("the hive is stopped")
def step_hive_stop(context):
    assert context.cluster.hive_process.stop(grace=_k(context, 15)) == 0


@when("the hive process is killed")
def step_hive_kill(context):
    context.cluster.hive_process.proc.kill()
    context.cluster.hive_process.proc.wait(10)


@when("the hive is started again")
def step_hive_again(context):
    context.cluster.restart_hive(*context.hive_flags)


@then("the hive runs no worker")
def step_hive_no_worker(context):
    wait_until(lambda: context.cluster.hive.workers() == [], _k(context, 5), what="the hive's worker list to empty")


# ---------------------------------------------------------------- catalog and downloads


def _catalog(context) -> list[dict]:
    r = context.cluster.hive.get("/v1/models")
    assert r.status_code == 200, r.text
    return r.json()["models"]


@when('the hive is asked with the cluster key to download "{ref:Q}"')
@when('the hive is asked to download "{ref:Q}"')
def step_download(context, ref):
    context.response = context.cluster.hive.post("/v1/models/download", json={"model_ref": ref})
    assert context.response.status_code in (200, 202), context.response.text


@when('a client without the cluster key asks the hive to download "{ref:Q}"')
def step_download_no_key(context, ref):
    context.response = HiveClient(context.cluster.hive.base_url).post("/v1/models/download", json={"model_ref": ref})


@when('a client with the key "{key:Q}" asks the hive to download "{ref:Q}"')
def step_download_other_key(context, key, ref):
    client = HiveClient(context.cluster.hive.base_url, api_key=key)
    context.response = client.post("/v1/models/download", json={"model_ref": ref})


@then("the hub was never asked for the file")
def step_hub_untouched(context):
    seen = requests.get(f"{context.hub_url}/_requests", timeout=5).json()["requests"]
    assert not [r for r in seen if r["file"] == context.hub_file], seen


@when("a client asks the hive for its devices")
def step_devices(context):
    r = context.cluster.hive.get("/v1/devices", timeout=_k(context, 60))
    assert r.status_code == 200, r.text
    context.devices = r.json()["devices"]


@then("the hive lists the CPU with its memory, and every device it lists is one a worker can be started on")
def step_devices_listed(context):
    cpu = [d for d in context.devices if d["backend"] == "cpu"]
    assert len(cpu) == 1 and cpu[0]["memory_total"] > 0, context.devices
    for d in context.devices:  # what it lists passes its own preflight: an unknown one is refused (below)
        r = context.cluster.hive.post("/v1/workers/spawn", json={"backend": d["backend"], "device": d["index"],
                                                                 "model_ref": "file:///nonexistent.gguf"})
        assert r.status_code != 400 or r.json()["error"]["code"] not in ("INVALID_BACKEND", "DEVICE_NOT_FOUND"), r.text


@given('the hive has downloaded "{ref:Q}"')
def step_downloaded(context, ref):
    step_download(context, ref)
    step_download_done(context, ref, 30)


@then('the download of "{ref:Q}" completes within {n:d} seconds')
def step_download_done(context, ref, n):
    wait_until(lambda: any(m["model_ref"] == ref for m in _catalog(context)), _k(context, n),
               what=f"{ref} in the catalog")


@then('the download progress of "{ref:Q}" shows bytes arriving and ends complete')
def step_progress(context, ref):
    with context.cluster.hive.session.get(f"{context.cluster.hive.base_url}/v1/models/download/progress",
                                          params={"model_ref": ref}, stream=True, timeout=(5, _k(context, 30))) as r:
        assert r.status_code == 200, r.text
        events = [json.loads(d) for d in iter_events(r) if d != "[DONE]"]
    moving = [e for e in events if e["stage"] == "downloading"]
    assert moving and moving[0]["bytes_downloaded"] < moving[0]["bytes_total"], events
    assert events[-1]["stage"] == "complete" and events[-1]["local_path"].endswith(".gguf"), events


@then('the hive\'s catalog lists "{ref:Q}" as a "{provider:Q}" model')
def step_catalog_has(context, ref, provider):
    found = [m for m in _catalog(context) if m["model_ref"] == ref]
    assert found and found[0]["provider"] == provider, _catalog(context)


@then('the hive\'s catalog lists "{ref:Q}" as a "{provider:Q}" model with its size and checksum')
def step_catalog_full(context, ref, provider):
    step_catalog_has(context, ref, provider)
    entry = next(m for m in _catalog(context) if m["model_ref"] == ref)
    assert entry["size_bytes"] > TINY_KB * 1024 and len(entry["sha256"] or "") == 64, entry


@then('the hive\'s catalog lists the file "{name:Q}"')
def step_catalog_file(context, name):
    assert any(Path(m["local_path"]).name == name for m in _catalog(context)), _catalog(context)


@when("the hive's catalog file is overwritten with garbage")
def step_corrupt(context):
    (_scenario_dir(context) / "models" / "catalog.sqlite3").write_bytes(b"this is not a database" * 100)


@then("a backup of the corrupt catalog is kept")
def step_backup(context):
    backups = list((_scenario_dir(context) / "models").glob("catalog.sqlite3.corrupt.*"))
    assert backups and backups[0].read_bytes().startswith(b"this is not a database"), backups


@then('asking for "{ref:Q}" again fetches nothing more from the hub')
def step_no_refetch(context, ref):
    step_download(context, ref)
    step_download_done(context, ref, 30)
    seen = requests.get(f"{context.hub_url}/_requests", timeout=5).json()["requests"]
    assert len([r for r in seen if r["file"] == context.hub_file]) == 1, seen


# ---------------------------------------------------------------- spawning and its refusals


def _spawn(context, body: dict, seconds: float) -> requests.Response:
    return context.cluster.hive.post("/v1/workers/spawn", json=body, timeout=_k(context, seconds))


@when('the hive is asked to start a worker on "{ref:Q}" and wait')
def step_spawn_ref(context, ref):
    context.response = _spawn(context, {"model_ref": ref, "wait": True}, 60)


@when('the hive is asked to start a worker on the default model with backend "{backend:Q}" and device {device:d}')
def step_spawn_backend(context, backend, device):
    context.response = context.cluster.hive.spawn(backend=backend, device=device)


@given('a file "{name:Q}" that is a GGUF llama.cpp cannot load')
def step_broken_file(context, name):
    context.broken_file = make_tiny_gguf(_scenario_dir(context) / name, size_kb=8)


@when("the hive is asked to start a worker on that file and wait")
def step_spawn_broken(context):
    context.response = _spawn(context, {"model_ref": f"file://{context.broken_file}", "wait": True}, 90)


@then('the hive refuses with {status:d} "{code:Q}" saying "{text:Q}"')
def step_hive_refuses(context, status, code, text):
    r = context.response
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == code and text in error["message"], error


@then("the refusal carries the worker's log lines")
def step_log_tail(context):
    details = context.response.json()["error"]["details"]
    assert details["log_tail"] and any("load" in line.lower() for line in details["log_tail"]), details


# ---------------------------------------------------------------- the worker's process


def _worker_pid(context) -> int:
    return next(w["pid"] for w in context.cluster.hive.workers() if w["worker_id"] == context.hive_worker_id)


@when("the hive's worker process is killed")
def step_kill_worker(context):
    context.worker_pid = _worker_pid(context)
    os.kill(context.worker_pid, signal.SIGKILL)


@when("the hive's worker process is frozen")
def step_freeze_worker(context):
    context.worker_pid = _worker_pid(context)
    os.kill(context.worker_pid, signal.SIGSTOP)


@then("the hive's worker process is gone within {n:d} seconds")
def step_worker_gone(context, n):
    wait_until(lambda: not pid_alive(context.worker_pid), _k(context, n), what="the frozen worker to be killed")


@then("the queen lists another idle worker from the hive within {n:d} seconds")
def step_replacement(context, n):
    def replacement():
        return [w for w in context.cluster.queen.workers(state="idle")
                if w.node_name == "test-hive" and w.worker_id != context.hive_worker_id]
    wait_until(replacement, _k(context, n), interval=0.2, what="a restarted worker, idle at the queen")


@then("the hive lists its earlier worker as ready within {n:d} seconds")
def step_adopted(context, n):
    wait_until(lambda: any(w["worker_id"] == context.hive_worker_id and w["state"] == "ready"
                           for w in context.cluster.hive.workers()), _k(context, n), what="the adopted worker")


@then("the queen lists the hive's worker as idle")
def step_queen_idle(context):
    wait_until(lambda: (w := context.cluster.queen.worker(context.hive_worker_id)) is not None and w.state == "idle",
               _k(context, 5), what="the adopted worker idle at the queen")


@then("the hive's worker answers a request through the queen")
def step_worker_answers(context):
    result = context.cluster.queen.infer({"prompt": "Hi", "max_tokens": 4, "temperature": 0})
    assert result.status == 200 and result.terminated and result.tokens, (result.status, result.error)
    assert result.done["worker_id"] == context.hive_worker_id, result.done


# ---------------------------------------------------------------- cold start


@when('a person asks the fleet "{prompt:Q}" for {n:d} tokens of model "{model:Q}" from the command line')
def step_keeper_model(context, prompt, n, model):
    env = {**os.environ, "RBEE_QUEEN_URL": context.cluster.queen_url, "RBEE_NO_AUTOSTART": "1"}
    context.cli = subprocess.run(
        [sys.executable, "-m", "rbee.keeper.cli", "infer", "--prompt", prompt, "--max-tokens", str(n),
         "--temperature", "0", "--model", model],
        check=False, capture_output=True, text=True, timeout=_k(context, 120), env=env,
    )


@then('while it waited the command line said a hive was getting "{model:Q}" ready')
def step_cold_notes(context, model):
    # The queen streams `: provisioning model=… elapsed_s=…` comments during the cold start; the keeper
    # turns them into notes on stderr, before the answer's first token reached stdout.
    notes = [ln for ln in context.cli.stderr.splitlines() if "getting it ready" in ln]
    assert notes and model in notes[0] and "s so far" in notes[0], context.cli.stderr


@then('the queen lists an idle worker for "{model:Q}" on the hive')
def step_cold_worker(context, model):
    workers = context.cluster.queen.workers(model=model)
    assert any(w.state == "idle" and w.node_name == "test-hive" for w in workers), workers

"""Steps about memory: hives' figures at the queen, placement of cold starts, budgets, and two models
taking turns on a hive with room for one (evictions counted)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import requests
from behave import given, then, when

from rbee import models
from rbee.testing.clients import wait_until
from rbee.testing.tiny_gguf import make_tiny_llama

MIB = 1024 * 1024
TINY_REF = "hf:test-org/tiny-llama:tiny-llama.gguf"
MODELS = {"the default model": models.DEFAULT_MODEL_REF, "the tiny llama": TINY_REF}


def _k(context, seconds: float) -> float:
    return seconds * context.cluster.k


def _dir(context) -> Path:
    if not hasattr(context, "placement_dir"):
        context.placement_dir = context.log_dir / f"placement-{uuid.uuid4().hex[:8]}"
        context.placement_dir.mkdir(parents=True)
    return context.placement_dir


def _hive(context, name: str, *flags: str):
    """A hive of its own name and models folder; remembered by name."""
    hub = ["--hf-base-url", context.hub_url] if hasattr(context, "hub_url") else []
    client = context.cluster.start_hive("--node-name", name, "--models-dir", str(_dir(context) / name / "models"),
                                        "--log-dir", str(_dir(context) / name / "logs"), *hub, *flags)
    context.placement_hives = {**getattr(context, "placement_hives", {}), name: client}
    return client


def _hive_info(context, name: str) -> dict | None:
    hives = context.cluster.queen.get("/v2/hives/list").json()["hives"]
    return next((h for h in hives if h["hive_id"] == name), None)


def _host(info: dict) -> dict:
    return next(m for m in info["memory"] if m["backend"] == "cpu")


# ---------------------------------------------------------------- setup


@given("a queen that holds waiting requests and swaps models after {n:d} seconds of waiting")
def step_queen_swaps(context, n):
    # A worker on a loaded 2-core machine may take long over a first answer: not what these scenarios test.
    context.cluster.start_queen("--queue-timeout", str(int(_k(context, 240))), "--swap-after", str(n),
                                "--stall-timeout", str(int(_k(context, 120))))


@given('a hive "{name:Q}" with a memory budget of {mib:d} MiB')
def step_named_hive(context, name, mib):
    _hive(context, name, "--ram-budget-mb", str(mib))


@given("a model hub that serves the tiny llama")
def step_tiny_hub(context):
    path = make_tiny_llama(_dir(context) / "hub" / "tiny-llama.gguf")
    context.hub_url = context.cluster.start_fake_hub({"test-org/tiny-llama/tiny-llama.gguf": path})


@given('a hive "{name:Q}" with room for one model at a time, evicting workers after {n:d} seconds resident')
def step_one_at_a_time(context, name, n):
    # The default model's estimate at ctx 2048 is ~245 MiB, the tiny llama's ~100 MiB: 300 holds either, not both.
    hive = _hive(context, name, "--ram-budget-mb", "300", "--min-resident", str(n))
    r = hive.post("/v1/models/download", json={"model_ref": TINY_REF})
    assert r.status_code in (200, 202), r.text
    wait_until(lambda: any(m["model_ref"] == TINY_REF for m in hive.get("/v1/models").json()["models"]),
               _k(context, 60), what="the tiny llama in the hive's catalog")


@given('the hives have told the queen their memory')
def step_hives_memory(context):
    for name in context.placement_hives:
        wait_until(lambda name=name: (h := _hive_info(context, name)) is not None and h["live"] and h["memory"],
                   _k(context, 30), what=f"hive {name}'s memory at the queen")


@when('hive "{name:Q}" starts a worker on the default model')
def step_spawn_on(context, name):
    r = context.placement_hives[name].post("/v1/workers/spawn", json={"wait": True}, timeout=_k(context, 120))
    assert r.status_code == 200, r.text
    context.spawned = r.json()


# ---------------------------------------------------------------- memory at the queen


@then('the queen lists hive "{name:Q}" with its host memory: total, free, a {mib:d} MiB budget, and the '
      "worker's estimate reserved")
def step_queen_memory(context, name, mib):
    plan = context.placement_hives[name].post("/v1/workers/plan", json={}).json()

    def shown():
        info = _hive_info(context, name)
        # The hive's first heartbeats may come before its memory rows do (a list with no host row yet).
        if info is None or not any(m["backend"] == "cpu" for m in info.get("memory") or []):
            return False
        return _host(info)["reserved_bytes"] > 0 and info

    host = _host(wait_until(shown, _k(context, 15), what="the worker's reservation in the heartbeat"))
    assert host["total_bytes"] > 0 and host["free_bytes"] > 0, host
    assert host["budget_bytes"] == mib * MIB, host
    assert host["reserved_bytes"] == plan["needed_host_bytes"], (host, plan)  # the estimate of the same spawn
    assert host["headroom_bytes"] == min(host["free_bytes"], mib * MIB - host["reserved_bytes"]), host
    context.host_memory = host


@then('rbee-keeper hives list shows hive "{name:Q}" with its memory')
def step_keeper_memory(context, name):
    out = subprocess.run([sys.executable, "-m", "rbee.keeper.cli", "hives", "list", "--queen-url",
                          context.cluster.queen_url], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(name)), "")
    assert "host " in line and "free of" in line and "reserved (budget" in line, out.stdout


# ---------------------------------------------------------------- refusals and placement


@then('a second worker on the default model is refused by hive "{name:Q}" with what it needs and what is free')
def step_second_refused(context, name):
    r = context.placement_hives[name].post("/v1/workers/spawn", json={"wait": True}, timeout=_k(context, 60))
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["code"] == "INSUFFICIENT_RAM", err
    d = err["details"]
    assert d["needed_bytes"] > d["available_bytes"] and d["device"] == "host RAM", d
    assert "MiB available" in err["message"] and "budget" in err["message"], err["message"]
    workers = context.placement_hives[name].get("/v1/workers/list").json()["workers"]
    assert len(workers) == 1, workers  # nothing was started, and the worker of the same model was not evicted


@when("a client asks the queen for {n:d} tokens of the default model")
def step_ask_default(context, n):
    context.answer = context.cluster.queen.post("/v1/inference", timeout=_k(context, 180), json={
        "prompt": "Say hello", "max_tokens": n, "temperature": 0, "stream": False, "ignore_eos": True,
        "model": models.DEFAULT_MODEL_REF})


@then('the answer came from a worker on hive "{name:Q}"')
def step_answer_from(context, name):
    assert context.answer.status_code == 200, context.answer.text
    worker_id = context.answer.json()["worker_id"]
    worker = context.cluster.queen.worker(worker_id)
    assert worker is not None and worker.node_name == name, (worker_id, worker)


@then("the queen refuses with 507 INSUFFICIENT_RESOURCES naming each hive with what it needs and what is free")
def step_no_room(context):
    r = context.answer
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["code"] == "INSUFFICIENT_RESOURCES", err
    hives = {h["hive_id"]: h for h in err["details"]["hives"]}
    assert set(hives) == set(context.placement_hives), hives
    for h in hives.values():
        assert h["needed_bytes"] > h["free_bytes"] >= 0, h
    assert all(name in err["message"] for name in hives), err["message"]


# ---------------------------------------------------------------- many models


class HiveSampler:
    """Looks at a hive's workers every 0.2 s while the load runs: which worker served which model, and
    the most models it ever had workers for at once (starting or ready)."""

    def __init__(self, hive) -> None:
        self.hive, self.models_of, self.most_at_once = hive, {}, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                workers = self.hive.get("/v1/workers/list", timeout=5).json()["workers"]
            except (requests.RequestException, ValueError):
                continue
            live = [w for w in workers if w["state"] in ("starting", "ready")]
            self.models_of.update({w["worker_id"]: w["model_ref"] for w in workers})
            self.most_at_once = max(self.most_at_once, len({w["model_ref"] for w in live}))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@when('requests come in waves, a few at a time, to hive "{name:Q}" for {spec}')
def step_waves(context, name, spec):
    """``spec``: waves separated by " then ", each a comma-separated list of model names (see MODELS)."""
    context.wave_results = []
    sampler = context.hive_sampler = HiveSampler(context.placement_hives[name])
    context.add_cleanup(sampler.stop)
    url = f"{context.cluster.queen_url}/v1/inference"
    for wave in spec.split(" then "):
        names = [n.strip() for n in wave.split(",")]
        results: list = [None] * len(names)

        def ask(i: int, model: str, results=results) -> None:
            try:
                results[i] = requests.post(url, timeout=_k(context, 300), json={
                    "prompt": "Count with me", "max_tokens": 8, "temperature": 0, "stream": False,
                    "ignore_eos": True, "model": MODELS[model]})
            except requests.RequestException as exc:
                results[i] = exc

        threads = [threading.Thread(target=ask, args=(i, n), daemon=True) for i, n in enumerate(names)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(_k(context, 320))
        context.wave_results += list(zip(names, results, strict=True))
    sampler.stop()


@then("every request is answered with 8 tokens by a worker of its own model")
def step_all_answered(context):
    for name, r in context.wave_results:
        assert isinstance(r, requests.Response) and r.status_code == 200, (name, getattr(r, "text", r))
        body = r.json()
        assert body["total_tokens"] == 8, body
        served_by = context.hive_sampler.models_of.get(body["worker_id"])
        assert served_by == MODELS[name], (name, body["worker_id"], served_by)


@then('hive "{name:Q}" evicted workers at most {n:d} times, and never had workers for both models at once')
def step_evictions(context, name, n):
    evictions = context.placement_hives[name].get("/v1/workers/list").json()["evictions"]
    order = [m for m, _ in context.wave_results]
    changes = sum(1 for a, b in itertools.pairwise(order) if a != b)
    print(f"evictions on {name}: {evictions} for {len(order)} requests ({changes} model changes in the order "
          f"they were sent)")
    assert 1 <= evictions <= n, evictions
    metrics = context.placement_hives[name].get("/metrics").text.splitlines()
    assert f"rbee_hive_worker_evictions_total {float(evictions)}" in metrics, [m for m in metrics if "evict" in m]
    assert context.hive_sampler.most_at_once == 1, context.hive_sampler.most_at_once


@when('{n:d} clients keep the default model busy on hive "{name:Q}" and a request for the tiny llama comes in')
def step_busy_then_other(context, n, name):
    """The busy clients send back to back until the tiny llama's answer is in (or 120 s pass)."""
    url = f"{context.cluster.queen_url}/v1/inference"
    sampler = context.hive_sampler = HiveSampler(context.placement_hives[name])
    context.add_cleanup(sampler.stop)
    done = threading.Event()
    context.busy_results = []

    def ask(model: str) -> requests.Response | Exception:
        try:
            return requests.post(url, timeout=_k(context, 300), json={
                "prompt": "Keep talking", "max_tokens": 16, "temperature": 0, "stream": False, "ignore_eos": True,
                "model": MODELS[model]})
        except requests.RequestException as exc:
            return exc

    def busy() -> None:
        while not done.is_set():
            context.busy_results.append(ask("the default model"))

    clients = [threading.Thread(target=busy, daemon=True) for _ in range(n)]
    for t in clients:
        t.start()
    wait_until(lambda: len(context.busy_results) >= 2, _k(context, 120), what="the default model serving")
    started = time.monotonic()
    context.other_answer = ask("the tiny llama")
    context.other_waited = time.monotonic() - started
    done.set()
    for t in clients:
        t.join(_k(context, 320))
    sampler.stop()


@then("the tiny llama's request is answered within {n:d} seconds, and so is every request of the busy clients")
def step_other_in_time(context, n):
    r = context.other_answer
    print(f"the tiny llama waited {context.other_waited:.1f} s behind {len(context.busy_results)} requests")
    assert isinstance(r, requests.Response) and r.status_code == 200, getattr(r, "text", r)
    assert context.hive_sampler.models_of.get(r.json()["worker_id"]) == TINY_REF, r.json()
    assert context.other_waited <= _k(context, n), context.other_waited
    for b in context.busy_results:
        assert isinstance(b, requests.Response) and b.status_code == 200, getattr(b, "text", b)

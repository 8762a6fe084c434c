"""Steps for faults on hives brought up the way a person does it: ``rbee-keeper hives add`` and
``hives start`` over SSH (the queen runs ssh to the test bed's hosts), then the same faults as
``fleet_faults.feature`` (whose steps these scenarios reuse) seen through ``rbee-keeper hives list``.

What is under test here is the fleet, not the install (``remote_hives.feature`` covers that): each
host's ``<remote-dir>/venv/bin/rbee-hive`` is a two-line script that runs this checkout's rbee-hive
(the hosts share this machine's files), with one llama.cpp thread per worker.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from behave import given, then, when

from rbee.client import HiveClient, QueenClient
from rbee.testing.clients import at_once, wait_until
from rbee.testing.cluster import WORKER_ENV
from rbee.testing.fleet import (
    API_KEY,
    CLUSTER_KEY,
    measured,
    spawn_fleet_workers,
    start_fleet_queen,
)

KEEPER = Path(sys.executable).with_name("rbee-keeper")
NODE_PROBE_INTERVAL = 1  # seconds: how soon `hives list` may tell an unreachable machine


def _k(context) -> float:
    return context.cluster.k


def _queen(context) -> QueenClient:
    assert context.cluster.queen is not None
    return context.cluster.queen


def _keeper(context, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KEEPER), *argv], check=False, env=context.fleet_operator_env, capture_output=True,
                          text=True, timeout=timeout * _k(context), stdin=subprocess.DEVNULL)


def _ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"rbee-keeper {done.args[1:]} exited {done.returncode}:\n" \
                                 f"{(done.stdout + done.stderr)[-3000:]}"
    return done


def _plant_hive(remote_dir: Path) -> None:
    """This checkout's rbee-hive, as the machine's own (an install is remote_hives.feature's business)."""
    env = {**{k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}, "RBEE_TEST_RUN": os.environ.get("RBEE_TEST_RUN", ""),
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    hive = remote_dir / "venv" / "bin" / "rbee-hive"
    hive.parent.mkdir(parents=True)
    hive.write_text(f"#!/bin/sh\nexport {exports}\nexec {shlex.quote(sys.prefix + '/bin/rbee-hive')} \"$@\"\n")
    hive.chmod(0o755)


def _ssh_config(context, base: Path) -> Path:
    """The queen's own ssh_config for the bed: its hosts by name, the bed's known_hosts, no agent."""
    bed = context.testbed
    config = [f"Host {host.name}\n  HostName {host.address}\n" for host in bed.hosts.values()]
    config.append(f"Host *\n  User root\n  UserKnownHostsFile {bed.known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
                  "  IdentitiesOnly yes\n  IdentityAgent none\n")
    path = base / "ssh_config"
    path.write_text("\n".join(config))
    return path


@given("a queen on the control host and hives on alpha and beta started with rbee-keeper, each with a worker")
def step_fleet_over_ssh(context):
    base = Path(context.log_dir) / f"fleet-ssh-{os.getpid()}-{time.monotonic_ns()}"
    base.mkdir(parents=True)
    start_fleet_queen(context, "--ssh-config", str(_ssh_config(context, base)),
                      "--node-probe-interval", str(NODE_PROBE_INTERVAL),
                      "--ssh-connect-timeout", str(max(1, round(2 * _k(context)))),
                      "--hive-start-timeout", str(90 * _k(context)))
    context.fleet_operator_env = {**{k: v for k, v in os.environ.items() if not k.startswith("RBEE_")},
                                  "RBEE_TEST_RUN": os.environ.get("RBEE_TEST_RUN", ""),
                                  "RBEE_QUEEN_URL": context.cluster.queen_url, "RBEE_API_KEY": API_KEY,
                                  "RBEE_STATE_DIR": str(base / "keeper-state"), "RBEE_NO_AUTOSTART": "1"}
    names = ("alpha", "beta")
    for name in names:
        remote = base / "remote" / name
        _plant_hive(remote)
        _ok(_keeper(context, "hives", "add", name, "--ssh", name, "--identity", str(context.testbed.client_key),
                    "--remote-dir", str(remote)))
    started = at_once(*[lambda n=n: _keeper(context, "hives", "start", n, timeout=200) for n in names],
                      timeout=220 * _k(context))
    for name, done in zip(names, started, strict=True):
        assert not isinstance(done, BaseException), (name, done)
        assert f"{name}" in _ok(done).stdout + done.stderr, done.stdout
    hives = {h["hive_id"]: h["url"] for h in _queen(context).get("/v2/hives/list").json()["hives"]}
    context.fleet_hives = {name: HiveClient(hives[name], api_key=CLUSTER_KEY) for name in names}
    spawn_fleet_workers(context, context.fleet_hives)


def _state(context, name: str) -> str | None:
    """The state column of ``rbee-keeper hives list`` for ``name``."""
    done = _keeper(context, "hives", "list", timeout=30)
    if done.returncode != 0:
        return None
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    return next((r[2] for r in rows if len(r) > 2 and r[0] == name), None)


@then("rbee-keeper lists that host {state:w} within {n:d} seconds")
def step_keeper_lists(context, state, n):
    wait_until(lambda: _state(context, context.victim) == state, n * _k(context),
               what=f"`rbee-keeper hives list` showing {context.victim} {state} after the {context.fault}")
    measured(context, f"{context.fault} on {context.victim}: hives list says {state}",
              time.monotonic() - context.fault_at)


@then('a request pinned to that host is refused with "{code:Q}" within {n:d} seconds, saying what to do')
def step_pinned_refused(context, code, n):
    started = time.monotonic()
    result = _queen(context).stream("/v1/inference", {"prompt": "Hello", "max_tokens": 4, "hive": context.victim},
                                    read_timeout=60 * _k(context))
    took = time.monotonic() - started
    measured(context, f"{context.fault} on {context.victim}: pinned request answered", took)
    assert result.status == 503, (result.status, result.error_body, result.events[-3:])
    error = (result.error_body or {}).get("error") or {}
    assert error.get("code") == code, result.error_body
    assert context.victim in error["message"] and f"rbee-keeper hives start {context.victim}" in error["message"], error
    assert took <= n * _k(context), f"the pinned request took {took:.1f} s"


@when("that host comes back and the operator starts its hive with rbee-keeper")
def step_restart_on_host(context):
    """A rebooted machine: on the network again, sshd up, nothing of rbee running until started."""
    context.testbed.heal(context.victim)
    context.testbed.restart_sshd(context.victim)
    context.fault = "hive restarted with hives start"
    context.fault_at = time.monotonic()
    _ok(_keeper(context, "hives", "start", context.victim, timeout=200))
    measured(context, f"{context.victim}: hives start answered", time.monotonic() - context.fault_at)

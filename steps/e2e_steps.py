"""Steps about the whole trio: the hive's own worker, rbee-keeper, and the hive's shutdown."""

from __future__ import annotations

import os
import subprocess
import sys

from behave import given, then, when

from rbee.procfs import pid_alive
from rbee.testing.clients import wait_until


@given("the hive's worker is listed by the queen as idle")
@then("the hive's worker is listed by the queen as idle")
def step_hive_worker_idle(context):
    worker = context.cluster.queen.worker(context.hive_worker_id)
    assert worker is not None and worker.state == "idle", worker
    assert worker.node_name == "test-hive", worker


@when('a person asks the fleet "{prompt:Q}" for {n:d} tokens from the command line')
def step_keeper_infer(context, prompt, n):
    env = {**os.environ, "RBEE_QUEEN_URL": context.cluster.queen_url, "RBEE_NO_AUTOSTART": "1"}
    context.cli = subprocess.run(
        [sys.executable, "-m", "rbee.keeper.cli", "infer", "--prompt", prompt, "--max-tokens", str(n),
         "--temperature", "0"],
        check=False, capture_output=True, text=True, timeout=60 * context.cluster.k, env=env,
    )


@then("the command line printed generated text and exited with success")
def step_keeper_ok(context):
    cli = context.cli
    assert cli.returncode == 0, (cli.returncode, cli.stderr[-2000:])
    assert cli.stdout.strip(), f"no text on stdout; stderr: {cli.stderr[-2000:]}"


@when("the hive is sent SIGTERM")
def step_sigterm_hive(context):
    cluster = context.cluster
    context.hive_children = [w["pid"] for w in cluster.hive.workers()]
    assert context.hive_children, "the hive reports no worker processes"
    cluster.hive_process.proc.terminate()


@then("the hive exits within {seconds:d} seconds")
def step_hive_exits(context, seconds):
    proc = context.cluster.hive_process.proc
    code = proc.wait(seconds * context.cluster.k)
    assert code == 0, f"hive exit code {code}"


@then("no worker process started by the hive is alive")
def step_no_children(context):
    alive = [pid for pid in context.hive_children if pid_alive(pid)]
    assert not alive, f"still alive: {alive}"


@then("the queen no longer lists the hive's worker within {seconds:d} seconds")
def step_deregistered(context, seconds):
    wait_until(lambda: context.cluster.queen.worker(context.hive_worker_id) is None,
               seconds * context.cluster.k, what="the hive's worker leaving the queen's list")

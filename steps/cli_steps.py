"""Steps for rbee-keeper: the real command run as a person would, in a child process with bounded waits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from behave import given, step, then, when

from rbee import models
from rbee.keeper.config import OPTIONS
from rbee.ports import free_port
from rbee.procfs import pid_alive
from rbee.testing.clients import wait_until

KEEPER = Path(sys.executable).with_name("rbee-keeper")  # the console script of this environment


class KeeperRun:
    """One rbee-keeper process; stdout and stderr are read on threads, so a step can wait for output."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([str(KEEPER), *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self._out: list[str] = []
        self._err: list[str] = []
        self.printed = threading.Event()  # something arrived on stdout
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self._out, True), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self._err, False), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, into: list[str], signal_first: bool) -> None:
        while chunk := os.read(stream.fileno(), 4096):
            into.append(chunk.decode(errors="replace"))
            if signal_first:
                self.printed.set()

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"rbee-keeper still running after {timeout:.0f}s; stderr:\n{self.stderr[-2000:]}")
        for reader in self._readers:
            reader.join(5)
        return code

    def stop(self) -> None:
        """SIGTERM (it stops what it started), then kill."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ---------------------------------------------------------------- helpers


def _k(context) -> float:
    return float(context.config.userdata.get("timeout_multiplier", "1"))


def _env(context) -> dict[str, str]:
    """A clean environment: this scenario's own state dir and config home, no inherited keeper settings."""
    if not hasattr(context, "keeper_env"):
        home = Path(context.log_dir) / f"keeper-{uuid.uuid4().hex[:8]}"
        env = {k: v for k, v in os.environ.items() if k not in {o.env for o in OPTIONS.values()}}
        env.update({"RBEE_STATE_DIR": str(home / "state"), "XDG_CONFIG_HOME": str(home / "config")})
        env.pop("RBEE_CONFIG", None)
        cluster = getattr(context, "cluster", None)
        if cluster is not None and cluster.queen is not None:
            env["RBEE_QUEEN_URL"] = cluster.queen_url
        if cluster is not None and cluster.hive is not None:
            env["RBEE_HIVE_URL"] = cluster.hive.base_url
        context.keeper_env = env
    return context.keeper_env


def _start(context, *argv: str) -> KeeperRun:
    run = KeeperRun(list(argv), _env(context))
    context.add_cleanup(run.stop)
    context.keeper = run
    return run


def _run(context, *argv: str) -> None:
    _start(context, *argv)
    context.keeper_code = context.keeper.wait(120 * _k(context))


def _programs_left(state_dir: str) -> list[int]:
    """Live processes (not us) whose environment names this scenario's state dir: what rbee-keeper started."""
    marker = f"RBEE_STATE_DIR={state_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0") and pid_alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# ---------------------------------------------------------------- givens


@given("rbee-keeper points at a queen that is not running")
def step_no_queen(context):
    _env(context)["RBEE_QUEEN_URL"] = f"http://127.0.0.1:{free_port()}"


@step('rbee-keeper is configured with the cluster key "{key:Q}"')
def step_keeper_cluster_key(context, key):
    _env(context)["RBEE_CLUSTER_KEY"] = key


@given("rbee-keeper's autostart is off")
def step_autostart_off(context):
    _env(context)["RBEE_NO_AUTOSTART"] = "1"


# ---------------------------------------------------------------- whens


@when('the user runs rbee-keeper infer "{prompt:Q}" for {n:d} tokens')
def step_infer(context, prompt, n):
    _run(context, "infer", "--prompt", prompt, "--max-tokens", str(n), "--temperature", "0")


@when('the user runs rbee-keeper infer "{prompt:Q}" for {n:d} tokens on backend "{backend:Q}"')
def step_infer_backend(context, prompt, n, backend):
    _run(context, "infer", "--prompt", prompt, "--max-tokens", str(n), "--backend", backend)


@when('the user starts rbee-keeper infer "{prompt:Q}" for {n:d} tokens')
def step_start_infer(context, prompt, n):
    # Greedy, raw text to continue: an answer that ended at once (EOS) would not be there to interrupt.
    _start(context, "infer", "--prompt", prompt, "--max-tokens", str(n), "--temperature", "0", "--raw")


@when("the user presses Ctrl+C once rbee-keeper has printed the first token")
def step_ctrl_c(context):
    run = context.keeper
    assert run.printed.wait(60 * _k(context)), f"no token printed; stderr:\n{run.stderr[-2000:]}"
    run.proc.send_signal(signal.SIGINT)
    context.keeper_code = run.wait(30 * _k(context))


@when("the user runs rbee-keeper workers list")
def step_workers_list(context):
    _run(context, "workers", "list")


@when("the user starts rbee-keeper up on free ports")
def step_up(context):
    context.up_queen_url = f"http://127.0.0.1:{(queen_port := free_port())}"
    _env(context)["RBEE_QUEEN_URL"] = context.up_queen_url
    context.up = _start(context, "up", "--queen-port", str(queen_port), "--hive-port", str(free_port()))


@when("the user runs rbee-keeper {command} in another shell")
def step_other_shell(context, command):
    _run(context, *command.split())


# ---------------------------------------------------------------- thens


@then("rbee-keeper exits with code {code:d}")
def step_exit_code(context, code):
    assert context.keeper_code == code, (f"exit {context.keeper_code}, wanted {code}\nstdout:\n"
                                         f"{context.keeper.stdout[-1000:]}\nstderr:\n{context.keeper.stderr[-2000:]}")


@then("rbee-keeper printed the generated text")
def step_printed_text(context):
    assert context.keeper.stdout.strip(), f"no text on stdout; stderr:\n{context.keeper.stderr[-2000:]}"


@then("rbee-keeper reported the time to first token and the worker on stderr")
def step_stats(context):
    stats = context.keeper.stderr.strip().splitlines()[-1]
    assert "TTFT" in stats and "tok/s" in stats, stats
    assert f"worker {context.hive_worker_id}" in stats, stats


@then('rbee-keeper\'s error is one line that names "{command:Q}"')
def step_one_line_error(context, command):
    lines = context.keeper.stderr.strip().splitlines()
    assert len(lines) == 1 and command in lines[0], lines
    assert not context.keeper.stdout, context.keeper.stdout


@then("the cluster's worker has all slots free again within {seconds:d} seconds")
def step_slots_free(context, seconds):
    def all_free():
        worker = context.cluster.queen.worker(context.hive_worker_id)
        return worker is not None and worker.state == "idle" and worker.slots_available == worker.slots_total

    wait_until(all_free, seconds * _k(context), what="the worker idle with every slot free")


@when('the user downloads "{ref:Q}" with rbee-keeper')
def step_models_download(context, ref):
    _run(context, "models", "download", ref)


@then('rbee-keeper said "{text:Q}" with the path of a file that exists')
def step_said_path(context, text):
    line = next((ln for ln in context.keeper.stdout.splitlines() if text in ln), None)
    assert line is not None, f"stdout:\n{context.keeper.stdout}\nstderr:\n{context.keeper.stderr[-2000:]}"
    assert Path(line.rsplit(": ", 1)[1].strip()).is_file(), line


@when("the user lists the hive's models with rbee-keeper")
def step_models_list(context):
    _run(context, "models", "list")


@when("the user lists the queen's hives with rbee-keeper as JSON")
def step_hives_list_json(context):
    _run(context, "hives", "list", "--json")


@then("rbee-keeper's table lists the default model")
def step_table_lists_default_model(context):
    rows = [line.split() for line in context.keeper.stdout.splitlines()]
    assert rows and rows[0][:3] == ["model", "provider", "size"], rows
    assert any(r[0] == models.DEFAULT_MODEL_REF for r in rows[1:]), rows


@then("rbee-keeper's JSON lists the cluster's hive as alive")
def step_json_lists_hive(context):
    hives = json.loads(context.keeper.stdout)["hives"]
    hive = next((h for h in hives if h.get("hive_id") == "test-hive"), None)
    assert hive is not None and hive.get("url") == context.cluster.hive.base_url, hives
    assert hive["live"] is True, hive  # (its worker count arrives with the next heartbeat: not asserted)


@then("rbee-keeper's table lists the cluster's worker as idle")
def step_table_lists_worker(context):
    rows = [line.split() for line in context.keeper.stdout.splitlines()]
    assert rows and rows[0][:4] == ["id", "node", "model", "state"], rows
    row = next((r for r in rows if r[0] == context.hive_worker_id), None)
    assert row is not None and row[3] == "idle", rows


@then("rbee-keeper says the cluster is up")
def step_up_ready(context):
    # "rbee is up" comes first and the table of what runs where after it: wait for the queen's row.
    wait_until(lambda: ("rbee is up" in context.up.stdout and context.up_queen_url in context.up.stdout)
               or context.up.proc.poll() is not None, 120 * _k(context), what="rbee-keeper up to say it is up")
    assert "rbee is up" in context.up.stdout, context.up.stderr[-2000:]
    assert context.up_queen_url in context.up.stdout, context.up.stdout


@then("rbee-keeper up ends by itself with code {code:d}")
def step_up_ends(context, code):
    got = context.up.wait(60 * _k(context))
    assert got == code, (got, context.up.stderr[-2000:])


@then('rbee-keeper\'s error says "{what:Q}" and names "{hint:Q}"')
def step_error_says(context, what, hint):
    error = next((ln for ln in context.keeper.stderr.splitlines() if "error:" in ln), "")
    assert what in error and hint in error, context.keeper.stderr
    assert not context.keeper.stdout, context.keeper.stdout


@then("no program that rbee-keeper started is still running")
def step_nothing_left(context):
    state_dir = _env(context)["RBEE_STATE_DIR"]
    wait_until(lambda: not _programs_left(state_dir), 10 * _k(context),
               what=f"rbee-keeper's programs to exit (left: {_programs_left(state_dir)})")

"""Steps for hives brought up over SSH: the operator drives rbee-keeper, the queen runs ssh to the
test bed's hosts (``@fixture.hosts``: context.testbed).

The queen gets an ssh_config of its own for the bed (its hosts by name, a copy of the bed's
known_hosts that a scenario may spoil, no key file and no agent), so each ``hives add`` names its key
with ``--identity`` as an operator would. The hosts share this machine's files: a host's remote dir
is a folder under the feature's log folder, and a step may plant a file there before the queen looks.
The wheelhouse is kept across runs in ``.cache/wheelhouse`` (pip's own cache holds llama-cpp-python).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from behave import given, then, when

from rbee import __version__
from rbee.procfs import cmdline
from rbee.testing.clients import wait_until

KEEPER = Path(sys.executable).with_name("rbee-keeper")
WHEELHOUSE = Path(".cache/wheelhouse").resolve()
CLUSTER_KEY = f"ck-{uuid.uuid4().hex}"
MODEL = "smollm2-135m-instruct"


def _k(context) -> float:
    return context.cluster.k


# ---------------------------------------------------------------- the queen and the operator


@given("a queen on the control host that manages hives over SSH")
def step_queen_over_ssh(context):
    bed = context.testbed
    base = Path(context.log_dir) / f"ssh-hives-{uuid.uuid4().hex[:8]}"
    context.remote_root = base / "remote"
    context.known_hosts = base / "known_hosts"
    base.mkdir(parents=True)
    shutil.copy(bed.known_hosts, context.known_hosts)
    config = [f"Host {host.name}\n  HostName {host.address}\n" for host in bed.hosts.values()]
    config.append(f"Host *\n  User root\n  UserKnownHostsFile {context.known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
                  "  IdentitiesOnly yes\n  IdentityAgent none\n")
    (base / "ssh_config").write_text("\n".join(config))
    context.cluster.start_queen(
        "--host", "0.0.0.0", "--insecure-no-auth", "--cluster-key", CLUSTER_KEY, "--state-dir", str(base / "queen-state"),
        "--wheelhouse-dir", str(WHEELHOUSE), "--ssh-config", str(base / "ssh_config"),
        "--ssh-connect-timeout", str(max(1, round(2 * _k(context)))), "--hive-start-timeout", str(90 * _k(context)))
    context.operator_env = {**{k: v for k, v in os.environ.items() if not k.startswith("RBEE_")},
                            "RBEE_TEST_RUN": os.environ.get("RBEE_TEST_RUN", ""),
                            "RBEE_QUEEN_URL": context.cluster.queen_url, "RBEE_API_KEY": CLUSTER_KEY,
                            "RBEE_STATE_DIR": str(base / "keeper-state"), "RBEE_NO_AUTOSTART": "1"}
    context.add_cleanup(_stop_hives_left, context)


def _stop_hives_left(context) -> None:
    """A scenario that failed half way may leave a hive running on a host; the bed's close kills it anyway."""
    for name in getattr(context, "started_hives", set()):
        _keeper(context, "hives", "stop", name, timeout=60)


def _keeper(context, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(KEEPER), *argv], check=False, env=context.operator_env, capture_output=True,
                          text=True, timeout=timeout * _k(context), stdin=subprocess.DEVNULL)
    context.keeper_done = done
    return done


def _said(context) -> str:
    return context.keeper_done.stdout + context.keeper_done.stderr


def _ok(context) -> subprocess.CompletedProcess[str]:
    done = context.keeper_done
    assert done.returncode == 0, f"rbee-keeper {done.args[1:]} exited {done.returncode}:\n{_said(context)[-3000:]}"
    return done


def _remote_dir(context, name: str) -> Path:
    return context.remote_root / name


def _add(context, name: str, ssh: str | None = None, *extra: str, key: Path | None = None) -> None:
    _keeper(context, "hives", "add", name, "--ssh", ssh or name, "--identity", str(key or context.testbed.client_key),
            "--remote-dir", str(_remote_dir(context, name)), *extra)


# ---------------------------------------------------------------- adding


@when('the operator adds hive "{name:w}" over SSH')
def step_add(context, name):
    _add(context, name)


@when('the operator adds hive "{name:w}" over SSH again')
def step_add_again(context, name):
    _ok(context)
    _add(context, name)


@when('the operator adds hive "{name:w}" over SSH again, replacing it')
def step_add_replacing(context, name):
    _add(context, name, None, "--replace")
    _ok(context)


@when('the operator adds hive "{name:w}" over SSH, accepting a new host key')
def step_add_accepting(context, name):
    _add(context, name, None, "--accept-new-host-key")


@when('the operator adds hive "{name:w}" over SSH at "{ssh:Q}"')
def step_add_at(context, name, ssh):
    _add(context, name, ssh)


@when('the operator adds hive "{name:w}" over SSH with a key that {host:w} does not know')
def step_add_unknown_key(context, name, host):
    context.key_used = Path(context.remote_root).parent / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(context.key_used)], check=True)
    _add(context, name, None, key=context.key_used)


@when('the operator adds hive "{name:w}" over SSH with a key file that others can read')
def step_add_loose_key(context, name):
    context.key_used = Path(context.remote_root).parent / "id_loose"
    shutil.copy(context.testbed.client_key, context.key_used)
    context.key_used.chmod(0o644)
    _add(context, name, None, key=context.key_used)


@given("the control host knows another host key for {host:w}")
def step_other_host_key(context, host):
    other = Path(context.remote_root).parent / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, data = Path(f"{other}.pub").read_text().split()[:2]
    address = context.testbed.host(host).address
    lines = [ln for ln in context.known_hosts.read_text().splitlines() if not ln.startswith(f"{host},")]
    context.known_hosts.write_text("\n".join([*lines, f"{host},{address} {kind} {data}", ""]))


@given("the control host does not know {host:w}'s host key")
def step_unknown_host_key(context, host):
    lines = [ln for ln in context.known_hosts.read_text().splitlines() if not ln.startswith(f"{host},")]
    context.known_hosts.write_text("\n".join([*lines, ""]))


def _plant_hive(context, host: str, script: str) -> None:
    """A stand-in rbee-hive in the host's virtualenv (the hosts share this machine's files)."""
    bin_dir = _remote_dir(context, host) / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    hive = bin_dir / "rbee-hive"
    hive.write_text("#!/bin/sh\n" + script)
    hive.chmod(0o755)


@given('{host:w} has an rbee-hive of version "{version:Q}" in its virtualenv')
def step_fake_hive(context, host, version):
    _plant_hive(context, host, f"echo 'rbee-hive {version}'\n")


@given('{host:w} has an rbee-hive of this version that fails as it starts, saying "{said:Q}"')
def step_failing_hive(context, host, said):
    _plant_hive(context, host, f"""[ "$1" = --version ] && {{ echo 'rbee-hive {__version__}'; exit 0; }}\n"""
                               f"""echo 'error: {said}' >&2\nexit 1\n""")


# ---------------------------------------------------------------- install, start, stop


@when('the operator installs rbee on hive "{name:w}"')
def step_install(context, name):
    _keeper(context, "hives", "install", name, timeout=1500)  # a first wheelhouse downloads every wheel
    _ok(context)


@when('the operator starts hive "{name:w}"')
def step_start(context, name):
    context.started_hives = getattr(context, "started_hives", set()) | {name}
    _keeper(context, "hives", "start", name, timeout=300)


@when('the operator stops hive "{name:w}"')
def step_stop(context, name):
    _keeper(context, "hives", "stop", name, timeout=120)
    _ok(context)
    context.started_hives.discard(name)


@when('the operator removes hive "{name:w}"')
def step_remove(context, name):
    _keeper(context, "hives", "remove", name)
    _ok(context)


@when("the queen is restarted on the same state dir")
def step_restart_queen(context):
    context.cluster.kill_queen()
    context.cluster.restart_queen()


# ---------------------------------------------------------------- what rbee-keeper said


@then("rbee-keeper says that rbee-hive is not installed on {host:w} yet")
def step_says_not_installed(context, host):
    _ok(context)
    said = _said(context)
    assert "not installed there" in said and f"rbee-keeper hives install {host}" in said, said


@then('rbee-keeper says "{text:Q}"')
def step_says(context, text):
    _ok(context)
    assert text in _said(context), _said(context)


def _fails(context, code: str, *texts: str) -> None:
    done = context.keeper_done
    err = done.stderr.strip()
    assert done.returncode == 1, f"exit {done.returncode}, wanted 1:\n{_said(context)[-3000:]}"
    first = err.splitlines()[0] if err else ""
    assert first.endswith(f"[{code}]"), f"wanted [{code}] on the error line:\n{err}"
    for text in texts:
        assert text in first, f"{text!r} not on the error line: {first}"


@then('rbee-keeper fails with "{code:Q}" saying "{text:Q}"')
def step_fails(context, code, text):
    _fails(context, code, text)


@then('rbee-keeper fails with "{code:Q}" saying "{a:Q}" and "{b:Q}"')
def step_fails_two(context, code, a, b):
    _fails(context, code, a, b)


@then('rbee-keeper fails with "{code:Q}" saying "{text:Q}" and the key\'s path')
def step_fails_key(context, code, text):
    _fails(context, code, text, str(context.key_used))


# ---------------------------------------------------------------- on the host


def _on_host(context, host: str) -> list[str]:
    """The command lines of every process on the host."""
    lines = []
    for pid in context.testbed.host(host).pids():
        argv = cmdline(pid)
        if argv:
            lines.append(" ".join(a.decode(errors="replace") for a in argv))
    return lines


@then("{host:w} runs this version of rbee-hive from its own virtualenv")
def step_installed_version(context, host):
    venv = _remote_dir(context, host) / "venv"
    done = context.testbed.host(host).ssh([str(venv / "bin" / "rbee-hive"), "--version"], timeout=60 * _k(context))
    assert done.stdout.strip() == f"rbee-hive {__version__}", done.stdout + done.stderr
    assert (venv / "pyvenv.cfg").is_file() and not (venv / "bin" / "rbee-hive").is_symlink()


@then("no process listing on {host:w} shows the cluster key")
def step_key_not_listed(context, host):
    listing = _on_host(context, host)
    assert any("rbee-hive" in line for line in listing), listing
    assert not [line for line in listing if CLUSTER_KEY in line]
    key_file = _remote_dir(context, host) / "cluster.key"
    assert key_file.stat().st_mode & 0o077 == 0 and key_file.read_text().strip() == CLUSTER_KEY


@then("nothing of rbee runs on {host:w} any more")
def step_nothing_runs(context, host):
    wait_until(lambda: not [ln for ln in _on_host(context, host) if "rbee-hive" in ln or "rbee.worker" in ln],
               10 * _k(context), what=f"rbee processes on {host} to end")


# ---------------------------------------------------------------- the list, the logs, a prompt


def _row(context, name: str) -> list[str]:
    _keeper(context, "hives", "list")
    rows = [line.split() for line in _ok(context).stdout.splitlines()[1:]]
    return next((r for r in rows if r and r[0] == name), [])


@then("the hives list shows {name:w} online, of this version, with a heartbeat seconds ago")
def step_list_online(context, name):
    row = _row(context, name)
    assert row[2:4] == ["online", __version__], row
    assert " ".join(row).endswith("s ago"), row  # "1 s ago": no epoch floats, no JSON


@then("the hives list shows {name:w} {state:w}")
def step_list_state(context, name, state):
    assert _row(context, name)[2:3] == [state], _said(context)


@then("the hives list is empty")
def step_list_empty(context):
    _keeper(context, "hives", "list")
    assert "no hives are known" in _ok(context).stdout, _said(context)


@then("the operator reads the hive's log on {host:w}, and follows it until Ctrl+C")
def step_logs(context, host):
    _keeper(context, "logs", "--hive", host, "--lines", "200")
    assert "rbee-hive started over SSH" in _ok(context).stdout
    follow = subprocess.Popen([str(KEEPER), "logs", "--hive", host, "--follow", "--lines", "200"],
                              env=context.operator_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
    context.add_cleanup(lambda: follow.poll() is None and follow.kill())
    seen: list[bytes] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: follow.stdout.read1(4096), b"")), daemon=True)
    reader.start()
    wait_until(lambda: b"rbee-hive started over SSH" in b"".join(seen), 30 * _k(context), what="the followed log")
    follow.send_signal(signal.SIGINT)
    assert follow.wait(10 * _k(context)) == 0, follow.stderr.read().decode()
    wait_until(lambda: not [ln for ln in _on_host(context, host) if ln.startswith("tail ")], 10 * _k(context),
               what=f"the tail on {host} to end once the follower left")


@when('the operator runs a prompt pinned to hive "{name:w}"')
def step_infer_pinned(context, name):
    started = time.monotonic()
    _keeper(context, "infer", "--hive", name, "--model", MODEL, "--prompt", "Say hello", "--max-tokens", "4",
            "--temperature", "0", timeout=300)
    context.infer_seconds = time.monotonic() - started


@then("the answer came from a worker on {host:w}")
def step_answered_on(context, host):
    _ok(context)
    said = context.keeper_done.stderr
    assert "· worker " in said, said
    worker_id = said.split("· worker ")[1].split()[0]
    _keeper(context, "workers", "list", "--json")
    workers = {w["worker_id"]: w for w in json.loads(_ok(context).stdout)["workers"]}
    assert workers[worker_id]["node_name"] == host, workers


@then('a prompt pinned to hive "{name:w}" is refused with "{code:Q}" naming "{known:Q}"')
def step_pinned_refused(context, name, code, known):
    _keeper(context, "infer", "--hive", name, "--prompt", "Say hello", "--max-tokens", "4")
    _fails(context, code, f"Known: {known}")

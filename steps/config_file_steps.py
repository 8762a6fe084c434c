"""Steps for config files: real queens and hives started on files written here, real rbee-keeper."""

from __future__ import annotations

import subprocess
import sys

from behave import given, then, when

from rbee.client import HiveClient, QueenClient
from rbee.ports import free_port
from rbee.testing.clients import wait_until


@given('a config file "{name:Q}" holding:')
def step_config_file(context, name):
    path = context.log_dir / "config" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    queen_url = context.cluster.queen.base_url if context.cluster.queen else ""
    path.write_text(context.text.replace("{queen_url}", queen_url) + "\n")


def _path(context, name: str) -> str:
    return str(context.log_dir / "config" / name)


def _start_queen(context, args: list[str], env: dict[str, str] | None = None) -> None:
    """A queen like Cluster.start_queen's, with an environment of its own (RBEE_CONFIG)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cluster = context.cluster
    cluster.queen_process = cluster._start("queen", "rbee.queen", ["--port", str(port), *args], f"{url}/health",
                                           20, env=env)
    cluster.queen = QueenClient(url)


def _start_hive(context, args: list[str], env: dict[str, str] | None = None) -> None:
    """A hive given no --queen-url nor --node-name: the file must say them."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cluster = context.cluster
    args = ["--port", str(port), "--models-dir", str(context.log_dir / "models"), *args]
    cluster.hive_process = cluster._start("hive", "rbee.hive", args, f"{url}/v1/health", 20, env=env)
    cluster.hive = HiveClient(url)


@when("a queen is started with --config {name}")
def step_queen_config(context, name):
    _start_queen(context, ["--config", _path(context, name)])


@when("that queen is stopped and started again with --config {name} --api-key {key}")
def step_queen_again(context, name, key):
    context.cluster.queen_process.stop(grace=15 * context.cluster.k)
    _start_queen(context, ["--config", _path(context, name), "--api-key", key])


@when("a queen is started with RBEE_CONFIG naming {name}")
def step_queen_rbee_config(context, name):
    _start_queen(context, [], env={"RBEE_CONFIG": _path(context, name)})


@when("a hive is started with XDG_CONFIG_HOME naming {name} and no --queen-url")
def step_hive_xdg(context, name):
    _start_hive(context, [], env={"XDG_CONFIG_HOME": _path(context, name)})


@when("a hive is started with --config {name} and no --queen-url")
def step_hive_config(context, name):
    _start_hive(context, ["--config", _path(context, name)])


@when("rbee-hive is started with --config {name}")
def step_hive_refused(context, name):
    argv = [sys.executable, "-m", "rbee.hive", "--port", str(free_port()), "--config", _path(context, name)]
    context.result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60 * context.cluster.k)


@then('it says "{words:Q}"')
def step_it_says(context, words):
    assert words in context.result.stderr, context.result.stderr[-2000:]


def _models(context, key: str | None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return context.cluster.queen.get("/v1/models", headers=headers)


@then('the queen\'s models need the key "{key:Q}"')
def step_needs_key(context, key):
    refused = _models(context, None)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "MISSING_API_KEY", refused.text
    served = _models(context, key)
    assert served.status_code == 200, served.text


@then('the key "{key:Q}" is refused with 401 "{code:Q}"')
def step_key_refused(context, key, code):
    r = _models(context, key)
    assert r.status_code == 401 and r.json()["error"]["code"] == code, r.text


@when('the example of `rbee-keeper config example hive` is saved as "{name:Q}" with queen_url set')
def step_save_example(context, name):
    done = subprocess.run([sys.executable, "-m", "rbee.keeper.cli", "config", "example", "hive"], capture_output=True,
                          text=True, check=False, timeout=60 * context.cluster.k)
    assert done.returncode == 0, done.stderr
    line = '# queen_url = "URL[,URL]"  (required)'
    assert line in done.stdout, done.stdout
    path = context.log_dir / "config" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(done.stdout.replace(line, f'queen_url = "{context.cluster.queen.base_url}"'))


@then('the queen lists the hive "{name:Q}"')
def step_lists_hive(context, name):
    def listed() -> bool:
        return any(h["hive_id"] == name for h in context.cluster.queen.get("/v2/hives/list").json()["hives"])

    wait_until(listed, 20 * context.cluster.k, what=f"hive {name} registered at the queen")

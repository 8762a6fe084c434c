"""Steps for settings that fail closed: programs run for real, their exit code and words checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from behave import given, then, when

from rbee.ports import free_port
from rbee.testing.clients import wait_until

MODULES = {"queen-rbee": "rbee.queen", "rbee-hive": "rbee.hive", "llm-worker-rbee": "rbee.worker"}
NEEDS = {"rbee-hive": ["--queen-url", "http://127.0.0.1:1"], "llm-worker-rbee": []}


def _run(context, program: str, *args: str) -> None:
    argv = [sys.executable, "-m", MODULES[program], "--port", str(free_port()), *NEEDS.get(program, []), *args]
    context.result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60 * context.cluster.k)


@when("{program} is started listening on every address without a key")
def step_open(context, program):
    _run(context, program, "--host", "0.0.0.0")


@when('{program} is started with the {flag} "{key:Q}"')
def step_short_key(context, program, flag, key):
    _run(context, program, flag, key)


def _key_file(context, text: str, mode: int) -> Path:
    path = context.log_dir / "keys.txt"
    path.write_text(text)
    path.chmod(mode)
    return path


@when("the queen is started with a key file that other users can read")
def step_loose_file(context):
    _run(context, "queen-rbee", "--api-key-file", str(_key_file(context, "sk-file-0123456789abcd\n", 0o644)))


@when("the queen is started with a key file that holds only blank lines")
def step_empty_file(context):
    _run(context, "queen-rbee", "--api-key-file", str(_key_file(context, "\n  \n", 0o600)))


@then('it exits with code {code:d} saying "{words:Q}"')
def step_exit(context, code, words):
    r = context.result
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert words in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


@given("a queen listening on every address with --insecure-no-auth")
def step_insecure_queen(context):
    context.cluster.start_queen("--host", "0.0.0.0", "--insecure-no-auth")


@then("its health answer warns that it runs without authentication")
def step_health_warns(context):
    body = context.cluster.queen.get("/health").json()
    assert "WITHOUT authentication" in body.get("warning", ""), body


@then("its log warns that it runs without authentication")
def step_log_warns(context):
    log = context.log_dir / "queen.log"
    wait_until(lambda: "WITHOUT AUTHENTICATION" in log.read_text(), 5 * context.cluster.k,
               what="the warning in the queen's log")

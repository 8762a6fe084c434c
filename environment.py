"""behave hooks: real queen, hive and llama.cpp worker processes per scenario, always torn down.

Fixtures are chosen by tag (``@fixture.queen``, ``@fixture.trio``). Cleanup is registered before
anything starts, so a half-failed setup still stops what it started. Logs go to a per-feature
folder under ``.logs/``, kept when the feature fails (or with ``-D keep_logs=1``). After the run,
no process that the run started — directly or through a hive — may still be alive.

``-D queen_url=URL [-D api_key=K]`` runs the ``@deployable`` scenarios (those that need only a queen
with a worker on the default model) against a fleet that is already running, as acceptance tests:
nothing is started, every other scenario is skipped with the reason. Every run ends with its ten
slowest scenarios.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

import parse
from behave import fixture, register_type, use_fixture
from behave.model import Feature

from rbee.client import QueenClient
from rbee.procfs import pid_alive
from rbee.testing.cluster import WORKER_ENV, Cluster
from rbee.testing.hosts import TestBed, sweep_testbeds

RUN_ID = uuid.uuid4().hex[:12]
LOG_ROOT = Path(".logs") / time.strftime("%Y%m%d-%H%M%S")


# ---------------------------------------------------------------- step types


@parse.with_pattern(r'[^"]*')
def _quoted_text(text: str) -> str:
    return text


register_type(Q=_quoted_text)  # "{name:Q}": text inside quotes, never spanning a closing quote


# ---------------------------------------------------------------- fixtures


def _stop_cluster(context) -> None:
    context.cluster.stop_all()


@fixture
def queen(context):
    context.cluster.start_queen()
    yield context.cluster


@fixture
def trio(context):
    """queen + hive + one worker on the default model, spawned by the hive and registered."""
    cluster = context.cluster
    cluster.start_queen()
    cluster.start_hive()
    context.hive_worker_id = cluster.spawn_on_hive()
    yield cluster


@fixture
def hosts(context):
    """Hosts alpha and beta (network namespaces, each with its own address and sshd): context.testbed."""
    bed = context.testbed = TestBed(context.log_dir / "hosts", ["alpha", "beta"],
                                    timeout_multiplier=context.cluster.k)
    context.add_cleanup(bed.close)
    yield bed.start()


FIXTURES = {"fixture.queen": queen, "fixture.trio": trio, "fixture.hosts": hosts}


# ---------------------------------------------------------------- a deployed fleet


class DeployedFleet(Cluster):
    """A queen that is already running (``-D queen_url``), spoken to with ``-D api_key``. It starts nothing:
    a step that would start a process fails, naming it."""

    def __init__(self, queen_url: str, api_key: str | None, log_dir: Path, timeout_multiplier: float) -> None:
        super().__init__(log_dir, timeout_multiplier)
        self.queen = QueenClient(queen_url, api_key=api_key)

    def _start(self, name: str, *args, **kwargs):
        raise AssertionError(f"a scenario against the deployed queen tried to start {name}: "
                             "only scenarios that start nothing may be tagged @deployable")


def _skip_unless_deployable(scenario) -> bool:
    """Against a deployed fleet, True (and skipped) for a scenario that needs processes of its own."""
    if "deployable" in scenario.effective_tags:
        return False
    scenario.skip(reason="needs processes of its own; with -D queen_url only @deployable scenarios run")
    return True


# ---------------------------------------------------------------- the slowest scenarios


def _time_scenario(context, scenario) -> None:
    if scenario.status.name == "skipped":
        return
    context.timings.append((time.monotonic() - context.scenario_started, scenario.duration,
                            f"{scenario.location}  {scenario.name}"))


def _print_slowest(context, count: int = 10) -> None:
    slowest = sorted(context.timings, reverse=True)[:count]
    lines = [f"\n{len(slowest)} slowest scenarios (seconds with setup, of which steps):"]
    lines += [f"  {total:7.1f} {steps:7.1f}  {where.strip()}" for total, steps, where in slowest]
    if slowest:  # past behave's output capture, which would swallow it on a run that passed
        print("\n".join(lines), file=sys.__stdout__, flush=True)


# ---------------------------------------------------------------- hooks


def before_all(context):
    os.environ["RBEE_TEST_RUN"] = RUN_ID  # inherited by every process we start, and by theirs
    for name, value in WORKER_ENV.items():  # one llama.cpp thread per worker (see WORKER_ENV); yours if set
        os.environ.setdefault(name, value)
    # Run as a background job of a script, this process starts with SIGINT ignored, and so would
    # every program it starts: the Ctrl+C scenarios need it to act as it does at a terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    context.config.setup_logging()
    userdata = context.config.userdata
    context.deployed_queen = userdata.get("queen_url")  # None: every scenario starts its own processes
    context.fleet_key = userdata.get("api_key")  # the key steps send to a deployed queen
    context.timings = []


def before_feature(context, feature: Feature):
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(feature.filename).stem)
    context.log_dir = (LOG_ROOT / name).resolve()
    context.log_dir.mkdir(parents=True, exist_ok=True)


def before_scenario(context, scenario):
    # Every scenario gets an (empty) cluster; its teardown is registered before anything starts,
    # so steps and fixtures that start processes never leave one behind.
    context.scenario_started = time.monotonic()
    k = float(context.config.userdata.get("timeout_multiplier", "1"))
    if context.deployed_queen:
        if not _skip_unless_deployable(scenario):
            context.cluster = DeployedFleet(context.deployed_queen, context.fleet_key, context.log_dir, k)
        return
    context.cluster = Cluster(context.log_dir, timeout_multiplier=k)
    context.add_cleanup(_stop_cluster, context)
    for tag in scenario.effective_tags:
        if tag in FIXTURES:
            use_fixture(FIXTURES[tag], context)


def after_scenario(context, scenario):
    _time_scenario(context, scenario)
    browser = getattr(context, "browser", None)  # @ui: a failed page's screenshot beside the logs
    if browser is not None:
        browser.keep_failure(context.log_dir, scenario)


def after_feature(context, feature: Feature):
    keep = feature.status.name != "passed" or context.config.userdata.get("keep_logs")
    if not keep:
        shutil.rmtree(context.log_dir, ignore_errors=True)
    else:
        print(f"logs kept: {context.log_dir}")


def after_all(context):
    _print_slowest(context)
    hosts_left = sweep_testbeds()  # what a test bed left (then removed), before looking for processes
    leftovers = _processes_of_this_run()
    for pid in leftovers:  # don't leave them behind even though we fail
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    if LOG_ROOT.exists() and not any(LOG_ROOT.iterdir()):
        LOG_ROOT.rmdir()
    assert not leftovers, f"processes outlived the run: {leftovers}"
    assert not hosts_left, f"test-bed hosts outlived the run: {hosts_left}"


def _processes_of_this_run() -> list[int]:
    """Every live process (other than us) whose environment carries this run's RBEE_TEST_RUN."""
    marker = f"RBEE_TEST_RUN={RUN_ID}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in env.split(b"\0") and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found

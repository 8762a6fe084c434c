"""Steps about the test bed itself (rbee.testing.hosts): hosts reached over SSH, links cut, hosts killed."""

from __future__ import annotations

import secrets
import socket

from behave import given, then, when

from rbee.procfs import cmdline, other_pids
from rbee.testing.hosts import SSH_PORT, Reach, TestBed, TestBedError, reach

BEYOND = "192.0.2.1"  # TEST-NET-1: an address outside the test bed


def _host(context, name: str):
    return context.testbed.host(name)


def _leave_running(context, host) -> None:
    """A program detached from its SSH session (as a hive started over SSH is), with an argv no other has."""
    if not getattr(context, "marker", None):
        context.marker = f"{600 + secrets.randbelow(10**6) / 10**6:.6f}"
    assert host.ssh(f"setsid sleep {context.marker} </dev/null >/dev/null 2>&1 &").returncode == 0


def _assert_nothing_left(bed: TestBed, marker: str | None) -> None:
    assert not bed.leftovers(), bed.leftovers()
    stray = [pid for pid in other_pids() if marker and cmdline(pid) == [b"sleep", marker.encode(), b""]]
    assert not stray, f"programs started on the hosts still run: {stray}"


# ---------------------------------------------------------------- reaching the hosts


@then("the control host logs in to alpha and to beta over SSH, each reporting its own address")
def step_login_each(context):
    for host in context.testbed.hosts.values():
        done = host.ssh("hostname -I")
        assert done.returncode == 0 and done.stdout.split() == [host.address], (host.name, done)


@then("the control host logs in to {name:w} over SSH")
@then("the control host still logs in to {name:w} over SSH")
def step_login(context, name):
    done = _host(context, name).ssh("hostname -I", timeout=10 * context.cluster.k)
    assert done.returncode == 0 and done.stdout.split() == [_host(context, name).address], done


@then("alpha and beta reach the control host and each other")
def step_reach_control(context):
    listener = socket.create_server((context.testbed.control_address, 0))
    context.add_cleanup(listener.close)
    alpha, beta = _host(context, "alpha"), _host(context, "beta")
    control = (context.testbed.control_address, listener.getsockname()[1], 5)
    assert (alpha.reach(*control), beta.reach(*control)) == (Reach.OPEN,) * 2
    assert alpha.reach(beta.address, SSH_PORT, 5) is beta.reach(alpha.address, SSH_PORT, 5) is Reach.OPEN


@then("no host has a route beyond the test bed")
def step_no_route(context):
    outcomes = {host.name: host.reach(BEYOND, 80, 2) for host in context.testbed.hosts.values()}
    assert set(outcomes.values()) == {Reach.UNREACHABLE}, outcomes


# ---------------------------------------------------------------- an established connection


@given("an SSH session open from the control host to {name:w}")
def step_session(context, name):
    context.session = _host(context, name).session()
    context.add_cleanup(context.session.close)
    context.session.send("hello")
    assert context.session.read_line(10 * context.cluster.k) == "hello", context.session.error()


@then("the session to {name:w} gets no answer for {n:d} second and stays open")
@then("the session to {name:w} gets no answer for {n:d} seconds and stays open")
def step_session_silent(context, name, n):
    context.session.send(line := f"after the fault, {n}")
    assert context.session.read_line(n) is None and context.session.alive(), context.session.error()
    context.pending = line


@then("the session to {name:w} answers again within {n:d} seconds")
def step_session_resumes(context, name, n):
    assert context.session.read_line(n * context.cluster.k) == context.pending, context.session.error()


@then("the session to {name:w} is reset as soon as it sends")
def step_session_reset(context, name):
    context.session.send("anyone there?")
    assert context.session.ended_within(5 * context.cluster.k) == 255, "the session stayed open"


@then("a new connection to {name:w}'s SSH server times out")
def step_connect_times_out(context, name):
    assert (outcome := reach(_host(context, name).address, SSH_PORT, 2)) is Reach.TIMED_OUT, outcome


@then("a new connection to {name:w}'s SSH server is refused")
def step_connect_refused(context, name):
    assert (outcome := reach(_host(context, name).address, SSH_PORT, 5)) is Reach.REFUSED, outcome


# ---------------------------------------------------------------- faults


@when("{name:w}'s link is cut")
def step_cut(context, name):
    context.testbed.cut(name)


@when("{name:w}'s link is healed")
def step_heal(context, name):
    context.testbed.heal(name)


@given("a program left running on {name:w} over SSH")
def step_program_running(context, name):
    _leave_running(context, _host(context, name))


@when("host {name:w} is killed")
def step_kill_host(context, name):
    context.testbed.kill_host(name)


@then("nothing runs on {name:w}")
def step_nothing_runs(context, name):
    assert not _host(context, name).pids(), _host(context, name).pids()


@when("{name:w}'s SSH server is started again")
def step_restart_sshd(context, name):
    context.testbed.restart_sshd(name)


# ---------------------------------------------------------------- teardown


@given("a test bed of hosts gamma and delta, with a program left running on each")
def step_bed_with_programs(context):
    context.bed = TestBed(context.log_dir / "beds", ["gamma", "delta"], timeout_multiplier=context.cluster.k)
    context.add_cleanup(context.bed.close)
    context.bed.start()
    for host in context.bed.hosts.values():
        _leave_running(context, host)


@when("the test bed is closed")
def step_close_bed(context):
    context.bed.close()


@when("a test bed of hosts gamma and delta is started where delta's SSH server cannot start")
def step_bed_failing(context):
    context.bed = TestBed(context.log_dir / "beds", ["gamma", "delta"], timeout_multiplier=context.cluster.k,
                          sshd_config_extra={"delta": "NoSuchOption yes"})
    context.add_cleanup(context.bed.close)
    try:
        context.bed.start()
    except TestBedError as exc:
        context.bed_error = str(exc)


@then("starting it fails, naming {name:w}")
def step_bed_failed(context, name):
    error = getattr(context, "bed_error", "(it started)")
    assert f"sshd on {name} exited" in error, error


@then("nothing of that test bed is left: no namespace, link or process")
def step_nothing_left(context):
    _assert_nothing_left(context.bed, getattr(context, "marker", None))

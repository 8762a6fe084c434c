"""Steps of features/fleet_scale.feature: slow health on a busy scripted worker, frozen workers, and the
queen's --max-streams bound."""

from __future__ import annotations

import os
import signal
import time

from behave import given, then, when

from rbee.testing.clients import BackgroundStream, wait_until
from rbee.testing.cluster import start_fake_worker

INTERVAL = 0.02  # seconds between the scripted worker's tokens: 300 tokens take about 6 s


def _deadline(context, seconds: float) -> float:
    return seconds * context.cluster.k


@given("a queen that relays at most {n:d} streams at once")
def step_queen_max_streams(context, n):
    context.cluster.start_queen("--max-streams", str(n))


@given('a scripted worker "{worker_id:Q}" with {slots:d} slots whose health takes {secs:d} seconds while it is busy')
def step_slow_health_worker(context, worker_id, slots, secs):
    worker = start_fake_worker(context.cluster, worker_id, slots=slots, interval=INTERVAL, slow_health=secs)
    context.cluster.register(worker)
    context.scale_worker = worker


def _stream(context, tokens: int) -> BackgroundStream:
    stream = BackgroundStream(context.cluster.queen, "/v1/inference", {"prompt": "x", "max_tokens": tokens})
    context.add_cleanup(stream.abandon)
    assert stream.response.status_code == 200, stream.response.text
    return stream


@when("{n:d} clients each start streaming {tokens:d} tokens through the queen")
def step_streams(context, n, tokens):
    context.scale_streams = [_stream(context, tokens) for _ in range(n)]
    for stream in context.scale_streams:
        stream.wait_first_event(_deadline(context, 10))


@then('worker "{worker_id:Q}" stays in routing for {n:d} seconds while it streams, and serves a new request meanwhile')
def step_stays_in_routing(context, worker_id, n):
    queen, end, served = context.cluster.queen, time.monotonic() + n, None
    while time.monotonic() < end:  # an invariant held throughout, checked continuously
        worker = queen.worker(worker_id)
        assert worker is not None and worker.state != "offline", worker
        assert any(not s.terminated for s in context.scale_streams), "the streams ended before the check did"
        if served is None and time.monotonic() > end - n / 2:  # past the heartbeat timeout: still routed to
            served = queen.infer({"prompt": "y", "max_tokens": 3})
            assert served.done is not None and served.done["worker_id"] == worker_id, (served.status, served.events[-3:])
        time.sleep(0.1)  # poll
    assert served is not None


@then("every one of those streams ends with a done event of {tokens:d} tokens")
def step_streams_done(context, tokens):
    for stream in context.scale_streams:
        stream.wait_finished(_deadline(context, 60))
        done = stream.events[-1]
        assert done.get("done") is True and done["total_tokens"] == tokens, stream.events[-3:]


@when('worker "{worker_id:Q}" freezes while it streams')
def step_freeze(context, worker_id):
    stream = _stream(context, 3000)  # the queen relays it until the worker freezes, then it stalls
    stream.wait_first_event(_deadline(context, 10))
    pid = context.cluster.workers[worker_id].process.proc.pid
    os.kill(pid, signal.SIGSTOP)  # alive to the kernel, answering nothing: its stream stops moving
    context.add_cleanup(os.kill, pid, signal.SIGCONT)  # so its stop at the end is not held up


@then('a third stream through the queen is answered {status:d} "{code:Q}" with a Retry-After header')
def step_third_refused(context, status, code):
    r = context.cluster.queen.post("/v1/inference", json={"prompt": "z", "max_tokens": 5}, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    assert "--max-streams" in r.json()["error"]["message"], r.text
    assert int(r.headers["Retry-After"]) >= 1, r.headers


@then("a stream through the queen is served again once they are done")
def step_served_again(context):
    def served() -> bool:
        result = context.cluster.queen.infer({"prompt": "again", "max_tokens": 5})
        return result.done is not None and result.done["total_tokens"] == 5

    wait_until(served, _deadline(context, 10), interval=0.2, what="a stream served after the others ended")

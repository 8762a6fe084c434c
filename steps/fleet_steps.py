"""Steps about the queen under load and faults: liveness, failover, queueing, concurrency."""

from __future__ import annotations

import time

from behave import given, then, when

from rbee.ports import free_port
from rbee.testing.clients import BackgroundStream, wait_until
from rbee.testing.cluster import RunningWorker, start_fake_worker
from rbee.testing.load import run_load, summary

SLOW = 0.05  # seconds between a slow scripted worker's tokens


def _deadline(context, seconds: float) -> float:
    return seconds * context.cluster.k


# ---------------------------------------------------------------- queens with settings


@given("a queen")
def step_queen(context):
    context.cluster.start_queen()


@given("a queen that checks liveness with a {n:d} second heartbeat timeout")
def step_queen_heartbeat(context, n):
    context.cluster.start_queen("--heartbeat-timeout", str(n))


@given("a queen that checks liveness with a {n:d} second heartbeat timeout and removes after {m:d} seconds")
def step_queen_heartbeat_remove(context, n, m):
    context.cluster.start_queen("--heartbeat-timeout", str(n), "--remove-after", str(m))


@given("a queen that gives up on a silent stream after {n:d} second")
def step_queen_stall(context, n):
    context.cluster.start_queen("--stall-timeout", str(n))


@given("a queen that queues requests for up to {n:d} seconds")
def step_queen_queue(context, n):
    context.cluster.start_queen("--queue-timeout", str(n))


@given("a queen that queues at most {size:d} request for up to {n:d} seconds")
@given("a queen that queues up to {size:d} requests for up to {n:d} seconds")
def step_queen_queue_size(context, size, n):
    context.cluster.start_queen("--queue-size", str(size), "--queue-timeout", str(n))


@given('a queen with API keys "{a:Q}" and "{b:Q}" that queues requests for up to {n:d} seconds')
def step_queen_keys(context, a, b, n):
    queen = context.cluster.start_queen("--api-key", _key_of(a), "--api-key", _key_of(b), "--queue-timeout", str(n))
    queen.session.headers["Authorization"] = f"Bearer {_key_of(a)}"


def _key_of(name: str) -> str:
    """The API key of the client called ``name`` ("alice"), or ``name`` itself when it is a whole key
    (keys must be at least 16 characters)."""
    return name if len(name) >= 16 else f"{name}-key-0123456789"


# ---------------------------------------------------------------- workers that misbehave


def _register(context, worker: RunningWorker) -> None:
    context.cluster.register(worker)


@given('a worker "{worker_id:Q}" that is registered but not running')
def step_ghost(context, worker_id):
    r = context.cluster.queen.register({"worker_id": worker_id, "url": f"http://127.0.0.1:{free_port()}",
                                        "model_ref": "smollm2-135m-instruct", "slots_total": 8})
    assert r.status_code == 200, r.text


@given('a scripted worker "{worker_id:Q}" that dies after {n:d} tokens')
def step_crasher(context, worker_id, n):
    _register(context, start_fake_worker(context.cluster, worker_id, slots=4, interval=SLOW, die_after=n))


@given('a scripted worker "{worker_id:Q}" that stalls after {n:d} tokens')
def step_staller(context, worker_id, n):
    _register(context, start_fake_worker(context.cluster, worker_id, slots=2, interval=SLOW, stall_after=n))


@given('a scripted worker "{worker_id:Q}" with 1 slot that streams slowly')
def step_slow(context, worker_id):
    _register(context, start_fake_worker(context.cluster, worker_id, slots=1, interval=SLOW))


@given("{count:d} scripted workers with {slots:d} slots each are registered")
def step_many_fakes(context, count, slots):
    for i in range(count):
        _register(context, start_fake_worker(context.cluster, f"scripted-{i}", slots=slots, interval=0.01))


@when('worker "{worker_id:Q}" is killed')
def step_kill(context, worker_id):
    context.cluster.workers[worker_id].process.proc.kill()


# ---------------------------------------------------------------- liveness


@then('worker "{worker_id:Q}" is out of routing within {n:d} seconds')
def step_out_of_routing(context, worker_id, n):
    queen = context.cluster.queen
    wait_until(lambda: (w := queen.worker(worker_id)) is None or w.state == "offline",
               _deadline(context, n), what=f"{worker_id} out of routing")


@then('the queen does not list worker "{worker_id:Q}" within {n:d} seconds')
def step_not_listed_within(context, worker_id, n):
    wait_until(lambda: context.cluster.queen.worker(worker_id) is None, _deadline(context, n),
               what=f"{worker_id} removed")


@then('worker "{worker_id:Q}" stays idle for {n:d} seconds')
def step_stays_idle(context, worker_id, n):
    end = time.monotonic() + n
    while time.monotonic() < end:  # an invariant held throughout, checked continuously
        worker = context.cluster.queen.worker(worker_id)
        assert worker is not None and worker.state == "idle", worker
        time.sleep(0.1)  # poll


@then('a client asking the queen for {n:d} tokens of "{prompt:Q}" is refused with {status:d} "{code:Q}"')
def step_ask_refused(context, n, prompt, status, code):
    context.execute_steps(f'''
        When a client asks the queen for {n} tokens of "{prompt}"
        Then the queen refuses with {status} "{code}"
    ''')


# ---------------------------------------------------------------- failover


@then('the stream ends with a "{code:Q}" error event and [DONE] within {n:d} seconds')
def step_error_event(context, code, n):
    r = context.result
    assert r.status == 200, r.error_body
    assert r.error is not None and r.error["code"] == code, r.events[-3:]
    assert r.terminated, "no [DONE]"
    assert r.ended - r.started <= _deadline(context, n), r.ended - r.started


@then('scripted worker "{worker_id:Q}" has all slots free within {n:d} seconds')
def step_fake_free(context, worker_id, n):
    client = context.cluster.workers[worker_id].client
    wait_until(lambda: (s := client.ready())["slots_available"] == s["slots_total"], _deadline(context, n),
               what=f"{worker_id}'s slots free")


# ---------------------------------------------------------------- queue


def _queued(context, body: dict, headers: dict | None = None) -> BackgroundStream:
    stream = BackgroundStream(context.cluster.queen, "/v1/inference", body, headers)
    context.add_cleanup(stream.abandon)
    assert stream.response.status_code == 200, stream.response.text
    return stream


def _wait_position(context, stream: BackgroundStream, position: int) -> None:
    wait_until(lambda: f"queued position={position}" in stream.comments, _deadline(context, 10),
               what=f"queue position {position} announced")


@given('a second client starts streaming {n:d} tokens of "{prompt:Q}" through the queen')
@when('a second client starts streaming {n:d} tokens of "{prompt:Q}" through the queen')
def step_second_client(context, n, prompt):
    context.second = _queued(context, {"prompt": prompt, "max_tokens": n})


@given("the second client is told it is at position {position:d} in the queue")
@then("the second client is told it is at position {position:d} in the queue")
def step_second_position(context, position):
    _wait_position(context, context.second, position)


@then("the second client's answer ends with a done event that reports time spent queued")
def step_second_done(context):
    context.second.wait_finished(_deadline(context, 30))
    done = context.second.events[-1]
    assert done.get("done") is True, context.second.events[-3:]
    assert done["queued_ms"] > 0 and done["worker_id"] == "solo", done


@when("a client asks the queen for a whole answer of {n:d} tokens")
def step_whole_answer(context, n):
    context.response = context.cluster.queen.post("/v1/inference", json={"prompt": "Hi", "max_tokens": n,
                                                                         "stream": False}, timeout=60)


@given('a long answer is streaming from the queen for "{key:Q}"')
def step_long_for_key(context, key):
    stream = _queued(context, {"prompt": "long", "max_tokens": 4000}, {"Authorization": f"Bearer {_key_of(key)}"})
    stream.wait_first_event(_deadline(context, 30))
    context.long_stream = stream


def _queue_for(context, key: str, names: list[str]) -> None:
    context.named = getattr(context, "named", {})
    for name in names:
        stream = _queued(context, {"prompt": name, "max_tokens": 3},
                         {"Authorization": f"Bearer {_key_of(key)}", "X-Request-Id": name})
        # In line before the next one comes (its place depends on the keys' rotation).
        wait_until(lambda s=stream: any(c.startswith("queued position=") for c in s.comments),
                   _deadline(context, 10), what=f"request {name} queued")
        context.named[name] = stream


@when('"{key:Q}" queues requests "{a:Q}", "{b:Q}" and "{c:Q}" one after another')
def step_queue_three(context, key, a, b, c):
    _queue_for(context, key, [a, b, c])


@when('"{key:Q}" queues request "{a:Q}"')
def step_queue_one(context, key, a):
    _queue_for(context, key, [a])


@then('the queued requests are served in the order "{a:Q}", "{b:Q}", "{c:Q}", "{d:Q}"')
def step_served_order(context, a, b, c, d):
    for stream in context.named.values():
        stream.wait_finished(_deadline(context, 30))
    order = sorted(context.named, key=lambda name: context.named[name].first_token_at or float("inf"))
    assert order == [a, b, c, d], order


# ---------------------------------------------------------------- concurrency


@when("{count:d} clients stream {n:d} tokens each at once and a fifth of them hang up mid-stream")
def step_load(context, count, n):
    context.outcomes = run_load(context.cluster.queen_url, count, abandon_share=0.2, max_tokens=n,
                                timeout=_deadline(context, 120))


@then("every request ended with a done event, a clean error, or the client hanging up")
def step_outcomes(context):
    counts = summary(context.outcomes)
    broken = {k: v for k, v in counts.items() if k.startswith("broken")}
    assert not broken, counts
    assert counts.get("done:length", 0) > 0, counts


@then("every slot is free again at the queen and at every worker within {n:d} seconds")
def step_all_free(context, n):
    cluster = context.cluster

    def all_free():
        listed = cluster.queen.workers()
        at_queen = all(w.slots_available == w.slots_total and w.state == "idle" for w in listed)
        at_workers = all((s := w.client.ready())["slots_available"] == s["slots_total"]
                         for w in cluster.workers.values())
        return at_queen and at_workers and len(listed) == len(cluster.workers)

    wait_until(all_free, _deadline(context, n), what="every slot free everywhere")

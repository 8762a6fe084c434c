"""Steps about inference through the queen, on real llama.cpp workers."""

from __future__ import annotations

import os

from behave import given, then, when

from rbee.models import DEFAULT_MODEL_REF, default_model_path
from rbee.testing.clients import BackgroundStream, wait_until

LONG = {"prompt": "Write a very long story about a bee who travels the world.", "max_tokens": 4000, "ignore_eos": True,
        "temperature": 0.8}


def _ask(context, body: dict) -> None:
    context.response = None
    context.result = context.cluster.queen.infer(body)


@given('a real worker "{worker_id:Q}" with {slots:d} slot is registered')
@given('a real worker "{worker_id:Q}" with {slots:d} slots is registered')
def step_real_worker(context, worker_id, slots):
    worker = context.cluster.start_worker(worker_id=worker_id, slots=slots)
    context.cluster.register(worker)


def _live_default_workers(context) -> list:
    return [w for w in context.cluster.queen.workers(model=DEFAULT_MODEL_REF) if w.state != "offline"]


@given("the queen has a worker on the default model")
def step_default_worker(context):
    if context.deployed_queen:  # the fleet brings its own; a scenario against it starts nothing
        wait_until(lambda: _live_default_workers(context), 30 * context.cluster.k,
                   what=f"a live worker on {DEFAULT_MODEL_REF} at the deployed queen")
    else:
        step_real_worker(context, "default", 1)


@given('a real worker "{worker_id:Q}" serving a second model "{name:Q}" is registered')
def step_second_model(context, worker_id, name):
    path = context.log_dir / f"{name}.gguf"
    if not path.exists():
        os.symlink(default_model_path(), path)
    worker = context.cluster.start_worker(worker_id=worker_id, model=f"file://{path}")
    context.cluster.register(worker)


@given("a long answer is streaming from the queen")
def step_long_stream(context):
    stream = BackgroundStream(context.cluster.queen, "/v1/inference", LONG)
    context.add_cleanup(stream.abandon)
    assert stream.response.status_code == 200, stream.response.text
    stream.wait_first_event(30)
    context.long_stream = stream


@when("the long answer is abandoned by its client")
def step_abandon(context):
    context.long_stream.abandon()


@when('a client asks the queen for {n:d} tokens of "{prompt:Q}"')
def step_ask(context, n, prompt):
    _ask(context, {"prompt": prompt, "max_tokens": n})


@when('a client asks the queen for {n:d} tokens of "{prompt:Q}" from model "{model:Q}"')
def step_ask_model(context, n, prompt, model):
    _ask(context, {"prompt": prompt, "max_tokens": n, "model": model})


@when('a client streams {n:d} tokens of "{prompt:Q}" through the queen')
def step_stream(context, n, prompt):
    # ignore_eos: a sampled end-of-sequence as the first token would leave no tokens to check
    _ask(context, {"prompt": prompt, "max_tokens": n, "ignore_eos": True})


@when('a client streams exactly {n:d} tokens of "{prompt:Q}" through the queen')
def step_stream_exact(context, n, prompt):
    _ask(context, {"prompt": prompt, "max_tokens": n, "ignore_eos": True})


@when('a client streams {n:d} tokens of "{prompt:Q}" at temperature 0 through the queen')
def step_stream_greedy(context, n, prompt):
    context.request = {"prompt": prompt, "max_tokens": n, "temperature": 0}
    _ask(context, context.request)


@when("the same request is sent directly to the worker that served it")
def step_direct(context):
    served = context.result.headers.get("X-Rbee-Worker")
    context.direct = context.cluster.workers[served].client.infer(context.request)


@then("both answers have the same text")
def step_same_text(context):
    assert context.result.status == 200 and context.direct.status == 200
    assert context.result.text, "empty answer"
    assert context.result.text == context.direct.text, (context.result.text, context.direct.text)


@then("the answer was served by the worker that was not busy")
def step_served_by_idle(context):
    assert context.result.status == 200, context.result.error_body
    busy = context.long_stream.worker_id
    served = context.result.headers.get("X-Rbee-Worker")
    assert served and served != busy, (served, busy)
    context.served_by = served


@then('the answer was served by worker "{worker_id:Q}"')
def step_served_by(context, worker_id):
    assert context.result.status == 200, context.result.error_body
    assert context.result.headers.get("X-Rbee-Worker") == worker_id, context.result.headers


@then("the answer ends with a done event")
def step_done(context):
    assert context.result.status == 200, context.result.error_body
    assert context.result.events and context.result.events[-1].get("done") is True, context.result.events[-3:]
    assert context.result.events[-1]["finish_reason"] in ("stop", "length")


@then("the stream is terminated by [DONE]")
def step_terminated(context):
    assert context.result.terminated


@then("the events carry indexes 0 to n-1 in order")
def step_indexes(context):
    indexes = [e["index"] for e in context.result.tokens]
    assert indexes and indexes == list(range(len(indexes))), indexes


@then("the answer names the worker that served it and a request id")
def step_headers(context):
    served = context.result.headers.get("X-Rbee-Worker")
    assert served in [w.worker_id for w in context.cluster.queen.workers()], (served, context.result.headers)
    assert context.result.headers.get("X-Request-Id"), context.result.headers


@then("the first token arrived well before the done event")
def step_first_token_early(context):
    r = context.result
    assert r.status == 200 and r.done, r.error_body
    assert r.done["total_tokens"] >= 32, r.done
    first, last = r.arrival[0], r.arrival[-1]
    decode_s = r.done["duration_ms"] / 1000 * (r.done["total_tokens"] - 1) / r.done["total_tokens"]
    # Buffered relays deliver everything at the end; streamed ones spread it over the generation.
    assert last - first >= 0.5 * decode_s, (last - first, decode_s)


@then("that worker becomes idle with all slots free within {seconds:d} seconds")
def step_that_worker_idle(context, seconds):
    context.execute_steps(f'Then worker "{context.served_by}" becomes idle with all slots free within {seconds} seconds')


@then("the worker of the long answer becomes idle with all slots free within {seconds:d} seconds")
def step_long_worker_idle(context, seconds):
    step_worker_idle(context, context.long_stream.worker_id, seconds)


@then('worker "{worker_id:Q}" becomes idle with all slots free within {seconds:d} seconds')
def step_worker_idle(context, worker_id, seconds):
    queen = context.cluster.queen

    def idle_everywhere():
        listed = queen.worker(worker_id)
        ready = context.cluster.workers[worker_id].client.ready()
        return (listed.state == "idle" and listed.slots_available == listed.slots_total
                and ready["slots_available"] == ready["slots_total"])

    wait_until(idle_everywhere, seconds * context.cluster.k, what=f"{worker_id} idle at queen and worker")

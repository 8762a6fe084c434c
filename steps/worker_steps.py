"""Steps about one real llama.cpp worker on its own: slots, cancellation, loading, draining.

"Counting" is a prompt greedy decoding continues for as long as asked (``6, 7, 8, ...``), so an
answer's length and text are known in advance; long answers also never end on their own.
"""

from __future__ import annotations

import signal
import time

from behave import given, then, when

from rbee.client import WorkerClient
from rbee.models import default_model_path
from rbee.testing.clients import BackgroundStream, HangingRequest, at_once, follow_events, wait_until
from rbee.testing.cluster import launch_worker

COUNTING = "1, 2, 3, 4, 5,"
COUNTED = " " + ", ".join(str(i) for i in range(6, 1000))  # what greedy decoding writes after COUNTING
LONG = {"prompt": COUNTING, "max_tokens": 32768, "temperature": 0, "ignore_eos": True}


def _stream(context, body: dict, headers: dict | None = None) -> BackgroundStream:
    stream = BackgroundStream(context.worker.client, "/v1/inference", body, headers)
    context.add_cleanup(stream.abandon)  # runs before the worker is stopped (cleanups run last-in first-out)
    assert stream.response.status_code == 200, stream.response.text
    stream.wait_first_event(30 * context.cluster.k)
    return stream


def _ask(context, body: dict) -> None:
    context.response = None
    context.results = [*getattr(context, "results", []), context.worker.client.infer(body)]
    context.result = context.results[-1]


def _slots(context) -> tuple[int, int]:
    ready = context.worker.client.ready()
    return ready["slots_available"], ready["slots_total"]


def _done(stream: BackgroundStream) -> dict | None:
    return next((e for e in stream.events if e.get("done")), None)


def _counting(n: int, **extra) -> dict:
    return {"prompt": COUNTING, "max_tokens": n, "temperature": 0, "ignore_eos": True, **extra}


# ---------------------------------------------------------------- workers


@given("a worker with {slots:d} slot")
@given("a worker with {slots:d} slots")
def step_worker(context, slots):
    context.worker = context.cluster.start_worker(slots=slots)


@given("a worker with {slots:d} slot and a context of {ctx:d} tokens")
@given("a worker with {slots:d} slots and a context of {ctx:d} tokens")
def step_worker_ctx(context, slots, ctx):
    context.worker = context.cluster.start_worker(slots=slots, ctx_size=ctx)


@given("a worker with {slots:d} slot and a drain timeout of {seconds:d} second")
@given("a worker with {slots:d} slot and a drain timeout of {seconds:d} seconds")
@given("a worker with {slots:d} slots and a drain timeout of {seconds:d} seconds")
def step_worker_drain_timeout(context, slots, seconds):
    context.worker = context.cluster.start_worker(slots=slots, extra=("--drain-timeout", str(seconds)))


@then("the worker reports {free:d} of {total:d} slots free")
@given("the worker reports {free:d} of {total:d} slots free")
@then("right after that the worker reports {free:d} of {total:d} slots free")
def step_slots_now(context, free, total):
    assert _slots(context) == (free, total), context.worker.client.ready()


@then("the worker reports {free:d} of {total:d} slots free within {seconds:d} second")
def step_slots_soon(context, free, total, seconds):
    wait_until(lambda: _slots(context) == (free, total), seconds * context.cluster.k,
               interval=0.02, what=f"{free} of {total} slots free")


@then("the worker reports {free:d} of {total:d} slots free and is busy")
def step_slots_busy(context, free, total):
    ready = context.worker.client.ready()
    assert (ready["slots_available"], ready["slots_total"], ready["state"]) == (free, total, "busy"), ready


# ---------------------------------------------------------------- asking


@given("a long answer is streaming from the worker")
def step_long(context):
    context.long_stream = _stream(context, LONG)


@given('a long answer with request id "{rid:Q}" is streaming from the worker')
def step_long_with_id(context, rid):
    context.long_stream = _stream(context, LONG, {"X-Request-Id": rid})
    assert context.long_stream.request_id == rid, context.long_stream.response.headers
    context.named_streams = {**getattr(context, "named_streams", {}), rid: context.long_stream}


@given("{count:d} long answers are streaming from the worker")
@when("{count:d} long answers are streaming from the worker")
def step_many_long(context, count):
    context.busy_streams = [_stream(context, LONG) for _ in range(count)]


@given("an answer of {n:d} tokens is streaming from the worker")
def step_running_answer(context, n):
    context.running = _stream(context, _counting(n))


@when("{count:d} clients each ask the worker for {n:d} tokens at the same time")
def step_many_at_once(context, count, n):
    url = context.worker.url
    context.results = at_once(*(lambda: WorkerClient(url).infer(_counting(n)) for _ in range(count)))


@when("a client asks the worker for {n:d} tokens of counting")
def step_ask_counting(context, n):
    context.request = _counting(n)
    _ask(context, context.request)


@when('a client asks the worker for {n:d} tokens of counting, stopping at "{stop:Q}"')
def step_ask_stop(context, n, stop):
    _ask(context, _counting(n, stop=[stop], ignore_eos=False))


@when('a client asks the worker for {n:d} tokens of "{prompt:Q}" at temperature {t:g} with seed {seed:d}')
def step_ask_seeded(context, n, prompt, t, seed):
    context.request = {"prompt": prompt, "max_tokens": n, "temperature": t, "seed": seed}
    _ask(context, context.request)


@when('a client asks the worker for {n:d} tokens of "{prompt:Q}" at temperature 0')
def step_ask_greedy(context, n, prompt):
    context.request = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True}
    _ask(context, context.request)


@when("the client asks the worker the very same again")
def step_ask_again(context):
    _ask(context, context.request)


@when("the client asks the same at temperature {t:g} with {setting} set to {value:g}")
def step_ask_with_setting(context, t, setting, value):
    _ask(context, {**context.request, "temperature": t, setting: value})


@when("a client sends the worker a prompt of about {n:d} tokens")
def step_long_prompt(context, n):
    context.response = context.worker.client.post("/v1/inference", json={"prompt": "bee " * n, "max_tokens": 8})


@when("two clients ask the worker for a long answer at the same instant")
def step_two_at_once(context):
    url = context.worker.url
    context.contenders = at_once(*(lambda: WorkerClient(url).open_stream("/v1/inference", LONG) for _ in range(2)))
    for response in context.contenders:
        context.add_cleanup(response.close)


# ---------------------------------------------------------------- answers


@then('all {count:d} answers end with a done event for "{reason:Q}"')
def step_all_done(context, count, reason):
    assert len(context.results) == count
    for r in context.results:
        assert r.status == 200 and r.done and r.done["finish_reason"] == reason and r.terminated, r


@then('the answer ends with a done event for "{reason:Q}"')
def step_done_for(context, reason):
    r = context.result
    assert r.status == 200 and r.terminated, (r.status, r.error_body)
    assert r.events[-1].get("done") is True and r.done["finish_reason"] == reason, r.events[-3:]


@then("the long answer is still streaming")
def step_still_streaming(context):
    assert _done(context.long_stream) is None and not context.long_stream.terminated, context.long_stream.events[-2:]


@then('the answer "{rid:Q}" is still streaming')
def step_named_still_streaming(context, rid):
    stream = context.named_streams[rid]
    assert _done(stream) is None and not stream.terminated, stream.events[-2:]


@then("exactly one of them is streaming")
def step_one_streaming(context):
    statuses = sorted(r.status_code for r in context.contenders)
    assert statuses == [200, 503], statuses
    winner = next(r for r in context.contenders if r.status_code == 200)
    assert winner.headers["Content-Type"].startswith("text/event-stream"), winner.headers


@then('the other is refused with 503 "ALL_SLOTS_BUSY" naming {total:d} slots in total, {busy:d} of them busy')
def step_other_refused(context, total, busy):
    loser = next(r for r in context.contenders if r.status_code == 503)
    error = loser.json()["error"]
    assert error["code"] == "ALL_SLOTS_BUSY" and error["details"] == {"slots_total": total, "slots_busy": busy}, error
    assert int(loser.headers["Retry-After"]) >= 1, loser.headers


@then("the two answers have the same text")
def step_same_text(context):
    first, second = context.results[-2:]
    assert first.status == 200 and second.status == 200 and first.text, (first.error_body, second.error_body)
    assert first.text == second.text, (first.text, second.text)


@then("the two answers differ")
def step_texts_differ(context):
    first, second = context.results[-2:]
    assert first.status == 200 and second.status == 200, (first.error_body, second.error_body)
    assert first.text != second.text, first.text


@then("a different seed gives a different text")
def step_other_seed(context):
    _ask(context, {**context.request, "seed": context.request["seed"] + 1})
    step_texts_differ(context)


@then('the answer does not contain "{text:Q}"')
def step_not_contains(context, text):
    assert text not in context.result.text, context.result.text


@then('the answer is the counting up to just before "{stop:Q}"')
def step_counting_until(context, stop):
    assert context.result.text == COUNTED.split(stop)[0], context.result.text


@then("the done event counts {n:d} tokens")
def step_done_counts(context, n):
    assert context.result.done["total_tokens"] == n, context.result.done


@then("the refusal names the prompt's token count and the context size {ctx:d}")
def step_overflow_details(context, ctx):
    details = context.response.json()["error"]["details"]
    assert details["ctx_size"] == ctx and details["prompt_tokens"] >= ctx, details


@then("the done event says max_tokens was clipped to the room the prompt left in {ctx:d} tokens")
def step_clipped(context, ctx):
    done = context.result.done
    assert done["max_tokens_clipped"] == ctx - done["prompt_tokens"], done


@then("the done event counts exactly that many tokens")
def step_clipped_count(context):
    done = context.result.done
    assert done["total_tokens"] == done["max_tokens_clipped"], done


# ---------------------------------------------------------------- cancellation


@when('request "{rid:Q}" is cancelled at the worker')
def step_cancel(context, rid):
    context.cancellations = [*getattr(context, "cancellations", []), context.worker.client.delete(f"/v1/inference/{rid}")]


@then("the cancellation is answered with 204")
@then("every cancellation is answered with 204")
def step_cancel_204(context):
    assert [r.status_code for r in context.cancellations] == [204] * len(context.cancellations)


@then('the long answer ends with a done event for "{reason:Q}"')
@then('the running answer ends with a done event for "{reason:Q}" and [DONE]')
def step_stream_done(context, reason):
    stream = getattr(context, "running", None) or context.long_stream
    stream.wait_finished(60 * context.cluster.k)
    assert stream.events and stream.events[-1].get("done") and _done(stream)["finish_reason"] == reason, stream.events[-2:]
    assert stream.terminated


@then("the long answer is terminated by [DONE]")
def step_stream_terminated(context):
    assert context.long_stream.terminated


@when("the client of the long answer hangs up")
def step_hang_up_stream(context):
    context.long_stream.abandon()


@given("a long whole answer is being generated by the worker")
def step_whole_answer(context):
    context.hanging = HangingRequest(context.worker.url, "/v1/inference", {**LONG, "stream": False})
    context.add_cleanup(context.hanging.hang_up)
    total = context.worker.slots
    wait_until(lambda: _slots(context) == (total - 1, total), 30 * context.cluster.k, what="the request holding a slot")


@when("the client waiting for the whole answer hangs up")
def step_hang_up_whole(context):
    context.hanging.hang_up()


# ---------------------------------------------------------------- loading


def _launch(context, slots: int = 1, model: str | None = None):
    context.worker = launch_worker(context.cluster, "starting", slots=slots, model=model)
    return context.worker


def _listening(context) -> bool:
    proc = context.worker.process
    assert proc.alive(), f"the worker exited ({proc.proc.returncode}):\n{proc.log_tail()}"
    return context.worker.client.get("/v1/health", timeout=1).status_code == 200


@when("a worker is started and its loading progress is followed at once")
def step_follow_progress(context):
    worker = _launch(context)
    wait_until(lambda: _listening(context), 60 * context.cluster.k, interval=0.01, what="the worker listening")
    context.progress = follow_events(f"{worker.url}/v1/loading/progress", 60 * context.cluster.k)


@then('the progress stream ends with stage "{stage:Q}" and [DONE]')
def step_progress_end(context, stage):
    p = context.progress
    assert p.status == 200 and p.terminated and p.events[-1] == {"stage": stage, "progress": 1.0}, p


@then("the progress it reported never went down and stayed between 0 and 1")
def step_progress_monotonic(context):
    values = [e["progress"] for e in context.progress.events]
    assert values == sorted(values) and all(0 <= v <= 1 for v in values), values


@when("a worker with {slots:d} slots is started and its readiness is watched until it is ready")
def step_watch_ready(context, slots):
    _launch(context, slots)
    wait_until(lambda: _listening(context), 60 * context.cluster.k, interval=0.01, what="the worker listening")
    # Every answer is kept (a gap between polls could hide a wrong one), so no pause between them;
    # bounded by a deadline, not a count: on a loaded machine loading takes more polls.
    deadline = time.monotonic() + 60 * context.cluster.k
    context.answers = [context.worker.client.ready()]
    while not context.answers[-1]["ready"]:
        assert time.monotonic() < deadline, f"not ready after {len(context.answers)} polls"
        context.answers.append(context.worker.client.ready())


@then("every answer was loading with a progress stream to follow, or ready and idle")
def step_answers_truthful(context):
    loading = {"ready": False, "state": "loading", "model_loaded": False, "progress_url": "/v1/loading/progress"}
    ready = {"ready": True, "state": "idle", "model_loaded": True}
    for a in context.answers:
        shown = {k: a[k] for k in ("ready", "state", "model_loaded", "progress_url") if k in a}
        assert shown in (loading, ready), a


@then("no answer said loading after one said ready")
def step_no_regress(context):
    states = [a["state"] for a in context.answers]
    assert states == sorted(states, key=lambda s: s != "loading"), states


@then("every answer reported {total:d} slots in total and {free:d} free")
def step_answers_slots(context, total, free):
    assert all((a["slots_total"], a["slots_available"]) == (total, free) for a in context.answers), context.answers


@given("a file that is not a GGUF model")
def step_bad_model(context):
    context.bad_model = context.log_dir / "not-a-model.gguf"
    context.bad_model.write_text("this is a text file, not a GGUF model\n" * 100)


@when("a worker is started on that file")
def step_start_bad(context):
    _launch(context, model=str(context.bad_model))


@then("the worker exits with a non-zero code within {seconds:d} seconds")
def step_exit_nonzero(context, seconds):
    code = context.worker.process.proc.wait(seconds * context.cluster.k)
    assert code not in (0, None), code


@then("its log says it could not load the model")
def step_log_says(context):
    assert "Could not load the model" in context.worker.process.log_path.read_text(), context.worker.process.log_tail()


# ---------------------------------------------------------------- info


@then("the worker's model info reads")
def step_info_table(context):
    model = context.worker.client.get("/v1/info").json()["model"]
    for row in context.table:
        assert str(model[row["field"]]) == row["value"], (row["field"], model)


@then("the worker's model info gives a parameter count and the file's size on disk")
def step_info_sizes(context):
    model = context.worker.client.get("/v1/info").json()["model"]
    assert 100_000_000 < model["parameters"] < 200_000_000, model
    assert model["file_bytes"] == default_model_path().stat().st_size, model


@then("the worker's settings are {slots:d} slots of {ctx:d} tokens each")
def step_info_settings(context, slots, ctx):
    settings = context.worker.client.get("/v1/info").json()["settings"]
    assert (settings["slots"], settings["ctx_size"]) == (slots, ctx), settings


# ---------------------------------------------------------------- draining


@when("the worker is asked to shut down")
def step_admin_shutdown(context):
    r = context.worker.client.post("/v1/admin/shutdown")
    assert r.status_code == 202 and r.json()["state"] == "draining", r.text


@when("the worker is sent SIGTERM")
def step_sigterm(context):
    context.worker.process.proc.send_signal(signal.SIGTERM)


@then("the worker reports it is draining")
def step_draining(context):
    ready = context.worker.client.ready()
    assert (ready["ready"], ready["state"]) == (False, "draining"), ready


@then('a new request to the worker is refused with {status:d} "{code:Q}"')
def step_new_refused(context, status, code):
    r = context.worker.client.post("/v1/inference", json=_counting(4))
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text


@then("the worker exits with code 0 within {seconds:d} seconds")
def step_exit_zero(context, seconds):
    started = time.monotonic()
    code = context.worker.process.proc.wait(seconds * context.cluster.k)
    assert code == 0, f"exit code {code} after {time.monotonic() - started:.1f}s:\n{context.worker.process.log_tail()}"

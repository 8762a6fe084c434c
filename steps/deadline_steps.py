"""Steps about request deadlines (rbee.deadline), through the queen and at the worker, on real llama.cpp.

Endless answers never end on their own (rbee's route: ``ignore_eos`` with the largest ``max_tokens``;
OpenAI's: the end-of-turn tokens banned with ``logit_bias``, greedy), so only the deadline can stop
them, on cue. Timing checks have margins for a loaded 2-core machine, times the timeout multiplier.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import openai
from behave import given, then, when

from rbee.deadline import DEADLINE_HEADER, TIMEOUT_HEADER
from rbee.models import DEFAULT_MODEL_REF
from rbee.testing.clients import ask_queen_timed, wait_until

ENDLESS = {"prompt": "Count from one onwards, one number a line.", "max_tokens": 32768, "temperature": 0,
           "ignore_eos": True}
SHORT = {"prompt": "Say hello.", "max_tokens": 4, "temperature": 0, "ignore_eos": True, "stream": False}
# SmolLM2's <|endoftext|>, <|im_start|> and <|im_end|>: banned, a greedy chat answer goes on and on.
NO_END = {"0": -100, "1": -100, "2": -100}
# How late past its deadline an answer may end: the worker checks between decode steps, and on a 2-core
# machine shared with other test runs one step of a fresh worker has taken up to 9 s (times the multiplier).
SLACK_S = 10.0


def _deadline(given: str, seconds: float) -> tuple[dict, dict]:
    """(body additions, headers) for a deadline ``seconds`` from now, said the way ``given`` names."""
    at = time.time() + seconds
    if given == "a timeout in the body":
        return {"timeout": seconds}, {}
    if given == "an RFC 3339 deadline header":
        return {}, {DEADLINE_HEADER: datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")}
    if given == "an epoch-milliseconds deadline header":
        return {}, {DEADLINE_HEADER: str(int(at * 1000))}
    if given == "no deadline of its own":
        return {}, {}
    raise AssertionError(f"unknown way to give a deadline: {given}")


def _metric(text: str, name: str, label: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------- setup


@given("a queen that gives every request {n:d} seconds unless it says otherwise")
def step_queen_default_timeout(context, n):
    context.cluster.start_queen("--default-timeout", str(n), "--queue-timeout", "10")


@given("a queen that queues requests for up to {n:d} seconds with a real worker of 1 slot")
def step_queen_and_worker(context, n):
    context.cluster.start_queen("--queue-timeout", str(n))
    context.worker = context.cluster.start_worker(worker_id="solo", slots=1)
    context.cluster.register(context.worker)


# ---------------------------------------------------------------- asking


@when("an endless answer is streamed through the queen with {given} of {n:d} seconds")
def step_endless_stream(context, given, n):
    extra, headers = _deadline(given, n)
    context.sent_at = time.monotonic()
    context.result = context.cluster.queen.infer({**ENDLESS, **extra}, headers)
    context.response = None


@when("an endless answer is streamed from the worker with {n:d} seconds left in its hop header")
def step_endless_at_worker(context, n):
    context.sent_at = time.monotonic()
    context.result = context.worker.client.infer(ENDLESS, {TIMEOUT_HEADER: str(n * 1000)})
    context.response = None


@when("an endless whole answer is asked of the queen with a timeout of {n:d} seconds")
def step_endless_whole(context, n):
    ask_queen_timed(context, {**ENDLESS, "stream": False, "timeout": n})


@when("a short whole answer is asked of the queen with a timeout of {n:d} seconds")
def step_short_whole_timeout(context, n):
    ask_queen_timed(context, {**SHORT, "timeout": n})


@when("an answer is asked of the queen with a deadline that passed {n:d} second ago")
def step_past_deadline(context, n):
    headers = {DEADLINE_HEADER: str(int((time.time() - n) * 1000))}
    context.response = context.cluster.queen.post("/v1/inference", json=SHORT, headers=headers)


@when('an answer is asked of the queen with the deadline header "{value:Q}"')
def step_bad_header(context, value):
    context.response = context.cluster.queen.post("/v1/inference", json=SHORT, headers={DEADLINE_HEADER: value})


@when("an answer is asked of the queen with a timeout of {value} seconds in the body")
def step_bad_timeout(context, value):
    context.response = context.cluster.queen.post("/v1/inference", json={**SHORT, "timeout": float(value)})


@when('a chat is asked on the OpenAI route with the deadline header "{value:Q}"')
def step_bad_header_openai(context, value):
    context.response = context.cluster.queen.post(
        "/v1/chat/completions", json={"model": DEFAULT_MODEL_REF, "messages": [{"role": "user", "content": "Hi"}]},
        headers={DEADLINE_HEADER: value})


@when("the OpenAI client streams an endless chat with a timeout of {n:d} seconds")
def step_openai_stream(context, n):
    context.sent_at = time.monotonic()
    stream = context.openai.chat.completions.create(
        model=DEFAULT_MODEL_REF, messages=[{"role": "user", "content": "Count from 1 onwards."}], stream=True,
        temperature=0, max_tokens=30000, logit_bias=NO_END, extra_body={"timeout": n})
    context.oa_chunks = list(stream)  # the client parses every chunk, the last one's finish reason too
    context.ended_at = time.monotonic()


@when("the OpenAI client asks for an endless whole chat with a timeout of {n:d} seconds")
def step_openai_whole(context, n):
    context.sent_at = time.monotonic()
    context.oa_error = None
    try:
        context.openai.chat.completions.create(
            model=DEFAULT_MODEL_REF, messages=[{"role": "user", "content": "Count from 1 onwards."}],
            temperature=0, max_tokens=30000, logit_bias=NO_END, extra_body={"timeout": n})
    except openai.APIStatusError as exc:
        context.oa_error = exc
    context.ended_at = time.monotonic()


# ---------------------------------------------------------------- checking


@then('the stream ends with finish reason "deadline" about {n:d} seconds after it was sent')
def step_ended_at_deadline(context, n):
    result = context.result
    assert result.status == 200, (result.status, result.error_body)
    done = result.done
    assert done is not None and done["finish_reason"] == "deadline", (done, result.events[-3:])
    assert result.terminated, "no [DONE] after the done event"
    assert done["total_tokens"] >= len(result.tokens), done  # under load the first token may come too late
    took = result.ended - context.sent_at
    assert n - 0.5 <= took <= n + SLACK_S * context.cluster.k, f"ended {took:.2f} s after it was sent"
    context.cut_tokens = done["total_tokens"]


@then("the next answer through the queen is served without waiting for a slot")
def step_next_served(context):
    r = context.cluster.queen.post("/v1/inference", json=SHORT, timeout=60 * context.cluster.k)
    assert r.status_code == 200, r.text
    assert r.json()["queued_ms"] < 1000, r.json()


@then("the worker's slot is free")
def step_slot_free(context):
    ready = context.worker.client.ready()
    assert (ready["slots_available"], ready["slots_total"]) == (1, 1), ready


@then('the worker counted {count:d} generation ending for "{reason:Q}"')
@then('the worker counted {count:d} generations ending for "{reason:Q}"')
def step_worker_counted(context, count, reason):
    text = context.worker.client.get("/metrics").text
    got = _metric(text, "rbee_worker_generations_total", f'finish_reason="{reason}"')
    assert got == count, f"{got} generations ended for {reason}"


@then("the worker finished no generation at all")
def step_worker_idle_all_along(context):
    text = context.worker.client.get("/metrics").text
    assert _metric(text, "rbee_worker_generations_total") == 0, text


@then('the refusal says it ran out of time "{stage:Q}" after waiting about {n:d} seconds')
def step_refusal_waited(context, stage, n):
    error = context.response.json()["error"]
    details = error["details"]
    assert details["stage"].startswith(stage), details
    waited = details["waited_ms"] / 1000
    assert n - 0.1 <= waited <= n + SLACK_S * context.cluster.k, details
    assert "later deadline" in error["message"], error["message"]
    took = time.monotonic() - context.sent_at
    assert took <= n + SLACK_S * context.cluster.k, f"answered {took:.2f} s after it was sent"


@then('the refusal says it ran out of time "{stage:Q}" without waiting')
def step_refusal_at_once(context, stage):
    details = context.response.json()["error"]["details"]
    assert details["stage"].startswith(stage) and details["waited_ms"] < 1000, details


@then('the refusal names the field "{field:Q}"')
def step_refusal_names(context, field):
    error = context.response.json()["error"]
    assert field in error["message"], error
    named = error["details"].get("field") or [f["field"] for f in error["details"].get("fields", [])]
    assert field in named or field == named, error["details"]


@then('the OpenAI stream ends with finish reason "deadline" about {n:d} seconds after it was sent')
def step_openai_stream_ended(context, n):
    chunks = context.oa_chunks
    assert chunks and chunks[-1].choices[0].finish_reason == "deadline", chunks[-2:]
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1] if c.choices)
    took = context.ended_at - context.sent_at
    assert n - 0.5 <= took <= n + SLACK_S * context.cluster.k, f"ended {took:.2f} s after it was sent"


@then('the OpenAI client raises its {status:d} error for "{code:Q}" about {n:d} seconds after it was sent')
def step_openai_whole_refused(context, status, code, n):
    err = context.oa_error
    assert err is not None and err.status_code == status, err
    assert err.response.json()["error"]["code"] == code, err.response.text
    assert err.response.headers.get("x-should-retry") == "false", dict(err.response.headers)
    took = context.ended_at - context.sent_at
    assert n - 0.5 <= took <= n + SLACK_S * context.cluster.k, f"answered {took:.2f} s after it was sent"


@then("the worker's slot is free within {n:d} seconds")
def step_slot_free_soon(context, n):
    wait_until(lambda: context.worker.client.ready()["slots_available"] == 1, n * context.cluster.k,
               what="the worker's slot free")




# ---------------------------------------------------------------- retries of a refused connection


@when('rbee-keeper asks that queen for an answer on the hive "{hive:Q}"')
def step_keeper_refused(context, hive):
    # context.keeper_env: the clean environment "rbee-keeper points at a queen that is not running" made.
    keeper = Path(sys.executable).with_name("rbee-keeper")
    started = time.monotonic()
    context.keeper_run = subprocess.run([str(keeper), "infer", "--hive", hive, "--prompt", "Hello"],
                                        check=False, env=context.keeper_env, capture_output=True, text=True,
                                        stdin=subprocess.DEVNULL, timeout=60 * context.cluster.k)
    context.keeper_took = time.monotonic() - started


@then("rbee-keeper said once that the queen refused the connection and it is trying again")
def step_keeper_said_once(context):
    stderr = context.keeper_run.stderr
    lines = [line for line in stderr.splitlines() if "refused the connection" in line]
    assert len(lines) == 1 and "more times within" in lines[0], stderr


@then("rbee-keeper gave up after trying for at least {n:d} seconds, naming the queen's address")
def step_keeper_gave_up(context, n):
    run = context.keeper_run
    assert run.returncode == 1, (run.returncode, run.stderr)
    assert n <= context.keeper_took <= n + 20 * context.cluster.k, context.keeper_took
    assert context.keeper_env["RBEE_QUEEN_URL"] in run.stderr, run.stderr

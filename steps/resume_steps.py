"""Steps about streams that move to another worker when theirs dies or stalls mid-answer: the
answer asked once unbroken as the reference, then again with the serving worker killed or frozen."""

from __future__ import annotations

import os
import signal

from behave import given, then, when
from prometheus_client.parser import text_string_to_metric_families

from rbee.models import DEFAULT_MODEL_REF
from rbee.procfs import pid_alive
from rbee.testing.clients import BackgroundStream, wait_until
from rbee.testing.fleet import spawn_fleet_workers, start_fleet_hive, start_fleet_queen

STORY = "Write a long story about a lighthouse keeper and her cat."


def _body(n: int) -> dict:
    return {"messages": [{"role": "user", "content": STORY}], "max_tokens": n, "temperature": 0,
            "ignore_eos": True}


def _k(context, seconds: float) -> float:
    return seconds * context.cluster.k


def _tokens(stream: BackgroundStream) -> list[dict]:
    return [e for e in stream.events if "token" in e]


def _interrupt(context, worker_id: str, how: str) -> None:
    context.interrupted = worker_id
    if how == "host killed":  # a test-bed host: every process in it, its link cut first
        host = next(name for name, w in context.fleet_workers.items() if w == worker_id)
        context.testbed.kill_host(host)
        return
    pid = context.cluster.workers[worker_id].process.proc.pid
    if how == "killed":
        os.kill(pid, signal.SIGKILL)
    else:
        os.kill(pid, signal.SIGSTOP)
        context.frozen_pid = pid
        # Thawed in any case, so that stopping it at the end is not held up by a stopped process.
        context.add_cleanup(lambda: pid_alive(pid) and os.kill(pid, signal.SIGCONT))


@when("a client streams {n:d} tokens of a story at temperature 0 through the queen, unbroken")
def step_reference(context, n):
    stream = BackgroundStream(context.cluster.queen, "/v1/inference", _body(n))
    stream.wait_finished(_k(context, 120))
    assert stream.terminated and not any("error" in e for e in stream.events), stream.events[-2:]
    context.reference = "".join(e["token"] for e in _tokens(stream))


def _interrupted_stream(context, n: int, after: int, how: str) -> None:
    stream = BackgroundStream(context.cluster.queen, "/v1/inference", _body(n))
    wait_until(lambda: len(_tokens(stream)) >= after or stream.terminated, _k(context, 60),
               what=f"{after} tokens of the stream")
    assert not stream.terminated, "the answer ended before the worker could be interrupted"
    _interrupt(context, stream.worker_id, how)
    stream.wait_finished(_k(context, 120))
    context.resumed_stream = stream


@when("a client streams {n:d} tokens of a story at temperature 0 and the serving worker is {how} after "
      "{after:d} tokens")
@when("a client streams {n:d} tokens of a story at temperature 0 through the queen and the serving worker is "
      "{how} after {after:d} tokens")
def step_interrupted(context, n, how, after):
    assert how in ("killed", "frozen"), how
    _interrupted_stream(context, n, after, how)


@when("a client streams {n:d} tokens of a story at temperature 0 and the serving worker's host is killed after "
      "{after:d} tokens")
def step_host_killed(context, n, after):
    _interrupted_stream(context, n, after, "host killed")


@given("a queen on the control host that resumes streams, and a hive with a worker on each of alpha and beta")
def step_resuming_fleet(context):
    start_fleet_queen(context, "--max-resumes", "1")
    hives = {name: start_fleet_hive(context, name) for name in ("alpha", "beta")}
    spawn_fleet_workers(context, hives)


@then("the stream ends with a done event and [DONE], with no error")
def step_resumed_done(context):
    stream = context.resumed_stream
    errors = [e["error"] for e in stream.events if "error" in e]
    assert not errors, errors
    assert stream.terminated and stream.events and stream.events[-1].get("done"), stream.events[-2:]
    context.resumed_done = stream.events[-1]


@then("its token events are numbered from 0 without a gap or a repeat")
def step_indexes(context):
    indexes = [e["index"] for e in _tokens(context.resumed_stream)]
    assert indexes == list(range(len(indexes))), indexes


@then("its text is the unbroken answer's")
def step_same_text(context):
    text = "".join(e["token"] for e in _tokens(context.resumed_stream))
    assert text == context.reference, f"resumed:\n{text!r}\nunbroken:\n{context.reference!r}"


@then("the done event says it resumed on the other worker where the first left off")
def step_where(context):
    done = context.resumed_done
    moves = done.get("resumed")
    assert moves and len(moves) == 1, done
    assert moves[0]["worker_id"] != context.interrupted and done["worker_id"] == moves[0]["worker_id"], done
    at = moves[0]["at_index"]
    assert at >= 12, moves  # at least the tokens seen before the interruption came from the first worker
    assert done["total_tokens"] == 160, done


@then("the queen counted {n:d} resumed stream in its metrics")
def step_metric(context, n):
    text = context.cluster.queen.get("/metrics").text
    values = [s.value for f in text_string_to_metric_families(text) if f.name == "rbee_queen_resumes"
              for s in f.samples if s.name == "rbee_queen_resumes_total"]
    assert values == [n], values


@when("the frozen worker is thawed")
def step_thaw(context):
    os.kill(context.frozen_pid, signal.SIGCONT)


@then("the thawed worker has all slots free within {n:d} seconds")
def step_thawed_free(context, n):
    client = context.cluster.workers[context.interrupted].client
    wait_until(lambda: client.ready().get("slots_available") == client.ready().get("slots_total"),
               _k(context, n), interval=0.2, what="the thawed worker's slot to be free")


@then('the resumable stream ends with a "{code:Q}" error event and [DONE]')
def step_clean_error(context, code):
    stream = context.resumed_stream
    errors = [e["error"] for e in stream.events if "error" in e]
    assert stream.terminated and [e["code"] for e in errors] == [code], stream.events[-2:]


# ---------------------------------------------------------------- the OpenAI route


def _openai_stream(context, n: int):
    return context.openai.chat.completions.create(
        model=DEFAULT_MODEL_REF, messages=[{"role": "user", "content": STORY}], temperature=0,
        max_completion_tokens=n, stream=True)


def _read_openai(context, n: int, after: int | None = None) -> tuple[str, str | None]:
    """The streamed text and finish reason; the serving worker killed after ``after`` chunks."""
    parts, finish, seen = [], None, 0
    for chunk in _openai_stream(context, n):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        parts.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
        seen += 1
        if after is not None and seen == after:
            busy = [w for w in context.cluster.workers.values()
                    if w.client.ready().get("slots_available") == 0]
            assert len(busy) == 1, [w.worker_id for w in busy]
            _interrupt(context, busy[0].worker_id, "killed")
    assert after is None or seen > after, f"the answer ended after {seen} chunks, before the worker was killed"
    return "".join(parts), finish


@when("the OpenAI client streams up to {n:d} tokens of a story at temperature 0, unbroken")
def step_openai_reference(context, n):
    context.reference = _read_openai(context, n)


@when("the OpenAI client streams up to {n:d} tokens of a story at temperature 0 and the serving worker is killed "
      "after {after:d} chunks")
def step_openai_interrupted(context, n, after):
    context.openai_answer = _read_openai(context, n, after)


@then("the OpenAI stream finished as the unbroken one did, with the unbroken answer's text")
def step_openai_same(context):
    assert context.openai_answer == context.reference, (context.openai_answer, context.reference)

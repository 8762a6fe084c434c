"""Steps about prompts long enough that decoding them outlasts the queen's stall timeout."""

from __future__ import annotations

from behave import given, then, when

from rbee.testing.clients import BackgroundStream

LONG_PROMPT_WORDS = ["apple", "river", "stone", "cloud", "honey", "meadow", "lantern", "orchard"]


@given("a queen that gives up on a silent stream after {n:d} seconds")
def step_queen_stall_seconds(context, n):
    context.cluster.start_queen("--stall-timeout", str(n))


@given('a real one-thread worker "{worker_id:Q}" with a {ctx:d}-token context that decodes at most {batch:d} tokens a step '
       'is registered')
def step_worker_small_steps(context, worker_id, ctx, batch):
    # One thread: a step's time then holds steady when other processes want the cores too (two
    # threads spin-waiting on each other stretch a step to seconds on a busy 2-core machine).
    worker = context.cluster.start_worker(worker_id=worker_id, ctx_size=ctx,
                                          extra=("--batch-size", str(batch), "--threads", "1"))
    context.cluster.register(worker)


@when("a client streams {n:d} tokens after a {length:d}-token prompt through the queen with the prompt cache off")
def step_long_prompt(context, n, length):
    words = (LONG_PROMPT_WORDS * (length // len(LONG_PROMPT_WORDS) + 1))[:length]
    prompt = " ".join(words)  # about one token a word with SmolLM2's vocabulary
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True, "cache_prompt": False}
    stream = BackgroundStream(context.cluster.queen, "/v1/inference", body)
    stream.wait_finished(180 * context.cluster.k)
    assert stream.response.status_code == 200, stream.response.status_code
    context.long_stream = stream


@then("the long answer ends with a done event and [DONE]")
def step_long_done(context):
    stream = context.long_stream
    errors = [e["error"] for e in stream.events if "error" in e]
    assert not errors, errors
    done = next((e for e in stream.events if e.get("done")), None)
    assert done is not None and stream.terminated, stream.events[-3:]
    context.long_done = done


@then("its first token came later than the {n:d} second stall timeout")
def step_long_ttft(context, n):
    ttft = context.long_done["ttft_ms"]
    # Else the scenario proves nothing: the worker would never have been silent for that long.
    assert ttft > n * 1000, f"the prompt decoded in {ttft} ms, within the stall timeout; make it longer"


@then("the stream told the prompt's progress before the first token, rising to the prompt's length")
def step_long_progress(context):
    notes = [c for c in context.long_stream.comments if c.startswith("prefill ")]
    assert len(notes) >= 2, context.long_stream.comments
    fields = [dict(part.split("=") for part in note.split()[1:]) for note in notes]
    done = [int(f["done"]) for f in fields]
    total = {int(f["total"]) for f in fields}
    assert done == sorted(done) and done[0] < done[-1], done
    assert total == {context.long_done["prompt_tokens"]}, (total, context.long_done)
    assert done[-1] < context.long_done["prompt_tokens"], done

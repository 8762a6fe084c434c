"""Steps about the worker's prompt cache: multi-turn chats through the queen, asked twice, with the
cache on and off, on rbee's own route and on the OpenAI one."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from behave import given, then, when
from prometheus_client.parser import text_string_to_metric_families

from rbee.models import DEFAULT_MODEL_REF
from rbee.testing.clients import at_once

TURN_TOKENS = 24
CHATS = [
    ["Tell me about honey bees.", "What do they eat?", "How long do they live?"],
    ["Name three rivers in Europe.", "Which is the longest?", "Which countries does it cross?"],
    ["What is a prime number?", "Give an example.", "Is 1 a prime number?"],
    ["Describe the moon.", "How far away is it?", "Who first walked on it?"],
]


@dataclass
class Turn:
    prompt_tokens: int
    cached_tokens: int
    text: str


@dataclass
class Chat:
    """One conversation: its questions, and what each turn answered with the cache on and off."""

    questions: list[str]
    cached: list[Turn] = field(default_factory=list)
    fresh: list[Turn] = field(default_factory=list)

    def messages(self, upto: int) -> list[dict[str, str]]:
        """The history sent for turn ``upto``: every earlier question with its (cached) answer."""
        out: list[dict[str, str]] = []
        for question, turn in zip(self.questions[:upto], self.cached[:upto], strict=True):
            out += [{"role": "user", "content": question}, {"role": "assistant", "content": turn.text}]
        return out + [{"role": "user", "content": self.questions[upto]}]


def _ask(context, messages: list[dict[str, str]], cache: bool) -> Turn:
    body: dict[str, Any] = {"messages": messages, "max_tokens": TURN_TOKENS, "temperature": 0}
    if not cache:
        body["cache_prompt"] = False
    result = context.cluster.queen.infer(body)
    assert result.status == 200 and result.done, (result.status, result.error_body, result.events[-2:])
    return Turn(result.done["prompt_tokens"], result.done["cached_tokens"], result.text)


def _ask_openai(context, messages: list[dict[str, str]], cache: bool) -> Turn:
    extra = {} if cache else {"extra_body": {"cache_prompt": False}}
    completion = context.openai.chat.completions.create(
        model=DEFAULT_MODEL_REF, messages=messages, temperature=0, max_completion_tokens=TURN_TOKENS, **extra)
    usage = completion.usage
    assert usage.prompt_tokens_details is not None, usage
    return Turn(usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens, completion.choices[0].message.content)


def _hold(context, chats: list[Chat], ask, cache: bool, together: bool = True) -> None:
    """Every chat turn by turn, all chats' same turn at once (``together``) or one chat after the
    other; each turn sends the history so far (with the answers the cache-on run gave, so both runs
    send the same prompts)."""
    context.together = together
    for t in range(len(chats[0].questions)):
        calls = [functools.partial(ask, context, chat.messages(t), cache) for chat in chats]
        turns = at_once(*calls, timeout=120 * context.cluster.k) if together else [call() for call in calls]
        for chat, turn in zip(chats, turns, strict=True):
            assert isinstance(turn, Turn), turn
            (chat.cached if cache else chat.fresh).append(turn)
    context.chats = chats


# ---------------------------------------------------------------- workers


@given('a real worker "{worker_id:Q}" with {slots:d} slot and {mb:d} MiB of host RAM for its prompt cache '
       'is registered')
def step_worker_with_ram_cache(context, worker_id, slots, mb):
    worker = context.cluster.start_worker(worker_id=worker_id, slots=slots, extra=("--cache-ram-mb", str(mb)))
    context.cluster.register(worker)


# ---------------------------------------------------------------- holding chats


@when("a client holds a {turns:d}-turn chat with the queen at temperature 0")
def step_hold_chat(context, turns):
    _hold(context, [Chat(CHATS[0][:turns])], _ask, cache=True)


@when("{n:d} clients each hold a {turns:d}-turn chat with the queen at the same time, at temperature 0")
def step_hold_chats(context, n, turns):
    _hold(context, [Chat(questions[:turns]) for questions in CHATS[:n]], _ask, cache=True)


@when("{n:d} clients take turns holding a {turns:d}-turn chat each with the queen, at temperature 0")
def step_take_turns(context, n, turns):
    _hold(context, [Chat(questions[:turns]) for questions in CHATS[:n]], _ask, cache=True, together=False)


@when("the client asks every turn of that chat again with the prompt cache off")
@when("the client asks every turn of those chats again with the prompt cache off")
def step_again_uncached(context):
    _hold(context, context.chats, _ask, cache=False, together=context.together)


@when("the OpenAI client holds a {turns:d}-turn chat at temperature 0")
def step_hold_openai(context, turns):
    _hold(context, [Chat(CHATS[0][:turns])], _ask_openai, cache=True)


@when("the OpenAI client asks every turn of that chat again with cache_prompt false")
def step_again_openai(context):
    _hold(context, context.chats, _ask_openai, cache=False)


# ---------------------------------------------------------------- checking


@then("every turn after the first reused at least the whole prompt of the turn before")
@then("every OpenAI turn after the first reports at least the prompt of the turn before as cached in its usage")
def step_reused(context):
    for chat in context.chats:
        for before, turn in zip(chat.cached, chat.cached[1:]):
            # The turn before left its prompt and answer in a slot; this turn found that slot.
            assert before.prompt_tokens <= turn.cached_tokens < turn.prompt_tokens, chat.cached


@then("no turn asked with the prompt cache off reused any")
def step_none_reused(context):
    assert all(turn.cached_tokens == 0 for chat in context.chats for turn in chat.fresh), context.chats


@then("every turn answered the same with the prompt cache on and off")
@then("every OpenAI turn answered the same with the prompt cache on and off")
def step_same_answers(context):
    for chat in context.chats:
        assert [t.text for t in chat.cached] == [t.text for t in chat.fresh], (chat.cached, chat.fresh)
        assert all(t.text for t in chat.cached), chat.cached


@then('worker "{worker_id:Q}" counted the reused prompt tokens in its metrics')
def step_metrics(context, worker_id):
    r = context.cluster.workers[worker_id].client.get("/metrics")
    assert r.status_code == 200, r.text
    samples = {s.name: s.value for f in text_string_to_metric_families(r.text) for s in f.samples}
    reused = sum(t.cached_tokens for chat in context.chats for t in chat.cached + chat.fresh)
    assert samples["rbee_worker_prompt_cache_hit_tokens_total"] == reused, samples
    assert samples["vllm:num_requests_waiting"] == 0 and "vllm:kv_cache_usage_perc" in samples, samples

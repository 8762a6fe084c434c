"""Steps for cache-aware routing: conversations held through the queen, turn by turn."""

from __future__ import annotations

import itertools

from behave import given, then, when

TOPICS = ["bees", "rivers", "trains", "maps", "tea", "owls", "glass", "clocks"]


@given('two real workers "{a:Q}" and "{b:Q}" with {slots:d} slots each are registered')
def step_two_workers(context, a, b, slots):
    for name in (a, b):
        context.cluster.register(context.cluster.start_worker(worker_id=name, slots=slots))


def _hold(context, topic: str, turns: int, cache: bool = True) -> list[dict]:
    """One conversation: each turn resends the history plus a new question; the done events, in order."""
    messages: list[dict] = []
    dones = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Tell me one more fact about {topic} (fact {turn + 1})."})
        body = {"messages": messages, "max_tokens": 8, "temperature": 0, "cache_prompt": cache}
        result = context.cluster.queen.infer(body)
        assert result.status == 200 and result.done is not None, (result.status, result.error)
        dones.append(result.done)
        messages.append({"role": "assistant", "content": result.text})
    return dones


@when("{n:d} conversations of {turns:d} turns each are held through the queen, one turn at a time")
def step_conversations(context, n, turns):
    context.conversations = {topic: _hold(context, topic, turns) for topic in TOPICS[:n]}


@when("a conversation of {turns:d} turns that opts out of the cache is held through the queen")
def step_no_cache(context, turns):
    context.conversations = {"opt-out": _hold(context, "salt", turns, cache=False)}


@then("every turn after the first went, by cache, to the worker of its conversation's first turn")
def step_stayed(context):
    for topic, dones in context.conversations.items():
        home = dones[0]["worker_id"]
        moved = [(i, d["worker_id"], d.get("route")) for i, d in enumerate(dones[1:], 2)
                 if d["worker_id"] != home or d.get("route") != "cache"]
        assert not moved, f"{topic}: first turn on {home}; turns that did not stay by cache: {moved}"


@then("the conversations were split across both workers")
def step_split(context):
    homes = {dones[0]["worker_id"] for dones in context.conversations.values()}
    assert len(homes) == 2, homes


@then("every conversation's cached prompt tokens grew turn by turn")
def step_grew(context):
    for topic, dones in context.conversations.items():
        cached = [d.get("cached_tokens") or 0 for d in dones]
        assert all(b > a for a, b in itertools.pairwise(cached)), f"{topic}: cached tokens per turn {cached}"


@then("every one of its turns was routed by load and reused nothing")
def step_by_load(context):
    for dones in context.conversations.values():
        assert [(d.get("route"), d.get("cached_tokens") or 0) for d in dones] == [("load", 0)] * len(dones)

"""Steps for cache-aware routing: conversations held through the queen, turn by turn."""

from __future__ import annotations

import itertools

from behave import given, then, when

TOPICS = ["bees", "rivers", "trains", "maps", "tea", "owls", "glass", "clocks"]


@given('two real workers "{a:Q}" and "{b:Q}" with {slots:d} slots each are registered')
def step_two_workers(context, a, b, slots):
    for name in (a, b):
        context.cluster.register(context.cluster.start_worker(worker_id=name, slots=slots))


@given('two real workers "{a:Q}" and "{b:Q}" with one slot each are registered')
def step_two_one_slot_workers(context, a, b):
    step_two_workers(context, a, b, 1)


def _turn(context, messages: list[dict], topic: str, turn: int, cache: bool = True) -> dict:
    """The next turn of a conversation: its history plus a new question, the answer appended; its done event."""
    messages.append({"role": "user", "content": f"Tell me one more fact about {topic} (fact {turn + 1})."})
    body = {"messages": messages, "max_tokens": 8, "temperature": 0, "cache_prompt": cache}
    result = context.cluster.queen.infer(body)
    assert result.status == 200 and result.done is not None, (result.status, result.error)
    assert "cache_held" not in result.done and "cache_version" not in result.done, result.done  # the queen's
    messages.append({"role": "assistant", "content": result.text})
    return result.done


def _hold(context, topic: str, turns: int, cache: bool = True) -> list[dict]:
    """One conversation, turn by turn; the done events, in order."""
    messages: list[dict] = []
    return [_turn(context, messages, topic, turn, cache) for turn in range(turns)]


@when("{n:d} conversations start through the queen one after another, then each takes its second turn, "
      "the latest first")
def step_interleaved(context, n):
    """Each request's conversation, turn, worker and route, in the order sent."""
    histories: dict[str, list[dict]] = {topic: [] for topic in TOPICS[:n]}
    context.served = []
    for turn, order in ((0, list(histories)), (1, list(reversed(histories)))):
        for topic in order:
            done = _turn(context, histories[topic], topic, turn)
            context.served.append((topic, turn, done["worker_id"], done.get("route")))


@then("a second turn went back by cache exactly when its worker's one slot still held the conversation")
def step_cache_only_where_held(context):
    """Each worker's one slot holds the conversation it served last (no host-RAM cache): the queen must
    know that from the workers' reports, not assume that what it once sent a worker is still there."""
    last: dict[str, str] = {}  # worker -> the conversation its slot holds
    wrong = []
    for topic, turn, worker, route in context.served:
        if turn == 1:
            holder = next((w for w, held in last.items() if held == topic), None)
            expected = ("cache", holder) if holder is not None else ("load", None)
            got = (route, worker if holder is not None else None)
            if got != expected:
                wrong.append({"conversation": topic, "expected": expected, "got": (route, worker), "held": dict(last)})
        last[worker] = topic
    assert not wrong, wrong
    routes = {r for _, t, _, r in context.served if t == 1}
    assert routes == {"cache", "load"}, f"expected second turns both kept and evicted: {context.served}"


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

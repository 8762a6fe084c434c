"""Steps for structured outputs, tool calls and logprobs, with the official OpenAI client unchanged.

The model is small, so no step asserts what it says: a constrained answer is checked against its
schema (the grammar guarantees it), greedy answers against each other.
"""

from __future__ import annotations

import functools
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import gguf
from behave import then, when
from pydantic import BaseModel, ConfigDict

from rbee.models import DEFAULT_MODEL_REF, default_model_path
from rbee.testing.openai_calls import capture_refusal

MODEL = DEFAULT_MODEL_REF


class City(BaseModel):
    name: str
    country: str
    population: int


class WeatherArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}

REFUSED = {  # what the scenario sends → the extra arguments to create()
    "two choices": {"n": 2},
    "a schema with a pattern": {"response_format": {"type": "json_schema", "json_schema": {
        "name": "zip", "schema": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}}}},
    "a field OpenAI does not define": {"extra_body": {"guided_json": {"type": "object"}}},
    "audio output": {"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]},
    "a tool choice naming no given tool": {"tools": [WEATHER],
                                           "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
}


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _parse_city(context, question: str):
    return context.openai.beta.chat.completions.parse(model=MODEL, messages=_user(question), response_format=City,
                                                      temperature=0, max_tokens=120)


def _chat(context, **options):
    return context.openai.chat.completions.create(model=MODEL, temperature=0, **options)


# ---------------------------------------------------------------- asking


@when('the OpenAI client parses at temperature 0 an answer to "{question:Q}" into a City')
def step_parse(context, question):
    context.completion = _parse_city(context, question)


@when('the OpenAI client asks at temperature 0 in JSON mode "{question:Q}"')
def step_json_mode(context, question):
    context.completion = _chat(context, messages=_user(question), response_format={"type": "json_object"},
                               max_tokens=200)


@when('the OpenAI client asks at temperature 0 "{question:Q}" with the weather tool required')
def step_tool_required(context, question):
    context.messages = _user(question)
    context.completion = _chat(context, messages=context.messages, tools=[WEATHER], tool_choice="required",
                               max_tokens=100)


@when('the OpenAI client streams at temperature 0 "{question:Q}" with the weather tool required')
def step_tool_streamed(context, question):
    with context.openai.chat.completions.stream(model=MODEL, messages=_user(question), tools=[WEATHER],
                                                tool_choice="required", temperature=0, max_tokens=100) as stream:
        context.argument_deltas = sum(1 for e in stream if e.type == "tool_calls.function.arguments.delta")
        context.completion = stream.get_final_completion()


@when('the OpenAI client asks at temperature 0 "{question:Q}" with the weather tool chosen by name')
def step_tool_named(context, question):
    context.completion = _chat(context, messages=_user(question), tools=[WEATHER], max_tokens=100,
                               tool_choice={"type": "function", "function": {"name": "get_weather"}})


@when('the OpenAI client sends back the tool\'s result "{result:Q}" for an answer without tools')
def step_tool_result(context, result):
    message = context.completion.choices[0].message
    context.tool_result = result
    context.follow_up = lambda result, n: _chat(
        context, messages=[*context.messages, message, {"role": "tool", "tool_call_id": message.tool_calls[0].id,
                                                        "content": result}],
        tools=[WEATHER], tool_choice="none", max_tokens=n)
    context.completion = context.follow_up(result, 40)


@when('the OpenAI client asks at temperature 0 for {n:d} tokens with {top:d} top logprobs to "{question:Q}"')
def step_logprobs(context, n, top, question):
    context.request = {"messages": _user(question), "max_tokens": n, "logprobs": True, "top_logprobs": top}
    context.completion = _chat(context, **context.request)


@when("the OpenAI client streams the same request")
def step_logprobs_streamed(context):
    chunks = list(_chat(context, **context.request, stream=True))
    context.streamed_logprobs = [lp for c in chunks if c.choices and c.choices[0].logprobs
                                 for lp in c.choices[0].logprobs.content or ()]


@when('the OpenAI client asks at temperature 0 for a text completion of {n:d} tokens of "{prompt:Q}" '
      'with {top:d} logprobs')
def step_completion_logprobs(context, n, prompt, top):
    context.completion = context.openai.completions.create(model=MODEL, prompt=prompt, max_tokens=n, logprobs=top,
                                                           temperature=0)
    context.n_tokens = n


@when('the OpenAI client asks at temperature 0 for {n:d} tokens to "{question:Q}"')
def step_greedy(context, n, question):
    context.request = {"messages": _user(question), "max_tokens": n}
    context.greedy = _chat(context, **context.request).choices[0].message.content


@when("the OpenAI client asks the same with a {penalty} of {value:g}")
def step_penalised(context, penalty, value):
    context.changed = _chat(context, **context.request, **{penalty: value}).choices[0].message.content


@when("the OpenAI client asks the same with its first token banned by logit_bias")
def step_banned(context):
    first = _chat(context, **{**context.request, "max_tokens": 1, "logprobs": True}).choices[0].logprobs.content[0]
    context.first_token = first.token
    biased = {**context.request, "logit_bias": {str(_token_id(first.token)): -100}}
    context.changed = _chat(context, **biased).choices[0].message.content


@functools.cache
def _vocabulary() -> dict[str, int]:
    field = gguf.GGUFReader(str(default_model_path())).fields["tokenizer.ggml.tokens"]
    return {bytes(field.parts[i]).decode("utf-8", "replace"): n for n, i in enumerate(field.data)}


def _token_id(text: str) -> int:
    """The default model's id for the one token ``text`` is, from its GGUF (GPT-2 byte-level spelling)."""
    return _vocabulary()[text.replace(" ", "\u0120").replace("\n", "\u010a")]


@when("at the same time one chat is parsed into a City and another asks the same count again")
def step_at_once(context):
    def timed(call):
        started = time.monotonic()
        result = call()
        return started, time.monotonic(), result

    with ThreadPoolExecutor(2) as pool:
        city = pool.submit(timed, lambda: _parse_city(context, "Tell me about Rome."))
        count = pool.submit(timed, lambda: _chat(context, **context.request))
        context.parallel = (city.result(), count.result())


@when("the OpenAI client sends a chat with {what}")
def step_refused(context, what):
    capture_refusal(context, lambda: _chat(context, messages=_user("Hi"), max_tokens=4, **REFUSED[what]))


@when("the OpenAI client asks for embeddings")
def step_embeddings(context):
    capture_refusal(context, lambda: context.openai.embeddings.create(model=MODEL, input="bees"))


# ---------------------------------------------------------------- checking


@then("the answer was parsed into a City")
def step_parsed(context):
    choice = context.completion.choices[0]
    assert choice.finish_reason == "stop", choice
    assert isinstance(choice.message.parsed, City), choice.message
    assert City.model_validate_json(choice.message.content) == choice.message.parsed


@then("the answer's content is one JSON object")
def step_json_object(context):
    choice = context.completion.choices[0]
    assert choice.finish_reason == "stop", choice
    assert isinstance(json.loads(choice.message.content), dict), choice.message.content


@then('the answer calls the weather tool with arguments that validate, and ended for "{reason:Q}"')
def step_called(context, reason):
    choice = context.completion.choices[0]
    assert choice.finish_reason == reason and choice.message.content in (None, ""), choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id, call
    WeatherArguments.model_validate_json(call.function.arguments)


@then("its arguments arrived in pieces as the model wrote them")
def step_arguments_streamed(context):
    assert context.argument_deltas > 1, context.argument_deltas


@then("the follow-up is answered in words from a prompt that held the tool's result")
def step_follow_up(context):
    choice = context.completion.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.message.content, choice
    assert not choice.message.tool_calls, choice
    # The result is in the prompt: a longer one makes it longer by at least its extra words.
    longer = context.follow_up(context.tool_result + ", with a light breeze from the north", 1)
    grown = longer.usage.prompt_tokens - context.completion.usage.prompt_tokens
    assert grown >= 6, (grown, longer.usage, context.completion.usage)


@then("each of the {n:d} tokens has its logprob, greedy took the likeliest, and the top probabilities sum to "
      "at most 1")
def step_logprobs_sensible(context, n):
    content = context.completion.choices[0].logprobs.content
    assert len(content) == n == context.completion.usage.completion_tokens, content
    assert "".join(t.token for t in content) == context.completion.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == t.logprob, t
        assert len(t.top_logprobs) == context.request["top_logprobs"], t
        assert sum(math.exp(a.logprob) for a in t.top_logprobs) <= 1 + 1e-6, t


@then("the streamed logprobs are the whole answer's")
def step_logprobs_same(context):
    whole = [(t.token, round(t.logprob, 6)) for t in context.completion.choices[0].logprobs.content]
    streamed = [(t.token, round(t.logprob, 6)) for t in context.streamed_logprobs]
    assert streamed == whole, (streamed, whole)


@then("the completion's {n:d} tokens have logprobs and spell its text")
def step_completion_logprobs_ok(context, n):
    choice = context.completion.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n, lp
    assert "".join(lp.tokens) == choice.text and all(x <= 0 for x in lp.token_logprobs), (lp, choice.text)
    assert all(max(top.values()) == chosen for top, chosen in zip(lp.top_logprobs, lp.token_logprobs)), lp


def _most_repeated(text: str) -> int:
    words = text.split()
    return max((words.count(w) for w in set(words)), default=0)


@then("the penalised answer differs and repeats its tokens no more often")
def step_penalty(context):
    assert context.changed != context.greedy, context.changed
    assert _most_repeated(context.changed) <= _most_repeated(context.greedy), (context.changed, context.greedy)


@then("the biased answer begins differently")
def step_biased(context):
    assert context.greedy.startswith(context.first_token), (context.greedy, context.first_token)
    assert not context.changed.startswith(context.first_token), (context.changed, context.first_token)


@then("the two ran at the same time, the City parsed, and the count is the same as alone")
def step_both_right(context):
    (c_start, c_end, city), (n_start, n_end, count) = context.parallel
    assert max(c_start, n_start) < min(c_end, n_end), context.parallel  # their times overlapped
    assert isinstance(city.choices[0].message.parsed, City), city.choices[0].message
    assert count.choices[0].message.content == context.greedy, (count.choices[0].message.content, context.greedy)
    assert {city.choices[0].finish_reason, count.choices[0].finish_reason} <= {"stop", "length"}


@then('the refusal names "{name:Q}"')
def step_names(context, name):
    assert context.oa_error is not None and name in context.oa_error.body["message"], context.oa_error

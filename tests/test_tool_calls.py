"""The tool-call protocol (rbee.queen.tool_calls): the answer's schema, the model's JSON read back, and a
reply in words decoded as it streams."""

from __future__ import annotations

import json

import pytest

from rbee import grammar
from rbee.queen import tool_calls as tc

WEATHER = tc.Function("get_weather", "The weather in a city",
                      {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
TIME = tc.Function("get_time")


def test_required_calls_have_no_reply_alternative_and_one_call_unless_parallel():
    schema = tc.answer_schema([WEATHER], required=True, parallel=False)
    assert schema["required"] == ["tool_calls"]
    calls = schema["properties"]["tool_calls"]
    assert calls["minItems"] == 1 and calls["maxItems"] == 1
    assert calls["items"]["properties"]["name"] == {"const": "get_weather"}
    assert calls["items"]["properties"]["arguments"] == WEATHER.parameters
    assert "maxItems" not in tc.answer_schema([WEATHER], required=True, parallel=True)["properties"]["tool_calls"]
    grammar.from_json_schema(schema)  # and it converts


def test_auto_may_reply_instead_with_text_or_the_structured_output_asked_for():
    schema = tc.answer_schema([WEATHER, TIME], required=False, parallel=False)
    calling, reply = schema["anyOf"]
    assert len(calling["properties"]["tool_calls"]["items"]["anyOf"]) == 2
    assert reply["properties"]["response"] == {"type": "string"}
    structured = tc.answer_schema([WEATHER], required=False, parallel=False, response_schema={"type": "object"})
    assert structured["anyOf"][1]["properties"]["response"] == {"type": "object"}


def test_a_function_without_parameters_takes_an_empty_object():
    gbnf = grammar.from_json_schema(tc.answer_schema([TIME], required=True, parallel=False))
    assert "get_time" in gbnf and TIME.parameters == tc.EMPTY_PARAMETERS


def test_instructions_join_the_system_message_or_become_it():
    text = tc.instructions([WEATHER], required=True)
    assert "get_weather" in text and "tool_calls" in text and "response" not in text
    assert "response" in tc.instructions([WEATHER], required=False)
    joined = tc.with_instructions([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                                  "TOOLS")
    assert joined[0] == {"role": "system", "content": "Be brief.\n\nTOOLS"} and len(joined) == 2
    assert tc.with_instructions([{"role": "user", "content": "Hi"}], "TOOLS")[0] == {"role": "system",
                                                                                   "content": "TOOLS"}


def test_calls_read_back_with_fresh_ids_and_arguments_as_json_text():
    answer = tc.parse('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}')
    (call,) = answer.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_") and answer.content is None
    assert call.openai(0) == {"index": 0, "id": call.id, "type": "function",
                              "function": {"name": "get_weather", "arguments": call.arguments}}


@pytest.mark.parametrize(("text", "content"), [
    ('{"response": "It is sunny."}', "It is sunny."),
    ('{"response": {"temp": 18}}', '{"temp": 18}'),
    ('{"response": "It is su', "It is su"),  # cut by max_tokens: the reply so far
    ('{"tool_calls": [{"name": "get_wea', '{"tool_calls": [{"name": "get_wea'),  # cut: the raw text
])
def test_replies_read_back_as_content(text, content):
    answer = tc.parse(text)
    assert answer.content == content and answer.tool_calls == ()


def test_an_assistant_turn_that_called_tools_is_given_back_as_the_json_the_model_wrote():
    text = tc.calls_as_text([{"id": "call_1", "type": "function",
                              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}])
    assert json.loads(text) == {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}


def _stream(pieces: list[str]) -> tuple[list[str], tc.ReplyStream]:
    words = tc.ReplyStream()
    return [words.feed(p) for p in pieces], words


def test_a_reply_streams_as_decoded_text_piece_by_piece():
    out, words = _stream(['{"', 'response', '": "', 'Hel', 'lo \\', 'u00e9', '\\', 'n', 'wor', 'ld\\"', '"', "}"])
    assert "".join(out) == 'Hello \u00e9\nworld"' and words.replying
    assert out[:3] == ["", "", ""] and out[3] == "Hel"  # nothing before the reply's string has begun


def test_a_surrogate_pair_waits_for_its_second_half():
    out, _ = _stream(['{"response": "', "\\ud83d", "\\ude00", '!"}'])
    assert out == ["", "", "\U0001F600", "!"]


def test_calls_do_not_stream_as_text():
    out, words = _stream(['{"tool_calls": [{"name": "get_weather", ', '"arguments": {"city": "Paris"}}]}'])
    assert out == ["", ""] and not words.replying and not words.undecided


CALLS = ('{"tool_calls": [ {"name": "get_weather", "arguments":  {"city": "Pa\\"ris}", "days": [1, {"a": 2}], '
         '"metric": true}\n} ,\n {"name":"get_time","arguments":{}}]}')


@pytest.mark.parametrize("step", [1, 2, 5, len(CALLS)])
def test_calls_stream_as_openais_deltas_however_the_text_is_cut(step):
    calls = tc.CallStream()
    deltas = [d for i in range(0, len(CALLS), step) for d in calls.feed(CALLS[i:i + step])]
    assert calls.done and [c.name for c in calls.calls] == ["get_weather", "get_time"]
    heads = [d for d in deltas if "id" in d]
    assert [(h["index"], h["function"]["name"], h["function"]["arguments"]) for h in heads] == [
        (0, "get_weather", ""), (1, "get_time", "")]
    for index, call in enumerate(calls.calls):
        streamed = "".join(d["function"]["arguments"] for d in deltas if d["index"] == index)
        assert streamed == call.arguments and json.loads(streamed) == json.loads(tc.parse(CALLS).tool_calls[index]
                                                                                .arguments)


def test_a_reply_is_not_taken_for_calls():
    calls = tc.CallStream()
    assert calls.feed('{"response": "no calls, {\\"name\\": 1}"}') == [] and not calls.calls

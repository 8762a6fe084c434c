"""OpenAI requests → the worker's InferenceRequest, and errors → OpenAI's error types."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rbee.errors import ErrorCode, RbeeError
from rbee.events import Done
from rbee.protocol import MAX_TOKENS_LIMIT
from rbee.queen import openai_types as oa

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


def test_chat_becomes_messages_for_the_worker_streamed_with_openai_defaults():
    body = oa.ChatCompletionRequest.model_validate(CHAT).to_inference().model_dump(mode="json", exclude_none=True)
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert body["model"] == "m" and body["stream"] is True and "prompt" not in body
    assert body["temperature"] == 1.0 and body["max_tokens"] == MAX_TOKENS_LIMIT  # the worker clips to its context


def test_sampling_fields_pass_through_and_max_completion_tokens_wins():
    req = oa.ChatCompletionRequest.model_validate(
        {**CHAT, "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0, "top_p": 0.5, "seed": 3,
         "stop": "\n"})
    body = req.to_inference().model_dump(mode="json", exclude_none=True)
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"], body["stop"]) == (7, 0, 0.5, 3, ["\n"])


def test_fields_openai_defines_that_change_nothing_here_are_accepted():
    req = oa.ChatCompletionRequest.model_validate({**CHAT, "parallel_tool_calls": False, "metadata": {"a": "1"},
                                                   "store": False, "service_tier": "auto", "user": "u-1",
                                                   "safety_identifier": "s", "prompt_cache_key": "k",
                                                   "modalities": ["text"]})
    assert req.to_inference().model_dump(mode="json", exclude_none=True)["messages"]


@pytest.mark.parametrize("field", ["foo", "guided_json", "repetition_penalty"])
def test_a_field_openai_does_not_define_is_refused_naming_it(field):
    with pytest.raises(ValidationError) as info:
        oa.ChatCompletionRequest.model_validate({**CHAT, field: 1})
    assert info.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize(("field", "value", "why"), [
    ("audio", {"voice": "alloy", "format": "mp3"}, "text only"), ("prediction", {"type": "content"}, "predicted"),
    ("web_search_options", {}, "web"), ("reasoning_effort", "low", "reasoning"), ("functions", [], "tools"),
    ("function_call", "auto", "tool_choice"), ("verbosity", "low", "verbosity")])
def test_fields_rbee_cannot_honour_are_refused_saying_why(field, value, why):
    with pytest.raises(ValidationError) as info:
        oa.ChatCompletionRequest.model_validate({**CHAT, field: value})
    err = info.value.errors()[0]
    assert err["loc"] == (field,) and why in err["msg"], err


def _worker_body(**extra) -> dict:
    return oa.ChatCompletionRequest.model_validate({**CHAT, **extra}).to_inference().model_dump(
        mode="json", exclude_none=True)


def test_penalties_bias_and_logprobs_go_to_the_worker():
    body = _worker_body(presence_penalty=0.5, frequency_penalty=-1, logit_bias={"42": -100, "7": 3.5},
                        logprobs=True, top_logprobs=3)
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.5, -1.0)
    assert body["logit_bias"] == {"42": -100.0, "7": 3.5} and body["logprobs"] == 3
    assert _worker_body(logprobs=True)["logprobs"] == 0 and "logprobs" not in _worker_body(logprobs=False)


def test_top_logprobs_without_logprobs_is_refused():
    with pytest.raises(RbeeError) as info:
        _worker_body(top_logprobs=2)
    assert info.value.details == {"field": "top_logprobs"}


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
          "additionalProperties": False}


def test_response_formats_become_the_workers_json_schema():
    assert _worker_body(response_format={"type": "json_object"})["json_schema"] == {"type": "object"}
    assert "json_schema" not in _worker_body(response_format={"type": "text"})
    body = _worker_body(response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA,
                                                                                "strict": True}})
    assert body["json_schema"] == SCHEMA
    completion = oa.CompletionRequest.model_validate({"model": "m", "prompt": "x",
                                                      "response_format": {"type": "json_object"}})
    assert completion.to_inference().json_schema == {"type": "object"}


def test_a_schema_rbee_cannot_follow_is_refused_naming_the_part():
    bad = {"type": "object", "properties": {"zip": {"type": "string", "pattern": "[0-9]+"}}}
    with pytest.raises(ValidationError) as info:
        _worker_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}})
    err = info.value.errors()[0]
    assert err["loc"] == ("response_format", "json_schema", "schema") and "#/properties/zip" in err["msg"], err


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_tools_become_instructions_and_the_answers_schema():
    body = _worker_body(tools=[WEATHER], tool_choice="required")
    assert body["messages"][0]["role"] == "system" and "get_weather" in body["messages"][0]["content"]
    assert body["json_schema"]["required"] == ["tool_calls"]
    auto = _worker_body(tools=[WEATHER])
    assert "anyOf" in auto["json_schema"]
    assert "json_schema" not in _worker_body(tools=[WEATHER], tool_choice="none")


def test_a_named_tool_choice_must_name_a_tool():
    named = _worker_body(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named["json_schema"]["properties"]["tool_calls"]["items"]["properties"]["name"] == {"const": "get_weather"}
    with pytest.raises(RbeeError) as info:
        _worker_body(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert info.value.details == {"field": "tool_choice"}
    with pytest.raises(RbeeError):
        _worker_body(tool_choice="auto")


def test_tool_history_is_rendered_as_the_model_wrote_it_and_tool_results_keep_their_call():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    body = _worker_body(messages=[{"role": "user", "content": "Weather in Oslo?"},
                                  {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None},
                                  {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees"}])
    assistant, tool = body["messages"][1], body["messages"][2]
    assert '"get_weather"' in assistant["content"] and '"Oslo"' in assistant["content"]
    assert tool == {"role": "tool", "content": "4 degrees", "tool_call_id": "call_1", "name": "get_weather"}
    with pytest.raises(RbeeError):
        _worker_body(messages=[{"role": "tool", "content": "4 degrees"}])


def test_developer_role_and_text_parts_are_flattened():
    req = oa.ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
    ]})
    assert req.to_inference().model_dump(mode="json", exclude_none=True)["messages"] == [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Hello there"}]


def test_image_parts_are_refused_naming_messages():
    req = oa.ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})
    with pytest.raises(RbeeError) as info:
        req.to_inference().model_dump(mode="json", exclude_none=True)
    assert info.value.code == ErrorCode.INVALID_REQUEST and info.value.details == {"field": "messages"}


@pytest.mark.parametrize("extra", [{"n": 2}, {"temperature": 2.1}, {"max_tokens": 0}, {"seed": -1},
                                   {"stop": ["a"] * 9}, {"store": True}, {"service_tier": "flex"},
                                   {"top_logprobs": 21}, {"logit_bias": {"1": 101}}, {"presence_penalty": 3},
                                   {"stream_options": {"include_obfuscation": True}}, {"modalities": ["audio"]}])
def test_what_we_cannot_honour_is_refused(extra):
    with pytest.raises(ValidationError):
        oa.ChatCompletionRequest.model_validate({**CHAT, **extra})


def test_completions_default_to_sixteen_tokens_and_take_a_one_item_list():
    body = oa.CompletionRequest.model_validate({"model": "m", "prompt": ["Once"]}).to_inference().model_dump(mode="json", exclude_none=True)
    assert body["prompt"] == "Once" and body["max_tokens"] == oa.COMPLETIONS_DEFAULT_MAX_TOKENS


@pytest.mark.parametrize("prompt", ["", [""], ["a", "b"], [1, 2, 3]])
def test_completions_refuse_prompts_we_cannot_run(prompt):
    with pytest.raises(ValidationError):
        oa.CompletionRequest.model_validate({"model": "m", "prompt": prompt})


def test_include_usage_only_matters_when_streaming():
    opts = {"stream_options": {"include_usage": True}}
    assert oa.ChatCompletionRequest.model_validate({**CHAT, **opts, "stream": True}).include_usage
    assert not oa.ChatCompletionRequest.model_validate({**CHAT, **opts}).include_usage


@pytest.mark.parametrize(("code", "kind"), [
    (ErrorCode.INVALID_REQUEST, "invalid_request_error"), (ErrorCode.MISSING_API_KEY, "authentication_error"),
    (ErrorCode.INVALID_API_KEY, "authentication_error"), (ErrorCode.MODEL_NOT_FOUND, "not_found_error"),
    (ErrorCode.RATE_LIMITED, "rate_limit_error"), (ErrorCode.NO_IDLE_WORKERS, "server_error"),
    (ErrorCode.WORKER_UNAVAILABLE, "server_error"), (ErrorCode.PAYLOAD_TOO_LARGE, "invalid_request_error"),
])
def test_errors_keep_the_envelope_and_add_openais_type(code, kind):
    body = oa.openai_envelope(RbeeError(code, "what to do", {"x": 1}))
    assert body == {"error": {"code": code.value, "message": "what to do", "details": {"x": 1}, "type": kind}}


def test_finish_reasons_are_openais():
    assert [oa.finish_reason(Done(1, 1, r)) for r in ("stop", "length", "cancelled")] == ["stop", "length",
                                                                                                  "stop"]

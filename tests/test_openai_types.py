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


def test_unknown_fields_from_the_sdk_are_ignored():
    req = oa.ChatCompletionRequest.model_validate({**CHAT, "parallel_tool_calls": False, "metadata": {"a": 1}})
    assert req.to_inference().model_dump(mode="json", exclude_none=True)["messages"]


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


@pytest.mark.parametrize("extra", [{"n": 2}, {"logprobs": True}, {"temperature": 2.1}, {"max_tokens": 0},
                                   {"seed": -1}, {"stop": ["a"] * 9}])
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

"""OpenAI wire types for the queen's front door, and their conversion to the worker's InferenceRequest.

Requests are tolerant (``extra="ignore"``): the official SDKs send fields we have no use for.
Fields we cannot honour the way OpenAI does (``n > 1``, ``logprobs``, images) are refused with a
400 naming the field rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rbee.errors import ErrorCode, RbeeError, validation_error
from rbee.events import Done
from rbee.protocol import MAX_TOKENS_LIMIT, InferenceRequest, ModelRef

MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
Stop = Annotated[str, Field(min_length=1, max_length=256)]
# OpenAI's legacy completions default; chat has none (we then let the worker stop at its context).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

# The error "type" OpenAI clients expect, by HTTP status.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 409: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error"}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def openai_envelope(err: RbeeError) -> dict[str, Any]:
    """Our envelope, plus OpenAI's ``type`` inside ``error`` so the official clients classify it."""
    body = err.envelope()
    body["error"]["type"] = error_type(err.status)
    return body


class OpenAIRequestModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(OpenAIRequestModel):
    type: str
    text: str | None = None


class Message(OpenAIRequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: Annotated[str, Field(max_length=64)] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"content parts of type '{part.type}' are not supported; send text")
        return "".join(p.text or "" for p in self.content)

    def for_worker(self) -> dict[str, Any]:
        # "developer" is the newer name for "system"; the models' templates know only the latter.
        role = "system" if self.role == "developer" else self.role
        out: dict[str, Any] = {"role": role, "content": self.text()}
        if self.name is not None:
            out["name"] = self.name
        return out


class StreamOptions(OpenAIRequestModel):
    include_usage: bool = False


class GenerationRequest(OpenAIRequestModel):
    """What chat and text completions share: the model and how to sample."""

    model: ModelRef
    max_tokens: MaxTokens | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    stop: Stop | Annotated[list[Stop], Field(max_length=8)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1, description="one choice per request")] | None = None
    logprobs: Literal[False] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    cache_prompt: bool | None = None  # llama-server's extension, passed on to the worker

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def _sampling(self, max_tokens: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "stream": True,
                                "max_tokens": max_tokens or MAX_TOKENS_LIMIT,
                                "temperature": 1.0 if self.temperature is None else self.temperature}
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.seed is not None:
            body["seed"] = self.seed
        if self.cache_prompt is not None:
            body["cache_prompt"] = self.cache_prompt
        if self.stop:
            body["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        return body


class ChatCompletionRequest(GenerationRequest):
    messages: Annotated[list[Message], Field(min_length=1, max_length=1024)]
    max_completion_tokens: MaxTokens | None = None

    def to_inference(self) -> InferenceRequest:
        """The worker's request (always streamed to the queen; the queen reshapes the answer)."""
        try:
            messages = [m.for_worker() for m in self.messages]
        except ValueError as exc:
            raise RbeeError(ErrorCode.INVALID_REQUEST, f"Invalid field 'messages': {exc}.",
                            {"field": "messages"}) from None
        body = {"messages": messages, **self._sampling(self.max_completion_tokens or self.max_tokens)}
        return _checked(body)


class CompletionRequest(GenerationRequest):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: Literal[False] | None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None
    suffix: None = None

    @field_validator("prompt")
    @classmethod
    def _text_prompt(cls, v: str | list[str]) -> str | list[str]:
        if not (v if isinstance(v, str) else v[0]):
            raise ValueError("the prompt is empty")
        return v

    def to_inference(self) -> InferenceRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return _checked({"prompt": prompt, **self._sampling(self.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS)})


def _checked(body: dict[str, Any]) -> InferenceRequest:
    """Validate against the worker's own model, so a bad request is our 400, not the worker's."""
    try:
        return InferenceRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def usage(done: Done) -> dict[str, Any]:
    prompt, completion = done.prompt_tokens or 0, done.total_tokens
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if done.cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": done.cached_tokens}
    return out


def finish_reason(done: Done) -> str:
    return done.finish_reason if done.finish_reason in ("stop", "length") else "stop"

"""OpenAI wire types for the queen's front door, and their conversion to the worker's InferenceRequest.

No field is silently ignored. Every field OpenAI's chat and completions APIs define is either honoured
or refused with a 400 naming it and saying why; a field OpenAI does not define is refused too (as
OpenAI itself answers "Unrecognized request argument"), apart from the few vendor extensions other
local servers share and rbee honours (``cache_prompt``, ``top_k``, ``min_p``). The list is in the
README ("OpenAI: supported and refused").

Structured outputs (``response_format``) and tool calls become a JSON Schema the worker turns into a
grammar; schemas are checked here, so one rbee cannot follow is refused before it is queued.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from rbee import grammar
from rbee.deadline import MAX_TIMEOUT_S
from rbee.errors import ErrorCode, RbeeError, validation_error
from rbee.events import Done
from rbee.protocol import MAX_TOKENS_LIMIT, EmbeddingInput, EmbeddingRequest, InferenceRequest, ModelRef
from rbee.queen import tool_calls

MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
Stop = Annotated[str, Field(min_length=1, max_length=256)]
Label = Annotated[str, Field(max_length=256)]
FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
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


def _invalid(field: str, problem: str) -> RbeeError:
    return RbeeError(ErrorCode.INVALID_REQUEST, f"Invalid field '{field}': {problem}.", {"field": field})


class OpenAIRequestModel(BaseModel):
    # OpenAI answers 400 to an argument it does not know; so does rbee (pydantic names the field).
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _checked_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is not None:
        grammar.from_json_schema(schema)  # a SchemaError (a ValueError) names the part it cannot handle
    return schema


# ---------------------------------------------------------------- messages


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")  # image_url, input_audio, file: refused by type, below

    type: str
    text: str | None = None


class CalledFunction(OpenAIRequestModel):
    name: str
    arguments: str


class CalledTool(OpenAIRequestModel):
    id: Annotated[str, Field(max_length=256)]
    type: Literal["function"] = "function"
    function: CalledFunction


class Message(OpenAIRequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: Annotated[str, Field(max_length=64)] | None = None
    tool_calls: list[CalledTool] | None = None  # an assistant turn that called tools
    tool_call_id: Annotated[str, Field(max_length=256)] | None = None  # a tool's result: which call
    # What clients echo back when they append the assistant message they were given.
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: None = None
    function_call: None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type not in ("text", "refusal") or part.text is None:
                raise ValueError(f"content parts of type '{part.type}' are not supported; send text")
        return "".join(p.text or "" for p in self.content)

    def for_worker(self, names: dict[str, str]) -> dict[str, Any]:
        """The turn for the model's template. ``names``: the function each earlier call id went to."""
        # "developer" is the newer name for "system"; the models' templates know only the latter.
        role = "system" if self.role == "developer" else self.role
        if self.tool_calls:  # as the model wrote it (rbee.queen.tool_calls)
            content = tool_calls.calls_as_text([c.model_dump() for c in self.tool_calls])
        else:
            content = self.text() or (self.refusal or "")
        out: dict[str, Any] = {"role": role, "content": content}
        if self.role == "tool":
            if self.tool_call_id is None:
                raise ValueError("a 'tool' message needs the 'tool_call_id' of the call it answers")
            out["tool_call_id"] = self.tool_call_id
            name = self.name or names.get(self.tool_call_id)
            if name is not None:
                out["name"] = name
        elif self.name is not None:
            out["name"] = self.name
        return out


# ---------------------------------------------------------------- structured output, tools


class JsonSchemaFormat(OpenAIRequestModel):
    name: FunctionName
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None  # the answer always validates: rbee constrains decoding either way

    @field_validator("schema_")
    @classmethod
    def _convertible(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _checked_schema(v)


class ResponseFormat(OpenAIRequestModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def answer_schema(self) -> dict[str, Any] | None:
        """The JSON Schema the answer is held to (None: free text)."""
        if self.type == "json_object":
            return {"type": "object"}
        if self.type == "json_schema":
            if self.json_schema is None:
                raise _invalid("response_format.json_schema", "a 'json_schema' format needs its 'json_schema'")
            return self.json_schema.schema_ if self.json_schema.schema_ is not None else {}
        return None


class FunctionDef(OpenAIRequestModel):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # the arguments always validate: they are constrained either way

    @field_validator("parameters")
    @classmethod
    def _convertible(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _checked_schema(v)

    def function(self) -> tool_calls.Function:
        return tool_calls.Function(self.name, self.description,
                                   self.parameters if self.parameters is not None else tool_calls.EMPTY_PARAMETERS)


class Tool(OpenAIRequestModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(OpenAIRequestModel):
    name: FunctionName


class NamedToolChoice(OpenAIRequestModel):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(OpenAIRequestModel):
    include_usage: bool = False
    include_obfuscation: Literal[False] | None = None  # rbee pads no chunks


# Fields OpenAI defines that rbee cannot honour: why, for the 400 that names them.
REFUSED = {
    "audio": "rbee's models answer in text only; leave out 'audio'",
    "prediction": "predicted outputs are not supported; leave out 'prediction'",
    "web_search_options": "rbee does not search the web; leave out 'web_search_options'",
    "reasoning_effort": "rbee's models have no reasoning effort to set; leave out 'reasoning_effort'",
    "verbosity": "rbee's models have no verbosity setting; leave out 'verbosity'",
    "functions": "'functions' is OpenAI's deprecated form of tools; send 'tools'",
    "function_call": "'function_call' is OpenAI's deprecated form of tool_choice; send 'tool_choice'",
    "moderation": "rbee runs no moderation model; leave out 'moderation'",
}


class PromptCacheOptions(OpenAIRequestModel):
    # "explicit" without breakpoints (rbee has none) means no prompt caching: cache_prompt false.
    mode: Literal["implicit", "explicit"] | None = None


class GenerationRequest(OpenAIRequestModel):
    """What chat and text completions share: the model and how to sample."""

    model: ModelRef
    max_tokens: MaxTokens | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    stop: Stop | Annotated[list[Stop], Field(max_length=8)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1, description="one choice per request")] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[Annotated[int, Field(ge=0)], Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        None, max_length=1024)
    response_format: ResponseFormat | None = None
    # Accepted, and used for nothing but the log: rbee stores no completions and has one service tier.
    user: Label | None = None
    safety_identifier: Label | None = None
    prompt_cache_key: Label | None = None  # the worker's prompt cache needs no key
    prompt_cache_options: PromptCacheOptions | None = None
    prompt_cache_retention: Literal["in_memory"] | None = None  # rbee's prompt cache is the slots' KV memory
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                        Field(max_length=16)] | None = None
    store: Literal[False] | None = None
    service_tier: Literal["auto", "default"] | None = None
    # Other local servers' extensions (llama-server, vLLM), honoured.
    cache_prompt: bool | None = None
    top_k: Annotated[int, Field(ge=0, le=1000)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    # rbee's own: seconds the request may take in all (rbee.deadline). OpenAI's clients keep their `timeout`
    # option to themselves (it never reaches a server); send this one with extra_body={"timeout": S}.
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def _sampling(self, max_tokens: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "stream": True,
                                "max_tokens": max_tokens or MAX_TOKENS_LIMIT,
                                "temperature": 1.0 if self.temperature is None else self.temperature}
        given = {"top_p": self.top_p, "seed": self.seed, "cache_prompt": self.cache_prompt, "top_k": self.top_k,
                 "min_p": self.min_p, "presence_penalty": self.presence_penalty,
                 "frequency_penalty": self.frequency_penalty, "logit_bias": self.logit_bias}
        body.update({k: v for k, v in given.items() if v is not None})
        if self.prompt_cache_options is not None and self.prompt_cache_options.mode == "explicit":
            body["cache_prompt"] = False
        if self.stop:
            body["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        schema = self.response_format.answer_schema() if self.response_format is not None else None
        if schema is not None:
            body["json_schema"] = schema
        return body


class ChatCompletionRequest(GenerationRequest):
    messages: Annotated[list[Message], Field(min_length=1, max_length=1024)]
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # Several calls in one answer only when asked (llama-server's default): small models told they may
    # make several tend to repeat the first.
    parallel_tool_calls: bool | None = None
    modalities: list[Literal["text"]] | None = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    functions: Any = None
    function_call: Any = None
    moderation: Any = None

    @field_validator(*REFUSED, mode="before")
    @classmethod
    def _refused(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None:
            raise ValueError(REFUSED[info.field_name or ""])
        return v

    @property
    def tool_mode(self) -> bool:
        """The answer is calls or a reply, in the tool-call JSON (rbee.queen.tool_calls)."""
        return bool(self.tools) and self.tool_choice != "none"

    def _functions(self) -> tuple[list[tool_calls.Function], bool]:
        """The functions the model may call, and whether it must call one."""
        assert self.tools is not None
        functions = [t.function.function() for t in self.tools]
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            named = [f for f in functions if f.name == choice.function.name]
            if not named:
                raise _invalid("tool_choice", f"no tool is named '{choice.function.name}' "
                               f"(tools: {', '.join(f.name for f in functions)})")
            return named, True
        return functions, choice == "required"

    def _worker_messages(self) -> list[dict[str, Any]]:
        names = {c.id: c.function.name for m in self.messages for c in m.tool_calls or ()}
        try:
            return [m.for_worker(names) for m in self.messages]
        except ValueError as exc:
            raise _invalid("messages", str(exc)) from None

    def to_inference(self) -> InferenceRequest:
        """The worker's request (always streamed to the queen; the queen reshapes the answer)."""
        if self.tool_choice is not None and not self.tools:
            raise _invalid("tool_choice", "it needs 'tools' to choose from")
        if self.top_logprobs is not None and not self.logprobs:
            raise _invalid("top_logprobs", "it needs 'logprobs': true")
        messages = self._worker_messages()
        body = {"messages": messages, **self._sampling(self.max_completion_tokens or self.max_tokens)}
        if self.logprobs:
            body["logprobs"] = self.top_logprobs or 0
        if self.tool_mode:
            functions, required = self._functions()
            reply = body.pop("json_schema", None)
            body["json_schema"] = tool_calls.answer_schema(functions, required=required,
                                                           parallel=self.parallel_tool_calls is True,
                                                           response_schema=reply)
            body["messages"] = tool_calls.with_instructions(messages, tool_calls.instructions(functions,
                                                                                              required=required))
        return _checked(body)


class CompletionRequest(GenerationRequest):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: Literal[False] | None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None
    suffix: None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None

    @field_validator("prompt")
    @classmethod
    def _text_prompt(cls, v: str | list[str]) -> str | list[str]:
        if not (v if isinstance(v, str) else v[0]):
            raise ValueError("the prompt is empty")
        return v

    @property
    def tool_mode(self) -> bool:
        return False

    def to_inference(self) -> InferenceRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        body = {"prompt": prompt, **self._sampling(self.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS)}
        if self.logprobs is not None:
            body["logprobs"] = self.logprobs
        return _checked(body)


class EmbeddingsRequest(OpenAIRequestModel):
    """``POST /v1/embeddings``: every field OpenAI defines; ``input`` and the encodings as the worker takes
    them (rbee.protocol.EmbeddingRequest), ``dimensions`` only as the model's own length (the worker says)."""

    model: ModelRef
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=65536)] | None = None
    user: Label | None = None  # accepted, and used for nothing but the log

    def for_worker(self) -> EmbeddingRequest:
        return EmbeddingRequest(input=self.input, encoding_format=self.encoding_format, dimensions=self.dimensions)


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
    # "deadline" is rbee's own (rbee.deadline); the OpenAI clients take unknown finish reasons as they come.
    return done.finish_reason if done.finish_reason in ("stop", "length", "deadline") else "stop"

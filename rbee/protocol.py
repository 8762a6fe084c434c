"""Pydantic wire models shared by every part of rbee and by the test steps."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    TypeAdapter,
    field_validator,
    model_validator,
)

from rbee import grammar
from rbee.deadline import MAX_TIMEOUT_S

ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
Identifier = Annotated[str, Field(pattern=ID_PATTERN, description="[A-Za-z0-9._-]{1,64}")]
_ID = re.compile(ID_PATTERN, re.ASCII)


def is_identifier(text: str) -> bool:
    """The contract's id rule (worker, hive and request ids): ASCII letters, digits, ``._-``, 1-64."""
    return _ID.fullmatch(text) is not None
# Model refs: hf:org/repo[:file.gguf], file:///abs/path.gguf, https://.../x.gguf, or a plain name.
ModelRef = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f\s]+$")]

MAX_TOKENS_LIMIT = 32768
_HTTP_URL = TypeAdapter(HttpUrl)


def _http_url(value: str) -> str:
    """Validate as an http(s) URL but keep the text as given (no added trailing slash)."""
    _HTTP_URL.validate_python(value)
    return value.rstrip("/")


BaseUrl = Annotated[str, Field(max_length=2048), AfterValidator(_http_url)]
# rbee's version as a peer reports it (``rbee.__version__``); optional on the wire, for older peers.
Version = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z.+_-]+$")]


class RequestModel(BaseModel):
    """Requests we own: unknown fields are an error, so typos don't silently do nothing."""

    model_config = ConfigDict(extra="forbid")


class WireModel(BaseModel):
    """Answers and events: tolerant, so newer peers can add fields."""

    model_config = ConfigDict(extra="ignore")


class Capability(StrEnum):
    """What a worker does. One worker does one thing: a worker started with ``--embeddings`` loads its
    model for pooled embeddings and refuses generation; every other worker generates and refuses
    embeddings. The queen routes each route's requests only to workers of its capability."""

    GENERATE = "generate"
    EMBEDDINGS = "embeddings"


class WorkerState(StrEnum):
    LOADING = "loading"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    OFFLINE = "offline"


# ---------------------------------------------------------------- queen: worker registry


class WorkerRegistration(RequestModel):
    worker_id: Identifier
    url: BaseUrl
    model_ref: ModelRef
    backend: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")] = "cpu"
    device: Annotated[int, Field(ge=0, le=1024)] = 0
    node_name: Identifier = "local"
    slots_total: Annotated[int, Field(ge=1, le=1024)] = 1
    vram_bytes: Annotated[int, Field(ge=0)] | None = None
    version: Version | None = None
    capability: Capability = Capability.GENERATE


class WorkerInfo(WireModel):
    worker_id: str
    url: str
    model_ref: str
    backend: str
    device: int
    node_name: str
    slots_total: int
    slots_available: int
    vram_bytes: int | None = None
    version: str | None = None
    capability: Capability = Capability.GENERATE
    state: WorkerState
    registered_at: float
    last_seen: float


class WorkerList(WireModel):
    workers: list[WorkerInfo]


class RegisterResponse(WireModel):
    success: bool
    message: str
    worker_id: str


class WorkerPatch(RequestModel):
    state: WorkerState


class WorkerHeartbeat(RequestModel):
    state: WorkerState | None = None
    slots_available: Annotated[int, Field(ge=0, le=1024)] | None = None


class WorkerShutdownRequest(RequestModel):
    worker_id: Identifier


# ---------------------------------------------------------------- inference


class ChatMessage(RequestModel):
    """One turn of a conversation; the worker renders the list with the model's chat template."""

    role: Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]
    content: Annotated[str, Field(max_length=256 * 1024)]
    name: Annotated[str, Field(max_length=64)] | None = None
    tool_call_id: Annotated[str, Field(max_length=256)] | None = None  # a tool result: the call it answers


class InferenceRequest(RequestModel):
    # Exactly one of the two: raw text, or chat messages rendered at the worker with the GGUF's template.
    prompt: Annotated[str, Field(min_length=1, max_length=256 * 1024)] | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1024)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] = 100
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.7
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0, le=1000)] = 40
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    repeat_penalty: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list, max_length=8)
    model: ModelRef | None = None
    stream: bool = True
    ignore_eos: bool = Field(False, description="Never end early: generate exactly max_tokens (benchmarks, tests).")
    cache_prompt: bool = Field(True, description="Reuse the KV a slot holds of an earlier prompt that begins "
                               "the same way (llama-server's cache_prompt); false decodes the whole prompt.")
    # Structured output: the answer is held to a grammar (GBNF) or to JSON valid under a schema.
    grammar: Annotated[str, Field(min_length=1, max_length=256 * 1024)] | None = Field(
        None, description="A GBNF grammar (llama.cpp's format, start rule 'root') the answer must match.")
    json_schema: dict[str, Any] | bool | None = Field(
        None, description="The answer is JSON valid under this schema (a part rbee cannot turn into a "
        "grammar is refused, naming it).")
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = Field(
        None, description="Each token event carries its log-probability and this many likeliest alternatives.")
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    logit_bias: dict[Annotated[int, Field(ge=0)], Annotated[float, Field(ge=-100.0, le=100.0)]] = Field(
        default_factory=dict, max_length=1024, description="Token id -> added to its logit.")
    hive: Identifier | None = Field(None, description="Serve it only on this hive's workers (the queen's "
                                    "routing; never sent on to the worker).")
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] | None = Field(
        None, description="Seconds from arrival the request may take, queue and generation included "
        "(rbee.deadline; passed on as a header, never in the body).")
    # Resumption: a stream whose worker died goes on on another worker, from exactly where it was.
    token_ids: bool = Field(False, description="Each token event carries 'ids': the model tokens whose text it "
                            "completes (what a resumption sends back as resume_ids).")
    resume_ids: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, max_length=MAX_TOKENS_LIMIT, description="Tokens of the answer already sent: "
        "decoded after the prompt, counted against max_tokens, and generation goes on after them.")
    resume_index: Annotated[int, Field(ge=0)] = Field(0, description="The index of the first token event (the "
                                                       "number of token events already sent).")

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("json_schema")
    @classmethod
    def _convertible(cls, v: dict[str, Any] | bool | None) -> dict[str, Any] | bool | None:
        if v is not None:
            grammar.from_json_schema(v)  # a SchemaError (a ValueError) names the part it cannot handle
        return v

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> InferenceRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of 'prompt' (text) and 'messages' (chat)")
        if self.grammar is not None and self.json_schema is not None:
            raise ValueError("send at most one of 'grammar' and 'json_schema'")
        if len(self.resume_ids) >= self.max_tokens:
            raise ValueError("'resume_ids' holds max_tokens tokens or more: that answer is complete")
        if self.resume_ids and (self.guided or self.resume_index == 0):
            raise ValueError("'resume_ids' needs 'resume_index' > 0 and an answer without grammar, json_schema "
                             "or logprobs (their state is not resumed)")
        return self

    @property
    def guided(self) -> bool:
        """Held to a grammar or asked for logprobs: what a resumption cannot carry over."""
        return self.grammar is not None or self.json_schema is not None or self.logprobs is not None

    def answer_grammar(self) -> str | None:
        """The GBNF the answer is held to, if any."""
        if self.json_schema is not None:
            return grammar.from_json_schema(self.json_schema)
        return self.grammar


class TokenEvent(WireModel):
    token: str
    index: int


class DoneEvent(WireModel):
    done: Literal[True] = True
    total_tokens: int
    duration_ms: int
    finish_reason: Literal["stop", "length", "cancelled", "error", "deadline"]
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    max_tokens_clipped: int | None = None
    worker_id: str | None = None


class ReadyStatus(WireModel):
    ready: bool
    state: WorkerState
    model_loaded: bool = False
    progress_url: str | None = None
    slots_total: int
    slots_available: int


# ---------------------------------------------------------------- embeddings

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit on the inputs of one request
EmbeddingText = Annotated[str, Field(min_length=1, max_length=256 * 1024)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=131072)]
# OpenAI's four forms: a text, texts, one token array, token arrays
EmbeddingInput = (EmbeddingText | Annotated[list[EmbeddingText], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
                  | TokenIds | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)])


class EmbeddingRequest(RequestModel):
    """``POST /v1/embeddings`` at an embeddings worker: OpenAI's ``input`` forms (a text, texts, one token
    array, token arrays), each embedded on its own; the answer is OpenAI's embeddings list."""

    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=65536)] | None = Field(
        None, description="Must equal the model's embedding length: vectors are never shortened (400 otherwise).")

    def inputs(self) -> list[str | list[int]]:
        """The inputs, one per vector, in order."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and isinstance(self.input[0], int):
            return [self.input]  # type: ignore[list-item]
        return list(self.input)  # type: ignore[arg-type]


# ---------------------------------------------------------------- hive


class SpawnRequest(RequestModel):
    model_ref: ModelRef | None = None
    backend: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")] = "cpu"
    device: Annotated[int, Field(ge=0, le=1024)] | None = Field(
        None, description="Device index; none: the one of this backend with the most free memory that fits.")
    slots: Annotated[int, Field(ge=1, le=64)] = 1
    ctx_size: Annotated[int, Field(ge=256, le=131072)] | None = None
    embeddings: bool = Field(False, description="Start the worker with --embeddings: it serves /v1/embeddings "
                             "(pooled vectors) and no generation.")
    wait: bool = Field(False, description="Answer only once the worker is ready (200), or 502 SPAWN_FAILED "
                       "with its last log lines.")


class WorkerReady(RequestModel):
    worker_id: Identifier
    url: BaseUrl
    model_ref: ModelRef
    backend: str = "cpu"
    device: int = 0
    slots_total: Annotated[int, Field(ge=1, le=1024)] = 1
    capability: Capability = Capability.GENERATE


class HiveWorker(WireModel):
    worker_id: str
    url: str
    model_ref: str
    backend: str
    device: int
    pid: int
    port: int
    state: str
    slots_total: int
    capability: Capability = Capability.GENERATE


# ---------------------------------------------------------------- queen: hive registry


class HiveRegistration(RequestModel):
    hive_id: Identifier
    url: BaseUrl
    node_name: Identifier | None = None
    models: list[ModelRef] = Field(default_factory=list, max_length=4096)
    version: Version | None = None


class DeviceMemory(WireModel):
    """One device's memory as a hive sees it: ``cpu:0`` is host RAM, a GPU its own memory. ``reserved``:
    what the estimates of this hive's workers on it add up to; ``headroom``: what one more worker may
    take (free memory, and within the budget what is not reserved); ``reclaimable``: what evicting
    this hive's idle workers (past --min-resident) would give back."""

    backend: str
    index: int
    name: str = ""
    total_bytes: int | None = None
    free_bytes: int | None = None
    reserved_bytes: int = 0
    budget_bytes: int | None = None
    headroom_bytes: int | None = None
    reclaimable_bytes: int = 0


class SpawnPlan(WireModel):
    """``POST /v1/workers/plan``: what a spawn of the same body would do now, without doing it."""

    model_ref: str
    local: bool  # the model file is on the hive (else it must be downloaded first; need unknown)
    backend: str
    device: int | None = None  # the device the worker would get
    needed_host_bytes: int | None = None
    needed_device_bytes: int | None = None
    fits: bool  # with the evictions below
    later: bool = False  # does not fit now, but will once busy or too young workers may be evicted
    evict: list[str] = Field(default_factory=list)  # idle workers of other models it would stop first
    blocking: list[str] = Field(default_factory=list)  # with ``later``: workers whose eviction must wait
    free_bytes: int | None = None  # headroom on the device it would use (host RAM for cpu)
    memory: list[DeviceMemory] = Field(default_factory=list)
    reason: str | None = None


class HiveHeartbeat(RequestModel):
    models: list[ModelRef] | None = Field(None, max_length=4096)
    workers: Annotated[int, Field(ge=0, le=4096)] | None = None
    ram_free_bytes: Annotated[int, Field(ge=0)] | None = None
    memory: list[DeviceMemory] | None = Field(None, max_length=256)


class HiveInfo(WireModel):
    hive_id: str
    url: str
    node_name: str
    models: list[str]
    workers: int
    registered_at: float
    last_seen: float
    live: bool
    version: str | None = None
    ram_free_bytes: int | None = None
    memory: list[DeviceMemory] = Field(default_factory=list)


class HiveList(WireModel):
    hives: list[HiveInfo]


# ---------------------------------------------------------------- queen: nodes (hives brought up over SSH)

RemoteDir = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f]+$")]


class NodeAdd(RequestModel):
    """``POST /v2/nodes``: a machine the queen reaches over SSH to install, start and stop its hive."""

    name: Identifier
    ssh: Annotated[str, Field(min_length=1, max_length=300, description="[USER@]HOST[:PORT]")]
    identity: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="Private key file on the queen's machine (default: ssh's own choice).")
    remote_dir: RemoteDir | None = Field(None, description="Where rbee lives there (relative: to the home).")
    hive_port: Annotated[int, Field(ge=1, le=65535)] = 9200
    accept_new_host_key: bool = False
    replace: bool = False


class NodeLogQuery(RequestModel):
    lines: Annotated[int, Field(ge=0, le=100_000)] = 50
    follow: bool = False
    program: Identifier | None = Field(None, description="A worker id (its log); the hive's log when unset.")


class NodeInfo(WireModel):
    """A hive as ``hives list`` shows it; ``hive_id``, ``url`` and ``live`` as ``/v2/hives/list`` has them."""

    hive_id: str  # the node's name
    ssh: str | None  # None: a hive that registered without being added (started by hand)
    state: Literal["online", "offline", "unreachable"]
    live: bool  # state == "online"
    version: str | None = None
    workers: int = 0
    ram_free_bytes: int | None = None
    memory: list[DeviceMemory] = Field(default_factory=list)  # per device, from the last heartbeat
    seconds_since_heartbeat: float | None = None
    url: str | None = None  # the hive's, once it has registered
    remote_dir: str | None = None
    installed: bool | None = None  # rbee-hive found there at the last look (None: not looked, or not ours)
    notes: list[str] = Field(default_factory=list)  # what to do next, for a person


class NodeList(WireModel):
    hives: list[NodeInfo]


class InstallEvent(WireModel):
    """One line of ``POST /v2/nodes/{name}/install``'s progress stream; ``complete`` ends it."""

    stage: Literal["check", "wheelhouse", "copy", "venv", "install", "verify", "complete"]
    message: str
    version: str | None = None


class NodeStarted(WireModel):
    node: NodeInfo
    pid: int
    queen_url: str  # the queen's address as the hive was told it
    already_running: bool
    seconds: float


class NodeStopped(WireModel):
    node: NodeInfo
    outcome: Literal["stopped", "killed", "not-running"]
    workers_removed: int

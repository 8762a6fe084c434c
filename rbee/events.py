"""The token path's events, typed: what the engine emits, the worker frames, the queen relays or reshapes.

On the wire (``rbee.sse`` frames them) they are the contract's three JSON shapes::

    {"token": "Once", "index": 0}    (with "logprobs": [{"token", "logprob", "bytes", "top_logprobs"}] when asked)
    {"done": true, "total_tokens": 20, "duration_ms": 1234, "finish_reason": "length", ...}
    {"error": {"code": "INTERNAL", "message": "...", "details": {}}}

Plain slotted dataclasses rather than pydantic models: one is made per token, on the decode thread,
and the path is measured in microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rbee.errors import ErrorCode, RbeeError

FinishReason = Literal["stop", "length", "cancelled", "error", "deadline"]  # deadline: rbee.deadline


@dataclass(slots=True, frozen=True)
class Alternative:
    """One candidate for a token's place: its text, log-probability and UTF-8 bytes (OpenAI's shape)."""

    token: str
    logprob: float
    bytes: tuple[int, ...]

    def wire(self) -> dict[str, Any]:
        return {"token": self.token, "logprob": self.logprob, "bytes": list(self.bytes)}

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> Alternative:
        return cls(str(obj["token"]), float(obj["logprob"]), tuple(obj.get("bytes") or ()))


@dataclass(slots=True, frozen=True)
class TokenLogprob:
    """A sampled token's log-probability under the model (before any sampler), and the likeliest
    alternatives when asked for. On the wire, OpenAI's ``ChatCompletionTokenLogprob``."""

    chosen: Alternative
    top: tuple[Alternative, ...] = ()

    def wire(self) -> dict[str, Any]:
        return {**self.chosen.wire(), "top_logprobs": [a.wire() for a in self.top]}

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> TokenLogprob:
        return cls(Alternative.from_wire(obj), tuple(Alternative.from_wire(a) for a in obj.get("top_logprobs") or ()))


@dataclass(slots=True, frozen=True)
class Token:
    """Text for the client. With logprobs asked for, one entry per model token the text completes
    (text held back for a stop string or an unfinished UTF-8 character comes with a later event)."""

    text: str
    index: int
    logprobs: tuple[TokenLogprob, ...] | None = None
    ids: tuple[int, ...] | None = None  # the model tokens whose text this completes, when asked (token_ids)

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"token": self.text, "index": self.index}
        if self.logprobs is not None:
            out["logprobs"] = [lp.wire() for lp in self.logprobs]
        if self.ids is not None:
            out["ids"] = list(self.ids)
        return out


@dataclass(slots=True)
class Done:
    """The end of a generation. The worker fills the first group; the queen stamps its timeline."""

    total_tokens: int
    duration_ms: int
    finish_reason: FinishReason
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens whose KV was reused rather than decoded
    max_tokens_clipped: int | None = None
    queued_ms: int | None = None
    ttft_ms: int | None = None
    worker_id: str | None = None
    route: str | None = None  # "cache" or "load": why the queen chose this worker
    resumed: list[dict[str, Any]] | None = None  # [{"worker_id", "at_index"}]: where the queen moved it
    # What the worker's cache holds now, for the queen that asked (rbee.prefix); the queen takes them out.
    cache_held: list[str] | None = None
    cache_version: int | None = None

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"done": True}  # first: rbee.sse.is_done recognises the framed event by it
        for name in self.__slots__:  # type: ignore[attr-defined]
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(slots=True, frozen=True)
class Failed:
    """A generation that failed after its stream had started."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def error(self) -> RbeeError:
        return RbeeError(self.code, self.message, self.details)

    @classmethod
    def of(cls, err: RbeeError) -> Failed:
        return cls(err.code, err.message, dict(err.details))


@dataclass(slots=True, frozen=True)
class Prefilling:
    """Progress through a long prompt, before the first token: ``done`` of ``total`` prompt tokens are
    in the KV. Framed as an SSE comment (``: prefill done=1024 total=1400``): the stream shows it is
    alive, so a long prefill is not taken for a stalled worker, and a real stall still sends nothing."""

    done: int
    total: int

    def comment(self) -> str:
        return f"prefill done={self.done} total={self.total}"


Event = Token | Done | Failed  # the data events: what a stream's ``data:`` lines carry
EngineEvent = Event | Prefilling  # what the engine emits: the data events, and progress notes


def is_last(event: EngineEvent) -> bool:
    return isinstance(event, (Done, Failed))


def from_wire(obj: dict[str, Any]) -> Event:
    """The typed event of one parsed ``data:`` object; anything else is a Failed naming what came."""
    if "token" in obj:
        logprobs = obj.get("logprobs")
        ids = obj.get("ids")
        return Token(str(obj["token"]), int(obj.get("index", 0)),
                     None if logprobs is None else tuple(TokenLogprob.from_wire(lp) for lp in logprobs),
                     None if ids is None else tuple(ids))
    if obj.get("done"):
        known = {k: obj[k] for k in Done.__slots__ if k in obj}  # type: ignore[attr-defined]
        known.setdefault("total_tokens", 0)
        known.setdefault("duration_ms", 0)
        known.setdefault("finish_reason", "stop")
        return Done(**known)
    err = obj.get("error")
    if isinstance(err, dict):
        return Failed(str(err.get("code", ErrorCode.INTERNAL)), str(err.get("message", "")), err.get("details") or {})
    return Failed(ErrorCode.INTERNAL, f"Unexpected event in the stream: {str(obj)[:200]}. Retry the request.")


# ---------------------------------------------------------------- wait notes
# Why a request has not started yet, sent to streaming clients as SSE comments
# (``: queued position=2``, ``: provisioning model=M elapsed_s=S``) and read back by rbee-keeper.


@dataclass(slots=True, frozen=True)
class Queued:
    position: int

    def comment(self) -> str:
        return f"queued position={self.position}"


@dataclass(slots=True, frozen=True)
class Provisioning:
    model: str
    elapsed_s: int

    def comment(self) -> str:
        return f"provisioning model={self.model} elapsed_s={self.elapsed_s}"


WaitNote = Queued | Provisioning


def parse_note(comment: str) -> WaitNote | None:
    """The note an SSE comment carries, or None for any other comment."""
    kind, _, rest = comment.partition(" ")
    fields = dict(part.split("=", 1) for part in rest.split() if "=" in part)
    try:
        if kind == "queued":
            return Queued(int(fields["position"]))
        if kind == "provisioning":
            return Provisioning(fields.get("model", ""), int(fields["elapsed_s"]))
    except (KeyError, ValueError):
        return None
    return None

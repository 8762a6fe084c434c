"""Tool calls over any model: the answer is one JSON object the grammar holds the model to.

The generic protocol llama.cpp's server falls back on for templates without a tool format of their
own: the tools are described in the system message, and the answer is constrained (with the same
JSON-Schema grammar as structured outputs) to ``{"tool_calls": [{"name": ..., "arguments": {...}}]}``
or, where the model may also answer in words, ``{"response": "..."}``. Every call's ``arguments``
therefore validate against its function's ``parameters``. An assistant turn that made calls is
given back to the model as that same JSON, so the conversation reads the way the model wrote it;
tool results are ``role: "tool"`` messages, rendered by the model's own chat template.

Pure: no aiohttp, no I/O.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class Function:
    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: dict(EMPTY_PARAMETERS))

    def described(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["parameters"] = self.parameters
        return out


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": "function",
                               "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


@dataclass(frozen=True)
class Answer:
    """What the model's JSON says: calls, or text for the user (``content``), or neither when cut short."""

    tool_calls: tuple[ToolCall, ...] = ()
    content: str | None = None


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


# ---------------------------------------------------------------- asking


def answer_schema(functions: list[Function], *, required: bool, parallel: bool,
                  response_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema of the answer: calls to ``functions`` (at least one), and unless ``required``
    the alternative of a direct reply (a string, or ``response_schema`` when structured output is asked)."""
    calls = [{"type": "object", "properties": {"name": {"const": f.name}, "arguments": f.parameters},
              "required": ["name", "arguments"], "additionalProperties": False} for f in functions]
    call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    tool_calls: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
    if not parallel:
        tool_calls["maxItems"] = 1
    calling = {"type": "object", "properties": {"tool_calls": tool_calls}, "required": ["tool_calls"],
               "additionalProperties": False}
    if required:
        return calling
    reply = {"type": "object", "properties": {"response": response_schema or {"type": "string"}},
             "required": ["response"], "additionalProperties": False}
    return {"anyOf": [calling, reply]}


def instructions(functions: list[Function], *, required: bool) -> str:
    """What the system message tells the model about its tools and the shape of its answer."""
    listed = json.dumps([f.described() for f in functions], ensure_ascii=False)
    call = '{"tool_calls": [{"name": <a tool\'s name>, "arguments": <its arguments>}]}'
    if required:
        how = f"Answer with one JSON object that calls the tool: {call}."
    else:
        how = (f'Answer with one JSON object: {call} to call tools, or {{"response": <your answer>}} '
               "to answer the user directly.")
    return f"You can call these tools (each with a JSON Schema of its arguments):\n{listed}\n{how}"


def with_instructions(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """``messages`` with ``text`` added to the system message (a new one first when there is none)."""
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{text}" if first["content"] else text
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def calls_as_text(calls: list[dict[str, Any]]) -> str:
    """An assistant turn's ``tool_calls`` (OpenAI's shape) as the JSON the model writes for them."""
    out = []
    for call in calls:
        fn = call.get("function") or {}
        raw = fn.get("arguments") or "{}"
        try:
            arguments: Any = json.loads(raw)
        except (TypeError, ValueError):
            arguments = raw
        out.append({"name": fn.get("name", ""), "arguments": arguments})
    return json.dumps({"tool_calls": out}, ensure_ascii=False)


# ---------------------------------------------------------------- reading the answer


def parse(text: str) -> Answer:
    """The answer in the model's JSON. Text that is not (yet) whole JSON — an answer cut by
    ``max_tokens`` — gives the reply so far when it had begun one, else the raw text."""
    try:
        obj = json.loads(text)
    except ValueError:
        partial = ReplyStream()
        partial.feed(text)
        return Answer(content=partial.text if partial.replying else text)
    if isinstance(obj, dict) and isinstance(obj.get("tool_calls"), list):
        calls = tuple(ToolCall(new_call_id(), str(c.get("name", "")), json.dumps(c.get("arguments", {}),
                                                                                 ensure_ascii=False))
                      for c in obj["tool_calls"] if isinstance(c, dict))
        return Answer(tool_calls=calls)
    if isinstance(obj, dict) and "response" in obj:
        reply = obj["response"]
        return Answer(content=reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False))
    return Answer(content=text)


_REPLY_HEAD = re.compile(r'\{\s*"response"\s*:\s*"')
_HEAD_CHARS = 40  # a head longer than this that has not matched is not a reply


class ReplyStream:
    """The text of ``{"response": "..."}`` as it streams in, decoded, so a reply in words reaches a
    streaming client token by token even though the model writes JSON. Anything else (calls, a reply
    that is not a string) is left for :func:`parse` at the end."""

    def __init__(self) -> None:
        self._raw = ""
        self._pos = -1  # where the reply's string continues in _raw; -1: not found (yet)
        self._closed = False
        self.replying = False  # the answer is a reply in words
        self.undecided = True
        self.text = ""

    def feed(self, piece: str) -> str:
        """Add raw model text; returns the reply text it completes (maybe empty)."""
        self._raw += piece
        if self.undecided:
            head = _REPLY_HEAD.match(self._raw)
            if head is not None:
                self.undecided, self.replying, self._pos = False, True, head.end()
            elif '"tool_calls"' in self._raw or len(self._raw) > _HEAD_CHARS or \
                    not self._raw.lstrip().startswith("{") and self._raw.strip():
                self.undecided = False
        if not self.replying or self._closed:
            return ""
        out, self._pos, self._closed = _decode_string(self._raw, self._pos)
        self.text += out
        return out


_CALLS_HEAD = re.compile(r'\{\s*"tool_calls"\s*:\s*\[\s*')
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_NEXT_CALL = re.compile(r'\s*\}\s*(,|\])\s*')


class CallStream:
    """Calls as they stream in, in OpenAI's deltas: a call's id and name once its name is whole, then
    its ``arguments`` text piece by piece, as the model writes it (the grammar fixes the JSON's shape:
    ``{"tool_calls": [{"name": ..., "arguments": ...}, ...]}``, name first)."""

    def __init__(self) -> None:
        self._raw = ""
        self._pos = -1  # where reading continues; -1: the calls' head not seen (yet)
        self._args = -1  # inside a call's arguments: where they started; -1: between calls
        self._scan = _ValueScan()
        self.calls: list[ToolCall] = []  # as streamed: arguments grow
        self.done = False

    def feed(self, piece: str) -> list[dict[str, Any]]:
        """Add raw model text; returns the tool-call deltas it completes (maybe none)."""
        self._raw += piece
        out: list[dict[str, Any]] = []
        if self._pos < 0:
            head = _CALLS_HEAD.match(self._raw)
            if head is None:
                return out
            self._pos = head.end()
        while not self.done:
            if self._args < 0:
                call = _CALL_HEAD.match(self._raw, self._pos)
                if call is None:
                    break
                name = json.loads(f'"{call.group(1)}"')
                self.calls.append(ToolCall(new_call_id(), name, ""))
                out.append(self.calls[-1].openai(len(self.calls) - 1) | {"function": {"name": name, "arguments": ""}})
                self._args = self._pos = call.end()
                self._scan = _ValueScan()
            if not self._scan.started:  # whitespace before the arguments is not theirs
                while self._pos < len(self._raw) and self._raw[self._pos].isspace():
                    self._pos += 1
            end = self._scan.feed(self._raw, self._pos)
            fragment = self._raw[self._pos:end if end is not None else len(self._raw)]
            self._pos = end if end is not None else len(self._raw)
            if fragment:
                i = len(self.calls) - 1
                last = self.calls[i]
                self.calls[i] = ToolCall(last.id, last.name, last.arguments + fragment)
                out.append({"index": i, "function": {"arguments": fragment}})
            if end is None:
                break
            after = _NEXT_CALL.match(self._raw, end)
            if after is None:
                break  # wait for what closes the call
            self._args, self._pos = -1, after.end()
            self.done = after.group(1) == "]"
        return out


class _ValueScan:
    """Finds where one JSON value ends in text that arrives in pieces (strings and nesting tracked)."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.started = False

    def feed(self, raw: str, pos: int) -> int | None:
        """Scan ``raw`` from ``pos``; the index just past the value once it is whole, else None."""
        for i in range(pos, len(raw)):
            c = raw[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
                    if self.depth == 0:
                        return i + 1
                continue
            if not self.started and c.isspace():
                continue
            if self.started and self.depth == 0 and (c in ",}]" or c.isspace()):
                return i  # the end of a number, true, false or null
            self.started = True
            if c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return None


def _decode_string(raw: str, pos: int) -> tuple[str, int, bool]:
    """Decode a JSON string's body from ``pos`` as far as it is complete: (text, new pos, ended)."""
    out = []
    i, n = pos, len(raw)
    while i < n:
        c = raw[i]
        if c == '"':
            return "".join(out), i + 1, True
        if c != "\\":
            j = i
            while j < n and raw[j] not in '"\\':
                j += 1
            out.append(raw[i:j])
            i = j
            continue
        if i + 1 >= n:
            break
        if raw[i + 1] != "u":
            out.append(json.loads(f'"{raw[i:i + 2]}"'))
            i += 2
            continue
        if i + 6 > n:
            break
        code = int(raw[i + 2:i + 6], 16)
        if 0xD800 <= code < 0xDC00:  # a surrogate pair: decode both halves together
            if i + 12 > n:
                break
            out.append(json.loads(f'"{raw[i:i + 12]}"'))
            i += 12
        else:
            out.append(chr(code))
            i += 6
    return "".join(out), i, False

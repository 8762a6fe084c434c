"""Server-Sent Events: the one place that frames and reads them.

Every stream in rbee is a sequence of ``data: <json>`` events ending with ``data: [DONE]``;
comment lines (``: queued position=3``) may appear between them. Writers frame with :func:`frame`
(or :func:`frame_event` for the token path's typed events); readers use :func:`iter_messages`
(blocking chunks, ``requests``) or :func:`aiter_messages` (aiohttp), and the relay, which copies
bytes rather than parsing every token, asks :func:`is_done` / :func:`is_error` of whole blocks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from rbee.events import EngineEvent, Event, Prefilling, from_wire

DONE = "[DONE]"
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
Message = tuple[str, str]  # ("data", payload) or ("comment", text)


# ---------------------------------------------------------------- framing


def frame(data: Mapping[str, Any] | str) -> bytes:
    """One event as bytes on the wire."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def frame_event(event: EngineEvent) -> bytes:
    if isinstance(event, Prefilling):
        return frame_comment(event.comment())
    return frame(event.wire())


def frame_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


DONE_FRAME = frame(DONE)
# What a framed done or error event starts with: ``frame`` writes compact JSON, and the token path's
# events put their tag first (``rbee.events``), so the relay can tell them apart without parsing.
_DONE_START = frame({"done": True})[:-3]  # b'data: {"done":true'
_ERROR_START = b'data: {"error":'


def is_done(block: bytes) -> bool:
    """True for one framed block (``\\n\\n`` stripped or not) that is the done event."""
    return block.startswith(_DONE_START)


def is_error(block: bytes) -> bool:
    return block.startswith(_ERROR_START)


def is_comment(block: bytes) -> bool:
    return block.startswith(b":")


def is_terminator(block: bytes) -> bool:
    return block.startswith(DONE_FRAME[:-2])


def split_blocks(chunk: bytes) -> tuple[list[bytes], bytes]:
    """The whole blocks in ``chunk`` (each without its blank line) and the incomplete rest."""
    *blocks, rest = chunk.split(b"\n\n")
    return [b for b in blocks if b], rest


def block_data(block: bytes) -> str | None:
    """The data of one block from our own writers (one ``data:`` line), or None for a comment."""
    if block.startswith(b"data: "):
        return block[6:].decode()
    return None


class SSEWriter:
    """Writes events to an aiohttp StreamResponse (kept duck-typed: anything with ``write``)."""

    def __init__(self, response: Any) -> None:
        self._response = response

    async def send(self, data: Mapping[str, Any] | str) -> None:
        await self._response.write(frame(data))

    async def done(self) -> None:
        await self._response.write(DONE_FRAME)


# ---------------------------------------------------------------- reading


class _Reader:
    """Chunks in, messages out: the parsing both readers share."""

    def __init__(self) -> None:
        self._tail = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[Message]:
        *lines, self._tail = (self._tail + chunk).split(b"\n")
        return [msg for raw in lines if (msg := self._line(raw)) is not None]

    def close(self) -> list[Message]:
        """What the end of the stream completes: its last line, its last event."""
        out = self.feed(b"\n") if self._tail else []
        if self._data:
            out.append(("data", "\n".join(self._data)))
            self._data = []
        return out

    def _line(self, raw: bytes) -> Message | None:
        line = raw.rstrip(b"\r").decode("utf-8")
        if not line:
            if self._data:
                out, self._data = "\n".join(self._data), []
                return "data", out
        elif line.startswith(":"):
            return "comment", line[1:].strip()
        elif line.startswith("data:"):
            self._data.append(line[5:].removeprefix(" "))
        return None


def iter_messages(chunks: Iterable[bytes]) -> Iterator[Message]:
    """``("data", payload)`` for each event and ``("comment", text)`` for each comment line, from the
    raw chunks of a stream as they arrive (``requests``' ``iter_content(chunk_size=None)``)."""
    reader = _Reader()
    for chunk in chunks:
        yield from reader.feed(chunk)
    yield from reader.close()


async def aiter_messages(chunks: AsyncIterable[bytes]) -> AsyncIterator[Message]:
    """The async twin of :func:`iter_messages`: from aiohttp's ``resp.content`` (lines) or
    ``resp.content.iter_any()`` (chunks)."""
    reader = _Reader()
    async for chunk in chunks:
        for msg in reader.feed(chunk):
            yield msg
    for msg in reader.close():
        yield msg


async def aiter_data(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Only the data of each event (comments skipped), ``[DONE]`` included."""
    async for kind, data in aiter_messages(chunks):
        if kind == "data":
            yield data


def parse(data: str) -> dict[str, Any] | None:
    """The JSON object of one event, or None for the ``[DONE]`` terminator."""
    return None if data == DONE else json.loads(data)


def parse_event(data: str) -> Event | None:
    """The typed token-path event of one event's data, or None for ``[DONE]``."""
    obj = parse(data)
    return None if obj is None else from_wire(obj)

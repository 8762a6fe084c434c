"""Server-Sent Events: the one place that frames and parses them.

Every stream in rbee is a sequence of ``data: <json>`` events ending with ``data: [DONE]``;
comment lines (``: queued position=3``) may appear between them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

DONE = "[DONE]"
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def frame(data: Mapping[str, Any] | str) -> bytes:
    """One event as bytes on the wire."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def frame_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


DONE_FRAME = frame(DONE)


class SSEWriter:
    """Writes events to an aiohttp StreamResponse (kept duck-typed: anything with ``write``)."""

    def __init__(self, response: Any) -> None:
        self._response = response

    async def send(self, data: Mapping[str, Any] | str) -> None:
        await self._response.write(frame(data))

    async def comment(self, text: str) -> None:
        await self._response.write(frame_comment(text))

    async def done(self) -> None:
        await self._response.write(DONE_FRAME)


async def aiter_data(lines: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Yield the data of each event from an async iterator of lines (aiohttp ``resp.content``)."""
    buf: list[str] = []
    async for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if buf:
                yield "\n".join(buf)
                buf = []
        elif line.startswith("data:"):
            buf.append(line[5:].removeprefix(" "))
    if buf:
        yield "\n".join(buf)


def iter_messages(chunks: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """``("data", payload)`` for each event and ``("comment", text)`` for each comment line, from the
    raw chunks of a stream as they arrive (``requests``' ``iter_content(chunk_size=None)``)."""
    tail = b""
    data: list[str] = []
    for chunk in itertools.chain(chunks, [b"\n"]):  # the end of the stream ends its last line
        *lines, tail = (tail + chunk).split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8")
            if not line:
                if data:
                    yield "data", "\n".join(data)
                    data = []
            elif line.startswith(":"):
                yield "comment", line[1:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
    if data:
        yield "data", "\n".join(data)


def parse(data: str) -> dict[str, Any] | None:
    """The JSON object of one event, or None for the ``[DONE]`` terminator."""
    return None if data == DONE else json.loads(data)

"""What a sequence's client sees of its tokens: bytes decoded as UTF-8 as they complete, and stop
strings cut out before they (or any part of them) are sent."""

from __future__ import annotations

import codecs


def apply_stop(text: str, stops: list[str]) -> tuple[str, str, bool]:
    """Split ``text`` into (emit now, hold back, stopped).

    Text that could be the start of a stop string is held until it is decided, so a stop string
    never leaks to the client, not even in part. On a stop, everything from it on is dropped.
    """
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return (text[: len(text) - hold], text[len(text) - hold :], False) if hold else (text, "", False)


class TextStream:
    """Token pieces (bytes) in, client text out. A multi-byte character split across tokens comes
    out whole once its last byte arrives; text that may begin a stop string waits until decided."""

    __slots__ = ("_decoder", "_held", "_stops", "stopped")

    def __init__(self, stops: list[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self._stops = stops
        self.stopped = False

    def push(self, piece: bytes) -> str:
        """The text that may go to the client now (maybe empty). Sets ``stopped`` on a stop string."""
        text = self._decoder.decode(piece)
        if self._held:
            text, self._held = self._held + text, ""
        if self._stops:
            text, self._held, self.stopped = apply_stop(text, self._stops)
        return text

    def flush(self) -> str:
        """What is still held back, at the end of a generation that did not stop on a stop string."""
        tail, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return "" if self.stopped else tail

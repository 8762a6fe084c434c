"""Resumption: a stream whose worker dies or stalls after tokens reached the client goes on on another
worker of the model, from exactly where it was.

The queen asks the worker for each token event's ids (``token_ids``) and keeps the bytes it relayed;
only when a worker breaks are they read back, into the answer's token ids so far and the next event
index. The next worker decodes the prompt plus those ids (``resume_ids``, exact tokens, never
re-tokenised text) and numbers its events on from ``resume_index``: the client sees one stream with
no gap and no repeat, and at temperature 0 the very text an unbroken run gives. Answers held to a
grammar or asked for logprobs are not resumed (their state does not carry over); nor is a worker's
stream that carries no ids (a worker of an older contract)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rbee import sse
from rbee.deadline import Deadline
from rbee.protocol import InferenceRequest


def resumable(job: InferenceRequest, max_resumes: int) -> bool:
    return max_resumes > 0 and job.stream and not job.guided


@dataclass
class Resumption:
    """What a stream needs to move: the request as sent, the caller, what was relayed, where it moved."""

    body: dict[str, Any]
    job: InferenceRequest
    api_key: str
    deadline: Deadline | None = None  # the request's, which the move counts against too
    relayed: list[bytes] = field(default_factory=list)
    moves: list[dict[str, Any]] = field(default_factory=list)  # the done event's ``resumed``
    gone: set[str] = field(default_factory=set)  # workers it left
    at_index: int = 0  # where the move under way picks up

    def note(self, out: bytes) -> None:
        """Bytes relayed to the client (whole SSE blocks): kept, read only if the worker breaks."""
        self.relayed.append(out)

    def progress(self) -> tuple[list[int], int] | None:
        """The answer's token ids so far and the next event's index; None when they cannot be known."""
        ids: list[int] = []
        index = 0
        blocks, _ = sse.split_blocks(b"".join(self.relayed))
        for block in blocks:
            data = sse.block_data(block)
            if data is None or not data.startswith('{"token"'):
                continue
            event = json.loads(data)
            if event.get("ids") is None:
                return None
            ids.extend(event["ids"])
            index = int(event["index"]) + 1
        return ids, index

    def next_body(self) -> dict[str, Any] | None:
        """The request for the next worker, or None when this answer cannot be resumed."""
        progress = self.progress()
        if progress is None:
            return None
        ids, index = progress
        if len(ids) >= self.job.max_tokens:
            return None  # every token was sent; only the done event was lost
        body = {**self.body, "resume_ids": ids, "resume_index": index} if index else dict(self.body)
        self.at_index = index
        return body

    def moved(self, worker_id: str) -> None:
        self.moves.append({"worker_id": worker_id, "at_index": self.at_index})
        self.relayed = [b"".join(self.relayed)]

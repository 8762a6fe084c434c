"""What a broken stream's relayed bytes tell the next worker: the answer's token ids and next index."""

from __future__ import annotations

import pytest

from rbee import sse
from rbee.events import Prefilling, Token
from rbee.protocol import InferenceRequest
from rbee.queen.resume import Resumption, resumable


def plan(max_tokens: int = 50) -> Resumption:
    job = InferenceRequest(prompt="Once upon a time", max_tokens=max_tokens, temperature=0)
    return Resumption(job.model_dump(mode="json", exclude_none=True), job, "")


def test_the_ids_and_next_index_come_from_every_token_event_relayed_however_chunked():
    p = plan()
    p.note(sse.frame_event(Prefilling(512, 900)))
    p.note(sse.frame_event(Token("Once", 0, ids=(10,))) + sse.frame_event(Token(" upon", 1, ids=(11, 12))))
    p.note(sse.frame_event(Token(" a", 2, ids=(13,))))
    assert p.progress() == ([10, 11, 12, 13], 3)
    body = p.next_body()
    assert body is not None and body["resume_ids"] == [10, 11, 12, 13] and body["resume_index"] == 3
    assert body["prompt"] == "Once upon a time" and body["max_tokens"] == 50
    p.moved("w2")
    assert p.moves == [{"worker_id": "w2", "at_index": 3}]


def test_a_stream_without_ids_cannot_be_resumed():
    p = plan()
    p.note(sse.frame_event(Token("Once", 0, ids=(10,))) + sse.frame_event(Token(" upon", 1)))
    assert p.progress() is None and p.next_body() is None


def test_nothing_sent_yet_is_a_plain_retry():
    p = plan()
    p.note(sse.frame_event(Prefilling(64, 900)))
    body = p.next_body()
    assert body is not None and not body.get("resume_ids") and not body.get("resume_index")


def test_an_answer_whose_every_token_went_out_is_not_resumed():
    p = plan(max_tokens=2)
    p.note(sse.frame_event(Token("a", 0, ids=(1,))) + sse.frame_event(Token("b", 1, ids=(2,))))
    assert p.next_body() is None


@pytest.mark.parametrize("extra, expected", [({}, True), ({"stream": False}, False),
                                              ({"json_schema": {"type": "object"}}, False),
                                              ({"logprobs": 2}, False)])
def test_which_requests_may_move(extra, expected):
    job = InferenceRequest(prompt="x", **extra)
    assert resumable(job, 1) is expected
    assert resumable(job, 0) is False


def test_a_resumption_the_worker_cannot_carry_over_is_refused():
    with pytest.raises(ValueError, match="resume_ids"):
        InferenceRequest(prompt="x", resume_ids=[1, 2], resume_index=2, json_schema={"type": "object"})
    with pytest.raises(ValueError, match="resume_ids"):
        InferenceRequest(prompt="x", max_tokens=2, resume_ids=[1, 2], resume_index=2)

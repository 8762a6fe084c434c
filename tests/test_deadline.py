"""Request deadlines (rbee.deadline): parsing what clients send, the earliest winning, the hop header
shrinking, and the admission queue giving up at a request's deadline. Clocks are passed in."""

from __future__ import annotations

import asyncio
import io

import pytest

from rbee import deadline as dl
from rbee.errors import ErrorCode, RbeeError
from rbee.keeper import infer
from rbee.keeper.output import Output
from rbee.protocol import InferenceRequest, WorkerRegistration
from rbee.queen.admission import AdmissionQueue
from rbee.queen.openai_types import ChatCompletionRequest
from rbee.queen.registry import Registry

WALL = 1_780_000_000.0  # epoch seconds: 2026-05-28


def bad(headers: dict[str, str], **kw) -> RbeeError:
    with pytest.raises(RbeeError) as info:
        dl.of_request(headers, now=0.0, now_wall=WALL, **kw)
    assert info.value.code == ErrorCode.INVALID_REQUEST and info.value.status == 400
    return info.value


def test_epoch_milliseconds_and_rfc3339_name_the_same_moment():
    ms = dl.of_request({dl.DEADLINE_HEADER: str(int((WALL + 2.5) * 1000))}, now=100.0, now_wall=WALL)
    iso = dl.of_request({dl.DEADLINE_HEADER: "2026-05-28T20:26:42.500Z"}, now=100.0, now_wall=WALL)
    assert ms is not None and iso is not None
    assert ms.at == pytest.approx(102.5) and ms.since == 100.0
    assert iso.at == pytest.approx(102.5)
    offset = dl.of_request({dl.DEADLINE_HEADER: "2026-05-28T22:26:42.5+02:00"}, now=100.0, now_wall=WALL)
    assert offset is not None and offset.at == pytest.approx(iso.at)


def test_a_deadline_in_the_past_parses_as_expired_not_as_a_bad_request():
    past = dl.of_request({dl.DEADLINE_HEADER: str(int((WALL - 60) * 1000))}, now=5.0, now_wall=WALL)
    assert past is not None and past.expired(5.0) and past.remaining(5.0) == pytest.approx(-60.0)


@pytest.mark.parametrize("value, says", [
    ("soon", "RFC 3339"),
    ("2026-05-28T20:26:42", "no zone"),
    (str(int(WALL)), "milliseconds"),  # epoch seconds sent by mistake
    ("-5", "RFC 3339"),
    ("", "RFC 3339"),
])
def test_a_bad_deadline_header_is_a_400_naming_the_header_and_the_fix(value: str, says: str):
    err = bad({dl.DEADLINE_HEADER: value})
    assert err.details == {"field": dl.DEADLINE_HEADER} and dl.DEADLINE_HEADER in err.message
    assert says in err.message, err.message


@pytest.mark.parametrize("value", ["1.5", "-1", "ten", ""])
def test_a_bad_hop_header_is_a_400_naming_it(value: str):
    err = bad({dl.TIMEOUT_HEADER: value})
    assert err.details == {"field": dl.TIMEOUT_HEADER}


def test_the_earliest_of_header_body_timeout_and_default_wins():
    headers = {dl.DEADLINE_HEADER: str(int((WALL + 9) * 1000)), dl.TIMEOUT_HEADER: "7000"}
    assert dl.of_request(headers, 5.0, 3.0, now=0.0, now_wall=WALL).at == pytest.approx(3.0)
    assert dl.of_request(headers, 5.0, None, now=0.0, now_wall=WALL).at == pytest.approx(5.0)
    assert dl.of_request(headers, None, 0.0, now=0.0, now_wall=WALL).at == pytest.approx(7.0)
    assert dl.of_request({}, None, 0.0, now=0.0) is None  # --default-timeout 0: off
    assert dl.of_request({}, None, 2.0, now=1.0).at == pytest.approx(3.0)


def test_the_hop_header_carries_what_is_left_rounded_down_so_it_only_shrinks():
    d = dl.Deadline.within(2.0, now=10.0)
    assert d.header(now=10.0004) == {dl.TIMEOUT_HEADER: "1999"}
    assert d.header(now=13.0) == {dl.TIMEOUT_HEADER: "0"}  # past: zero, never negative
    # The next part reads it: its deadline is no later than ours was when we sent it.
    there = dl.of_request(d.header(now=10.5), now=50.0)
    assert there is not None and there.remaining(50.0) <= d.remaining(10.5)


def test_exceeded_is_a_504_saying_where_how_long_and_what_next():
    err = dl.Deadline(at=12.0, since=10.0).exceeded("in the queue", "Add workers.", now=12.25)
    assert err.code == ErrorCode.DEADLINE_EXCEEDED and err.status == 504 and err.retry_after is None
    assert err.details == {"stage": "in the queue", "waited_ms": 2250, "budget_ms": 2000}
    assert "after 2.2 s" in err.message and err.message.endswith("Add workers.")


def test_timeout_in_the_body_is_bounded_on_rbees_route_and_on_openais():
    assert InferenceRequest(prompt="x", timeout=1.5).timeout == 1.5
    assert ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], timeout=2).timeout == 2
    for value in (0, -1, dl.MAX_TIMEOUT_S + 1):
        with pytest.raises(ValueError, match="timeout"):
            InferenceRequest(prompt="x", timeout=value)


def test_a_waiter_whose_deadline_comes_before_the_queue_timeout_is_refused_with_deadline_exceeded():
    async def scenario():
        registry = Registry()
        registry.register(WorkerRegistration(worker_id="w1", url="http://127.0.0.1:9001", model_ref="m"))
        queue = AdmissionQueue(registry, max_size=4, timeout=30)
        held, _ = await queue.admit(None)
        deadline = dl.Deadline.within(0.05)
        with pytest.raises(RbeeError) as info:
            await asyncio.wait_for(queue.admit("m", deadline=deadline), 5)
        err = info.value
        assert err.code == ErrorCode.DEADLINE_EXCEEDED and err.status == 504, err
        assert err.details["stage"].startswith("in the queue") and err.details["waited_ms"] >= 50
        assert len(queue) == 0  # it left the line
        registry.release(held)
        assert registry.get("w1").slots_available == 1

    asyncio.run(scenario())


def test_an_answer_the_deadline_cut_is_not_complete_for_the_keeper(tmp_path, monkeypatch):
    monkeypatch.setenv("RBEE_STATE_DIR", str(tmp_path))
    outcome = infer.StreamOutcome(started=0.0, tokens=["Once"],
                                  done={"done": True, "total_tokens": 1, "finish_reason": "deadline"}, terminated=True)
    err = io.StringIO()
    code = infer.report(outcome, infer.InferOptions(prompt="hi", queen_url="http://q"), Output(io.StringIO(), err),
                        io.StringIO())
    assert not outcome.complete and code == 1 and "deadline passed" in err.getvalue(), err.getvalue()

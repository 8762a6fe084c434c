"""rbee-keeper infer's pure parts: the request body, reading a stream, outcomes and exit codes, retries."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import requests

from rbee.keeper import infer
from rbee.keeper.failures import EXIT_CANCELLED, EXIT_ERROR, EXIT_OK, KeeperError
from rbee.keeper.infer import InferOptions, StreamOutcome
from rbee.keeper.output import Output


def sse(*events: object, done: bool = True) -> bytes:
    frames = [f"data: {json.dumps(e)}\n\n" for e in events] + (["data: [DONE]\n\n"] if done else [])
    return "".join(frames).encode()


def response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r.raw = io.BytesIO(body)
    r.headers.update({"Content-Type": "text/event-stream", "X-Rbee-Worker": "w1", "X-Request-Id": "req-1",
                      **(headers or {})})
    return r


def error_response(code: str, status: int = 503) -> requests.Response:
    return response(json.dumps({"error": {"code": code, "message": f"{code} here", "details": {}}}).encode(),
                    status, {"Content-Type": "application/json"})


def opts(**kw) -> InferOptions:
    return InferOptions(prompt="hi", queen_url="http://q", **kw)


def test_body_is_a_chat_turn_carrying_only_what_was_given():
    assert infer.request_body(opts()) == {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100,
                                          "temperature": 0.7, "stream": True}
    body = infer.request_body(opts(system="Be brief.", seed=7, model="m"))
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert body["seed"] == 7 and body["model"] == "m" and "prompt" not in body


def test_raw_sends_plain_text_to_continue():
    body = infer.request_body(opts(raw=True, system="Be brief."))
    assert body["prompt"] == "Be brief.\n\nhi" and "messages" not in body


TOKENS = [{"token": "Once", "index": 0}, {"token": " upon", "index": 1}]
DONE = {"done": True, "total_tokens": 2, "duration_ms": 10, "finish_reason": "length"}


def test_a_full_stream_prints_tokens_and_is_complete():
    stdout = io.StringIO()
    outcome = infer.read_answer(response(sse(*TOKENS, DONE)), 0.0, False, stdout)
    assert stdout.getvalue() == "Once upon"
    assert outcome.complete and outcome.terminated and outcome.worker == "w1" and outcome.request_id == "req-1"


def test_json_mode_prints_each_event_as_a_line():
    stdout = io.StringIO()
    infer.read_answer(response(sse(*TOKENS, DONE)), 0.0, True, stdout)
    assert [json.loads(line) for line in stdout.getvalue().splitlines()] == [*TOKENS, DONE]


def test_error_event_and_cut_connection_are_not_complete():
    errored = infer.read_answer(response(sse(TOKENS[0], {"error": {"code": "WORKER_UNAVAILABLE", "message": "x"}})),
                                0.0, False, io.StringIO())
    assert not errored.complete and errored.error["code"] == "WORKER_UNAVAILABLE"
    cut = infer.read_answer(response(sse(*TOKENS, done=False)), 0.0, False, io.StringIO())
    assert not cut.complete and cut.broken and cut.text == "Once upon"


def test_report_exit_codes_and_partial_file(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("RBEE_STATE_DIR", str(tmp_path))
    out = Output()
    ok = StreamOutcome(started=0.0, tokens=["a"], first_at=0.1, done=DONE, terminated=True)
    assert infer.report(ok, opts(), out, io.StringIO()) == EXIT_OK
    cancelled = StreamOutcome(started=0.0, tokens=["a"], cancelled=True)
    assert infer.report(cancelled, opts(), out, io.StringIO()) == EXIT_CANCELLED
    broken = StreamOutcome(started=0.0, tokens=["par", "tial"], broken="ChunkedEncodingError")
    assert infer.report(broken, opts(), out, io.StringIO()) == EXIT_ERROR
    saved = list((tmp_path / "partial").iterdir())
    assert len(saved) == 1 and saved[0].read_text() == "partial"
    assert str(saved[0]) in capsys.readouterr().err


def test_stats_line():
    outcome = StreamOutcome(started=10.0, tokens=["a", "b", "c"], first_at=10.1, last_at=10.3, done=DONE,
                            worker="w1")
    line = infer.format_stats(outcome, 10.3)
    assert "2 tokens" in line and "TTFT 100 ms" in line and "10.0 tok/s" in line and "worker w1" in line


class FakeQueen:
    base_url = "http://q"

    def __init__(self, answers: list[requests.Response]) -> None:
        self.answers = answers

    def open_stream(self, path: str, body: dict) -> requests.Response:
        return self.answers.pop(0)


def test_busy_fleet_is_retried_after_1_2_4_seconds_then_succeeds(capsys):
    slept: list[float] = []
    queen = FakeQueen([error_response("NO_IDLE_WORKERS")] * 3 + [response(sse(DONE))])
    r, _ = infer.open_with_retries(queen, {}, Output(), sleep=slept.append)  # type: ignore[arg-type]
    assert r.status_code == 200 and slept == [1.0, 2.0, 4.0]
    assert capsys.readouterr().err.count("retrying in") == 3


def test_busy_fleet_gives_up_with_a_next_step():
    queen = FakeQueen([error_response("NO_IDLE_WORKERS")] * 4)
    with pytest.raises(KeeperError) as err:
        infer.open_with_retries(queen, {}, Output(), sleep=lambda s: None)  # type: ignore[arg-type]
    assert err.value.code == "NO_IDLE_WORKERS" and "--slots" in err.value.next_step


def test_other_errors_are_not_retried():
    queen = FakeQueen([error_response("MODEL_NOT_FOUND", 404)])
    with pytest.raises(KeeperError) as err:
        infer.open_with_retries(queen, {}, Output(), sleep=lambda s: pytest.fail("slept"))  # type: ignore[arg-type]
    assert err.value.code == "MODEL_NOT_FOUND" and "models download" in err.value.next_step


def test_a_remote_queen_that_does_not_answer_is_an_error_not_an_autostart():
    with pytest.raises(KeeperError, match="not on this machine"):
        infer.run(InferOptions(prompt="hi", queen_url="http://192.0.2.1:8080"), Output())


def test_keep_prefers_the_port_the_user_aimed_at():
    assert infer._loopback_port("http://127.0.0.1:28080") == 28080
    assert infer._loopback_port("http://example.com:28080") is None


def test_queue_and_provisioning_comments_become_a_few_notes_and_tokens_still_print():
    notes: list[str] = []
    comments = b"".join(
        f": provisioning model=hf:org/m:m.gguf elapsed_s={s}\n\n".encode() for s in range(32)
    ) + b": queued position=2\n\n: queued position=2\n\n: queued position=1\n\n"
    stdout = io.StringIO()
    outcome = infer.read_answer(response(comments + sse(*TOKENS, DONE)), 0.0, False, stdout,
                                infer.WaitNotes(notes.append))
    assert outcome.complete and stdout.getvalue() == "Once upon"
    provisioning = [n for n in notes if "getting it ready" in n]
    assert [n.rsplit("— ", 1)[1] for n in provisioning] == ["0 s so far", "15 s so far", "30 s so far"]
    assert all("hf:org/m:m.gguf" in n for n in provisioning)
    assert [n for n in notes if "waiting in line" in n] == [
        "rbee-keeper: every worker is busy; waiting in line (position 2)",
        "rbee-keeper: every worker is busy; waiting in line (position 1)",
    ]

"""rbee.sse: framing, and reading events and comments back whatever the chunk boundaries."""

from __future__ import annotations

from rbee.sse import DONE_FRAME, frame, frame_comment, iter_messages, parse


def test_events_and_comments_survive_any_chunking():
    wire = (frame_comment("queued position=2") + frame({"token": "héllo\nthere", "index": 0})
            + b"data: a\r\ndata: b\r\n\r\n" + frame_comment("provisioning model=m elapsed_s=1") + DONE_FRAME)
    expected = [("comment", "queued position=2"), ("data", '{"token":"héllo\\nthere","index":0}'),
                ("data", "a\nb"), ("comment", "provisioning model=m elapsed_s=1"), ("data", "[DONE]")]
    for size in (1, 2, 3, 7, len(wire)):
        chunks = [wire[i:i + size] for i in range(0, len(wire), size)]  # splits multi-byte characters too
        assert list(iter_messages(chunks)) == expected, size
    assert parse(expected[1][1]) == {"token": "héllo\nthere", "index": 0}
    assert parse("[DONE]") is None


def test_an_event_without_its_blank_line_at_the_end_still_counts():
    assert list(iter_messages([b"data: x"])) == [("data", "x")]
    assert list(iter_messages([])) == []

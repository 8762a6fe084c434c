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


def test_the_async_reader_reads_what_the_blocking_one_reads():
    import asyncio

    from rbee.sse import aiter_messages

    wire = frame_comment("queued position=1") + frame({"token": "a", "index": 0}) + b"data: x\r\n\r\n" + DONE_FRAME

    async def chunks(size):
        for i in range(0, len(wire), size):
            yield wire[i:i + size]

    async def read(size):
        return [m async for m in aiter_messages(chunks(size))]

    for size in (1, 5, len(wire)):
        assert asyncio.run(read(size)) == list(iter_messages([wire])), size


def test_the_relay_predicates_know_the_framed_events_and_nothing_else():
    from rbee.events import Done, Failed, Token
    from rbee.sse import frame_event, is_done, is_error, is_terminator, split_blocks

    done = frame_event(Done(3, 10, "length", prompt_tokens=4))
    failed = frame_event(Failed("INTERNAL", "boom"))
    token = frame_event(Token('"done":true', 0))  # a token whose text looks like the marker
    blocks, rest = split_blocks(token + done + failed + DONE_FRAME + b"data: {\"tok")
    assert rest == b'data: {"tok' and len(blocks) == 4
    assert [is_done(b) for b in blocks] == [False, True, False, False]
    assert [is_error(b) for b in blocks] == [False, False, True, False]
    assert [is_terminator(b) for b in blocks] == [False, False, False, True]


def test_typed_events_round_trip_through_the_wire():
    from rbee.events import Done, Failed, Token
    from rbee.sse import frame_event, iter_messages, parse_event

    events = [Token("héllo", 0), Done(1, 5, "stop", prompt_tokens=3, cached_tokens=2, worker_id="w"),
              Failed("WORKER_UNAVAILABLE", "gone", {"worker_id": "w"})]
    wire = b"".join(map(frame_event, events)) + DONE_FRAME
    back = [parse_event(data) for _, data in iter_messages([wire])]
    assert back == [*events, None]

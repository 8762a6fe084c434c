"""What the client sees of a sequence's tokens: whole characters, and stop strings never, not even in part."""

from rbee.worker.textstream import TextStream, apply_stop


def test_stop_found_cuts_before_it():
    assert apply_stop("Hello END there", ["END"]) == ("Hello ", "", True)


def test_possible_prefix_is_held_back():
    assert apply_stop("Hello EN", ["END"]) == ("Hello ", "EN", False)


def test_no_stop_passes_through():
    assert apply_stop("Hello", ["END"]) == ("Hello", "", False)


def test_earliest_of_several_stops_wins():
    assert apply_stop("a\nb###", ["###", "\n"]) == ("a", "", True)


# ---------------------------------------------------------------- TextStream: bytes in, client text out


def test_a_character_split_across_tokens_comes_out_whole():
    s = TextStream([])
    snowman = "☃".encode()
    assert s.push(b"a" + snowman[:1]) == "a"
    assert s.push(snowman[1:2]) == ""
    assert s.push(snowman[2:]) == "☃"


def test_a_stop_string_split_across_tokens_never_leaks():
    s = TextStream(["9,"])
    out = [s.push(p) for p in (b" 7", b",", b" ", b"8", b",", b" ", b"9")]
    assert "".join(out) == " 7, 8, " and not s.stopped
    assert s.push(b",") == "" and s.stopped
    assert s.flush() == ""


def test_held_text_that_turned_out_not_to_stop_is_sent():
    s = TextStream(["END"])
    assert s.push(b"the EN") == "the "
    assert s.push(b"D") == "" and s.stopped
    s = TextStream(["END"])
    assert s.push(b"the EN") == "the "
    assert s.push(b"d") == "ENd"
    assert s.push(b" E") == " "
    assert s.flush() == "E"

"""Stop strings never leak to the client, not even in part."""

from rbee.worker.engine import _apply_stop


def test_stop_found_cuts_before_it():
    assert _apply_stop("Hello END there", ["END"]) == ("Hello ", "", True)


def test_possible_prefix_is_held_back():
    assert _apply_stop("Hello EN", ["END"]) == ("Hello ", "EN", False)


def test_no_stop_passes_through():
    assert _apply_stop("Hello", ["END"]) == ("Hello", "", False)


def test_earliest_of_several_stops_wins():
    assert _apply_stop("a\nb###", ["###", "\n"]) == ("a", "", True)

"""The test bed's pure parts: subnet choice, connection outcomes, the held-open session, host names.

The namespaces themselves need root and are proven by features/testbed.feature."""

from __future__ import annotations

import ipaddress
import random
import socket
import sys
from pathlib import Path

import pytest

from rbee.testing.hosts import SUBNETS, Reach, SshSession, TestBed, TestBedError, pick_subnet, reach


def test_a_subnet_is_a_24_of_the_test_range_that_nothing_here_overlaps():
    taken = ["10.231.0.0/17", "10.231.200.7", "10.0.0.0/9", "127.0.0.0/8"]
    for seed in range(50):
        subnet = pick_subnet(taken, random.Random(seed))
        assert subnet.prefixlen == 24 and subnet.subnet_of(SUBNETS)
        assert not any(subnet.overlaps(ipaddress.ip_network(t, strict=False)) for t in taken), subnet


def test_no_subnet_left_is_said_with_the_way_to_find_stale_beds():
    with pytest.raises(TestBedError, match="hosts list"):
        pick_subnet(["10.231.0.0/16"], random.Random(0))


def test_a_listening_port_is_open_and_a_closed_one_refused():
    with socket.create_server(("127.0.0.1", 0)) as server:
        assert reach("127.0.0.1", server.getsockname()[1], 2) is Reach.OPEN
        port = server.getsockname()[1]
    assert reach("127.0.0.1", port, 2) is Reach.REFUSED


def test_a_session_echoes_lines_and_reports_silence_as_none():
    echo = SshSession([sys.executable, "-u", "-c", "import sys\nfor line in sys.stdin: print(line, end='')"])
    try:
        echo.send("hello")
        assert echo.read_line(10) == "hello"
        assert echo.read_line(0.2) is None and echo.alive()
    finally:
        echo.close()


def test_a_session_that_ends_says_so_with_its_exit_code_and_error():
    gone = SshSession([sys.executable, "-c", "import sys; sys.stderr.write('reset'); sys.exit(255)"])
    assert gone.ended_within(10) == 255 and gone.error() == "reset"
    assert gone.read_line(1) is None
    gone.close()


@pytest.mark.parametrize("names", [[], ["alpha", "alpha"], ["Alpha"], ["a b"], ["-x"]])
def test_host_names_are_distinct_lower_case_words(names):
    with pytest.raises(TestBedError, match="host names"):
        TestBed(Path("/tmp"), names)

"""The address a hive advertises: never a wildcard, the route to the queen when listening on all."""

from rbee.hive.address import advertised_host, http_url, local_host, route_address


def test_a_specific_listen_address_is_advertised_as_is():
    assert advertised_host("10.1.2.3", None, ["http://127.0.0.1:8080"]) == "10.1.2.3"


def test_advertise_host_wins():
    assert advertised_host("0.0.0.0", "hive-7.lan", ["http://127.0.0.1:8080"]) == "hive-7.lan"


def test_a_wildcard_advertises_the_address_on_the_route_to_the_queen():
    assert route_address("http://127.0.0.1:8080") == "127.0.0.1"
    assert advertised_host("0.0.0.0", None, ["http://127.0.0.1:8080"]) == "127.0.0.1"
    assert advertised_host("::", None, ["http://no-such-host.invalid:1", "http://127.0.0.1:8080"]) == "127.0.0.1"


def test_local_callers_and_urls():
    assert local_host("0.0.0.0") == "127.0.0.1" and local_host("10.0.0.2") == "10.0.0.2"
    assert http_url("fe80::1", 9200) == "http://[fe80::1]:9200" and http_url("h", 1) == "http://h:1"

"""Steps for slow and idle clients: real servers, raw sockets from other loopback addresses, timed."""

from __future__ import annotations

import json
import socket
import statistics
import time
from urllib.parse import urlsplit

import parse
from behave import given, register_type, then, when

from rbee.testing.clients import wait_until
from rbee.testing.slow_clients import SlowClients, open_file_limit

HALF_A_REQUEST_LINE = b"POST /v1/inference HT"
# A whole head, then 20 of the 60 bytes of body it announces.
HEAD_AND_HALF_A_BODY = (b"POST /v1/inference HTTP/1.1\r\nHost: rbee\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 60\r\n\r\n" + b'{"prompt": "Hello", "')


@parse.with_pattern(r"queen-rbee|rbee-hive|llm-worker-rbee")
def _part(text: str) -> str:
    return text


register_type(ListeningPart=_part)


def _target(context, url: str) -> None:
    parts = urlsplit(url)
    context.listen_at = (parts.hostname, parts.port)


@given("a queen with a {secs:d} second header deadline, started under a soft limit of {limit:d} open files")
def step_queen_low_limit(context, secs, limit):
    with open_file_limit(limit):  # the queen inherits it, as from a login shell's `ulimit -n 1024`
        context.cluster.start_queen("--header-timeout", str(secs))
    _target(context, context.cluster.queen_url)


@given("{part:ListeningPart} started with --{flag} {value}")
def step_part_with_flag(context, part, flag, value):
    cluster, extra = context.cluster, (f"--{flag}", value)
    if part == "queen-rbee":
        _target(context, cluster.start_queen(*extra).base_url)
    elif part == "rbee-hive":
        cluster.start_queen()
        _target(context, cluster.start_hive(*extra).base_url)
    elif part == "llm-worker-rbee":
        _target(context, cluster.start_worker(worker_id="w", extra=extra).url)
    else:
        raise AssertionError(f"unknown part {part!r}")


def _slow_clients(context, source: str) -> SlowClients:
    host, port = context.listen_at
    clients = SlowClients(source, host, port)
    context.add_cleanup(clients.close)
    return clients


@when("a client at {source} opens {count:d} connections to {whom} and sends half a request line on each")
def step_open_slow(context, source, count, whom):
    context.slow = _slow_clients(context, source)
    context.slow.open(count, HALF_A_REQUEST_LINE, timeout=60 * context.cluster.k)


@when("a client at {source} opens {count:d} connections to {whom} and sends a whole head but half its body on each")
def step_open_slow_body(context, source, count, whom):
    context.slow = _slow_clients(context, source)
    context.slow.open(count, HEAD_AND_HALF_A_BODY, timeout=60 * context.cluster.k)


@then("the queen's log says it raised its open-file limit from {limit:d}")
def step_log_raised(context, limit):
    log = context.cluster.queen_process.log_path
    wait_until(lambda: f"open-file limit raised from {limit} to" in log.read_text(), 10 * context.cluster.k,
               what=f"the queen's log saying it raised its open-file limit from {limit}")
    pid = context.cluster.queen_process.pid
    with open(f"/proc/{pid}/limits") as limits:
        line = next(x for x in limits if x.startswith("Max open files"))
    assert int(line.split()[3]) > len(context.slow.sockets) + 100, line


@then("while all {count:d} are open, a client at 127.0.0.1 gets the queen's health and a real answer")
def step_normal_client(context, count):
    queen = context.cluster.queen
    started = time.monotonic()
    assert queen.get("/health", timeout=10).status_code == 200
    health_s = time.monotonic() - started
    result = queen.infer({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})
    assert result.status == 200 and result.done is not None and result.error is None, (result.status, result.error)
    assert result.tokens, "no tokens"
    open_now = context.slow.still_open()
    print(f"normal client: /health in {health_s:.3f}s, answer in {time.monotonic() - started:.1f}s; "
          f"{open_now} of {count} slow connections still open")
    assert open_now == count, f"only {open_now} of {count} slow connections were still open"


@then('every slow connection gets 408 "{code:Q}" and is closed {low:g} to {high:g} seconds after it was sent')
@then('every slow connection gets 408 "{code:Q}" naming --{flag} and is closed {low:g} to {high:g} seconds '
      'after it was sent')
def step_all_cut(context, code, low, high, flag="header-timeout"):
    cuts = context.slow.wait_cut(timeout=high + 5)
    times = sorted(c.after for c in cuts)
    print(f"{len(cuts)} slow connections cut after {times[0]:.2f}s (first), {statistics.median(times):.2f}s "
          f"(median), {times[-1]:.2f}s (last)")
    wrong = [c.first_bytes[:120] for c in cuts if not c.first_bytes.startswith(b"HTTP/1.1 408 ")]
    assert not wrong, f"{len(wrong)} not answered 408, e.g. {wrong[0]!r}"
    body = json.loads(cuts[0].first_bytes.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == code and f"--{flag}" in body["error"]["message"], body
    assert low <= times[0] and times[-1] <= high, f"cut between {times[0]:.2f}s and {times[-1]:.2f}s"


def _request(source: str, host: str, port: int, path: str = "/health") -> tuple[socket.socket, bytes]:
    """One GET from ``source`` on a kept-alive connection: the socket and the answer's head and body."""
    sock = socket.create_connection((host, port), timeout=10, source_address=(source, 0))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return sock, answer


def _length(answer: bytes) -> int:
    head = answer.split(b"\r\n\r\n", 1)[0].decode(errors="replace").lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":", 1)[1])
    return 0


@then('a 5th connection from {source} is answered 503 "{code:Q}" with a Retry-After header')
def step_over_cap(context, source, code):
    sock, answer = _request(source, *context.listen_at)
    sock.close()
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 "), answer[:300]
    assert b"retry-after:" in head.lower(), head
    error = json.loads(body)["error"]
    assert error["code"] == code and "--max-conns-per-client" in error["message"], error


@then("a client at 127.0.0.1 still gets the queen's health")
def step_health_ok(context):
    assert context.cluster.queen.get("/health", timeout=10).status_code == 200


@then("once the {count:d} are closed, a new connection from {source} is served")
def step_served_again(context, count, source):
    context.slow.close()

    def served() -> bool:
        sock, answer = _request(source, *context.listen_at)
        sock.close()
        return answer.startswith(b"HTTP/1.1 200 ")

    wait_until(served, 10 * context.cluster.k, what=f"a connection from {source} served after the others closed")


@when("a client asks for the queen's health on a kept-alive connection and then stays silent")
def step_keepalive_idle(context):
    sock, answer = _request("127.0.0.1", *context.listen_at)
    context.add_cleanup(sock.close)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    context.idle = (sock, time.monotonic())


@then("the queen closes that connection {low:g} to {high:g} seconds after its answer")
def step_idle_closed(context, low, high):
    sock, since = context.idle
    sock.settimeout(high + 5)
    assert sock.recv(4096) == b"", "the queen wrote to an idle connection instead of closing it"
    after = time.monotonic() - since
    print(f"idle keep-alive connection closed after {after:.2f}s")
    assert low <= after <= high, f"closed after {after:.2f}s"

"""Generated requests against a running queen: every answer is a success or a 4xx in the one envelope.

A real ``queen-rbee`` process (with an API key) fronts a tiny fake worker that answers the worker
protocol with a canned stream, so requests that are valid get all the way through. After every
example the queen must still serve ``/health``, and a refused request must not have changed the
registry. Bounded: ~200 examples, each request with a timeout, so it can fail but never hang.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rbee.ports import free_port
from rbee.process import ServiceProcess

KEY = "sk-fuzz-key-0123456789"
FAKE_ID = "fake-worker"
FAKE_MODEL = "fake-model"
TIMEOUT = 15


# ---------------------------------------------------------------- a worker that answers instantly


class _FakeWorker(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection; the body ends when we close

    def log_message(self, *args: Any) -> None:  # keep pytest's output clean
        pass

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/ready":
            self._json(200, {"ready": True, "state": "idle", "model_loaded": True, "slots_total": 64,
                             "slots_available": 64})
        else:
            self._json(200, {"status": "ok", "state": "idle"})

    def do_DELETE(self) -> None:
        self.send_response(204)
        self.end_headers()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path != "/v1/inference":
            self._json(202, {"state": "draining"})
            return
        done = {"done": True, "total_tokens": 2, "duration_ms": 1, "finish_reason": "length", "prompt_tokens": 3}
        if not body.get("stream", True):
            self._json(200, {"text": "Hi there", **{k: v for k, v in done.items() if k != "done"}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for item in ({"token": "Hi", "index": 0}, {"token": " there", "index": 1}, done):
            self.wfile.write(f"data: {json.dumps(item)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture(scope="module")
def fake_worker() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeWorker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def queen(tmp_path_factory: pytest.TempPathFactory, fake_worker: str) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("fuzz") / "queen.log"
    proc = ServiceProcess("queen", [sys.executable, "-m", "rbee.queen", "--port", str(port), "--api-key", KEY],
                          log, f"{url}/health")
    try:
        proc.start().wait_ready(30)
        _ensure_fake(url, fake_worker)
        yield url
    finally:
        proc.stop(grace=10)
    assert proc.proc is not None and proc.proc.returncode is not None


# ---------------------------------------------------------------- the registry before and after


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _workers(url: str) -> set[tuple]:
    r = requests.get(f"{url}/v2/workers/list", headers=_auth(), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return {(w["worker_id"], w["url"], w["model_ref"], w["slots_total"]) for w in r.json()["workers"]}


def _ensure_fake(url: str, fake: str) -> None:
    """Back to one idle fake worker, whatever a successful example did to the registry."""
    for worker_id, *_ in _workers(url):
        if worker_id != FAKE_ID:
            requests.delete(f"{url}/v2/workers/{worker_id}", headers=_auth(), timeout=TIMEOUT)
    reg = {"worker_id": FAKE_ID, "url": fake, "model_ref": FAKE_MODEL, "slots_total": 64}
    requests.delete(f"{url}/v2/workers/{FAKE_ID}", headers=_auth(), timeout=TIMEOUT)
    r = requests.post(f"{url}/v2/workers/register", json=reg, headers=_auth(), timeout=TIMEOUT)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- what we throw

ROUTES = [
    ("GET", "/health"), ("GET", "/metrics"), ("GET", "/v1/models"), ("GET", "/v1/models/{id}"),
    *[("POST", "/v1/inference"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")] * 3,
    ("POST", "/v2/workers/register"), ("GET", "/v2/workers/list"), ("PATCH", "/v2/workers/{id}"),
    ("POST", "/v2/workers/{id}/heartbeat"), ("DELETE", "/v2/workers/{id}"), ("POST", "/v2/workers/shutdown"),
    ("GET", "/v2/workers/health"),
]
FIELDS = ["prompt", "messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
          "min_p", "seed", "stop", "stream", "stream_options", "n", "logprobs", "echo", "worker_id", "url",
          "model_ref", "backend", "device", "slots_total", "state", "slots_available", "role", "content"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["", "user", "idle", "draining", FAKE_MODEL, FAKE_ID, "smollm2-135m-instruct",
                     "http://127.0.0.1:1", "../../etc/passwd", "\x00", "a" * 300]),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "user", "system", "assistant", "bad", 3]),
                                           "content": st.one_of(st.text(max_size=20), json_values)}), max_size=3)
# Bodies that are right or nearly so reach through validation to the worker; the others test the parser.
plausible = st.fixed_dictionaries(
    {"model": st.sampled_from([FAKE_MODEL, FAKE_MODEL, FAKE_MODEL, "nope"])},
    optional={
        "messages": st.just([{"role": "user", "content": "Hi"}]) | messages,
        "prompt": st.text(min_size=1, max_size=20) | json_values,
        "max_tokens": st.integers(-5, 40000), "max_completion_tokens": st.integers(-5, 40000),
        "temperature": st.floats(-1, 3), "top_p": st.floats(-0.5, 1.5), "seed": st.integers(-1, 2**33),
        "stream": st.booleans() | json_values, "stream_options": st.fixed_dictionaries(
            {"include_usage": st.booleans()}) | json_values,
        "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=10), "n": st.integers(0, 3),
        "user": st.text(max_size=10), "unknown_field": json_values,
    },
)
near_valid = plausible | st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)
valid_options = {
    "max_tokens": st.integers(1, 64), "temperature": st.floats(0, 2), "top_p": st.floats(0, 1),
    "seed": st.integers(0, 2**32 - 1), "stream": st.booleans(),
    "stop": st.lists(st.text(min_size=1, max_size=5), max_size=4),
}
VALID = {  # bodies each generating route must accept
    "/v1/inference": st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=30)}, optional=valid_options),
    "/v1/completions": st.fixed_dictionaries(
        {"model": st.just(FAKE_MODEL), "prompt": st.text(min_size=1, max_size=30)},
        optional={**valid_options, "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()})}),
    "/v1/chat/completions": st.fixed_dictionaries(
        {"model": st.just(FAKE_MODEL), "messages": st.lists(st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "assistant", "developer"]),
             "content": st.text(max_size=30)}), min_size=1, max_size=3)},
        optional={**valid_options, "max_completion_tokens": st.integers(1, 64), "n": st.just(1),
                  "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
                  "frequency_penalty": st.floats(-2, 2), "user": st.text(max_size=10)}),
}
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b"{", b'{"prompt": "x",}', b"[1,2]", b"null", b'"text"', b"\xff\xfe", b"{" * 5000,
                     b'{"prompt":"' + b"x" * (1024 * 1024 + 10) + b'"}']),
)
ids = st.one_of(st.sampled_from([FAKE_ID, "nobody", "a" * 65, "..", "%2e%2e", "x%00y", "w/z"]),
                st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="/?#%"),
                        min_size=1, max_size=70))
auth_headers = st.sampled_from([_auth()] * 5 + [{}, _auth("wrong"), {"Authorization": "Basic xyz"}])
request_ids = st.none() | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80).map(str.strip)


@st.composite
def calls(draw: st.DrawFn) -> dict[str, Any]:
    method, path = draw(st.sampled_from(ROUTES))
    expect_success = False
    path = path.replace("{id}", draw(ids))
    headers = dict(draw(auth_headers))
    rid = draw(request_ids)
    if rid is not None:
        headers["X-Request-Id"] = rid
    if path in VALID and draw(st.booleans()):
        data = json.dumps(draw(VALID[path])).encode()
        expect_success = headers.get("Authorization") == f"Bearer {KEY}"
    elif draw(st.integers(0, 2)):
        data = json.dumps(draw(near_valid)).encode()
    elif draw(st.booleans()):
        data = json.dumps(draw(json_values), allow_nan=True).encode()
    else:
        data = draw(raw_bodies)
    headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain", "application/x-www-form"]))
    return {"method": method, "path": path, "headers": headers, "data": data if method != "GET" else None,
            "expect_success": expect_success}


def _check_answer(r: requests.Response, call: dict[str, Any]) -> None:
    where = f"{call['method']} {call['path']} -> {r.status_code}"
    assert r.status_code < 500, f"{where}: {r.text[:500]}"
    assert not call["expect_success"] or r.status_code == 200, f"{where}: a valid request was refused: {r.text}"
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"}, f"{where}: {body}"
        assert {"code", "message", "details"} <= set(body["error"]), f"{where}: {body}"
        assert body["error"]["code"].isupper() and body["error"]["message"], f"{where}: {body}"
        return
    if r.headers.get("Content-Type", "").startswith("text/event-stream"):
        lines = [ln for ln in r.iter_lines(decode_unicode=True) if ln.startswith("data: ")]
        assert lines and lines[-1] == "data: [DONE]", f"{where}: stream not terminated: {lines[-3:]}"


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(call=calls())
def test_generated_requests_never_break_the_queen(queen: str, fake_worker: str, call: dict[str, Any]) -> None:
    before = _workers(queen)
    try:
        r = requests.request(call["method"], queen + call["path"], data=call["data"], headers=call["headers"],
                             timeout=TIMEOUT, stream=True)
    except requests.ConnectionError as exc:  # a body over the cap may be cut off mid-upload, after the 413
        assert call["data"] is not None and len(call["data"]) > 1024 * 1024, exc
        r = None
    try:
        if r is not None:
            event(f"{call['path'].split('/')[1:3]} {r.status_code}")
            _check_answer(r, call)
            if r.status_code >= 400:
                assert _workers(queen) == before, f"refused {call['method']} {call['path']} changed the registry"
    finally:
        if r is not None:
            r.close()
        assert requests.get(f"{queen}/health", timeout=TIMEOUT).status_code == 200
        if _workers(queen) != before or r is None or r.status_code < 400:
            _ensure_fake(queen, fake_worker)

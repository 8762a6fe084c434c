"""Steps for request ids on every answer."""

from __future__ import annotations

import re

from behave import given, then, when

from rbee.client import QueenClient

ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)


@given('a queen with the API key "{key:Q}"')
def step_queen_key(context, key):
    context.cluster.start_queen("--api-key", key)
    context.api_key = key


def _send(context, kind: str, rid: str):
    authed = QueenClient(context.cluster.queen_url, api_key=context.api_key)
    headers = {"X-Request-Id": rid.encode()}  # as bytes: UTF-8 on the wire, as a client may send it
    if kind == "a body that is not JSON":
        return authed.post("/v1/inference", data=b"{not json", headers=headers)
    if kind == "no API key":
        return QueenClient(context.cluster.queen_url).post("/v1/inference", json={"prompt": "x"}, headers=headers)
    if kind == "a request to no route":
        return authed.get("/v1/no-such-route", headers=headers)
    raise AssertionError(f"unknown kind of request: {kind}")


@when('a client sends {kind} with the request id "{rid:Q}"')
def step_send(context, kind, rid):
    context.response = _send(context, kind, rid)


@then('the answer is {status:d} and carries the request id "{rid:Q}"')
def step_status_and_id(context, status, rid):
    r = context.response
    assert r.status_code == status and "error" in r.json(), (r.status_code, r.text)
    assert r.headers.get("X-Request-Id") == rid, dict(r.headers)


@then("the answer carries a fresh request id in the contract's pattern")
def step_fresh_id(context):
    rid = context.response.headers.get("X-Request-Id", "")
    assert ID.fullmatch(rid) is not None, repr(rid)

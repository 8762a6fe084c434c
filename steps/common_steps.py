"""Steps shared by every area: error answers in the one envelope."""

from __future__ import annotations

from behave import then


def _error_of(context) -> tuple[int, dict, dict]:
    """(status, error body, headers) of the last answer, whether a plain response or a stream."""
    response = getattr(context, "response", None)
    if response is not None:
        return response.status_code, response.json(), dict(response.headers)
    result = context.result  # inference steps leave a StreamResult and clear context.response
    return result.status, result.error_body or {}, result.headers


@then('the queen refuses with {status:d} "{code:Q}"')
def step_refused(context, status, code):
    got_status, body, _ = _error_of(context)
    assert got_status == status, (got_status, body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body


@then("the answer carries a Retry-After header")
def step_retry_after(context):
    _, _, headers = _error_of(context)
    assert int(headers.get("Retry-After", "0")) >= 1, headers

"""Steps of the @ui scenarios: the queen's dashboard (/ui) in headless Chromium, against real processes."""

from __future__ import annotations

from pathlib import Path

from behave import given, then, when
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By

from rbee.testing.browser import Browser
from rbee.testing.clients import BackgroundStream, wait_until

STREAM = {"prompt": "Tell me about bees.", "max_tokens": 96, "ignore_eos": True, "temperature": 0, "seed": 7}
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"


def _page(context):
    return context.browser.driver


def _css(context, selector: str) -> list:
    return _page(context).find_elements(By.CSS_SELECTOR, selector)


def _poll(context, predicate, seconds: float, what: str):
    """wait_until, also riding out a row redrawn between finding it and reading it."""
    def attempt():
        try:
            return predicate()
        except (StaleElementReferenceException, WebDriverException):
            return None
    return wait_until(attempt, seconds * context.cluster.k, interval=0.1, what=what)


def _let_go(stream: BackgroundStream) -> None:
    """Cleanup: hang up a stream still running; on a loaded machine its next token may be slow to come."""
    try:
        stream.abandon()
    except AssertionError:
        stream.response.close()


@given("the dashboard is open in a browser")
def step_open(context):
    context.browser = Browser(context.log_dir / "chromedriver.log")
    context.add_cleanup(context.browser.quit)  # before starting: a half-started browser is still stopped
    context.browser.start()
    _page(context).get(f"{context.cluster.queen_url}/ui")


@given("the dashboard is live")
@then("the dashboard is live")
def step_live(context):
    _poll(context, lambda: _css(context, "#status")[0].get_attribute("data-state") == "live", 10,
          "the dashboard connected to /v2/events")


def _worker_state(context, worker_id: str) -> str | None:
    rows = _css(context, f'#workers tr[data-worker-id="{worker_id}"]')
    return rows[0].get_attribute("data-state") if rows else None


@then('the dashboard shows worker "{worker_id:Q}" as "{state:Q}" within {n:d} seconds')
def step_worker_state(context, worker_id, state, n):
    _poll(context, lambda: _worker_state(context, worker_id) == state, n,
          f"worker {worker_id} shown {state} (shown: {_worker_state(context, worker_id)})")


@when("a client streams an answer through the queen in the background")
def step_stream(context):
    stream = BackgroundStream(context.cluster.queen, "/v1/inference", STREAM)
    context.add_cleanup(_let_go, stream)
    assert stream.response.status_code == 200, stream.response.text
    context.ui_stream = stream


@when("clients stream {n:d} answers through the queen in the background")
def step_streams(context, n):
    context.ui_streams = []
    for i in range(n):  # one short, the others long: some done while others still run
        tokens = 32 if i == 0 else 160
        stream = BackgroundStream(context.cluster.queen, "/v1/inference", {**STREAM, "max_tokens": tokens})
        context.add_cleanup(_let_go, stream)
        assert stream.response.status_code == 200, stream.response.text
        context.ui_streams.append(stream)


@then("the dashboard shows that request in flight")
def step_in_flight(context):
    rid = context.ui_stream.request_id
    _poll(context, lambda: _css(context, f'#in-flight tr[data-request-id="{rid}"]'), 30,
          f"request {rid} in flight on the page")


@then("once it is done the recent list shows it with its worker and a time to first token")
def step_recent(context):
    stream = context.ui_stream
    stream.wait_finished(120 * context.cluster.k)
    done = stream.events[-1]
    assert done.get("done") and done.get("ttft_ms") is not None, stream.events[-1]
    rid = stream.request_id

    def cells():
        rows = _css(context, f'#recent tr[data-request-id="{rid}"]')
        return [td.text for td in rows[0].find_elements(By.TAG_NAME, "td")] if rows else None

    row = _poll(context, cells, 10, f"request {rid} in the recent list")
    assert row[1] == "done" and row[2] == done["worker_id"], row
    assert row[3].isdigit(), row  # the TTFT the queen measured
    assert not _css(context, f'#in-flight tr[data-request-id="{rid}"]'), "still shown in flight"


def _chart(context, which: str) -> tuple[int, float]:
    svg = _css(context, f"#{which}-chart")[0]
    return int(svg.get_attribute("data-points") or 0), float(svg.get_attribute("data-max") or 0)


@then("the throughput chart draws points above zero while they run")
def step_chart(context):
    _poll(context, lambda: (p := _chart(context, "throughput"))[0] >= 3 and p[1] > 0, 60,
          f"three chart points, some above zero (now: {_chart(context, 'throughput')})")
    line = _css(context, "#throughput-chart polyline")[0].get_attribute("points")
    assert len(line.split()) >= 3, line
    assert not all(s.terminated for s in context.ui_streams), "the answers ended before the chart drew them"


@then("a screenshot of the dashboard is kept under docs/")
def step_docs_screenshot(context):
    _poll(context, lambda: _css(context, '#in-flight tr[data-state="streaming"]') and _css(context, "#recent tbody tr"),
          90, "a request streaming and one done")
    assert context.browser.screenshot(DOCS_SCREENSHOT), "could not take the screenshot"


@then("the dashboard asks for an API key")
def step_asks_key(context):
    _poll(context, lambda: _css(context, "#key-form")[0].is_displayed(), 10, "the key form")
    assert not _css(context, "#board")[0].is_displayed()


@when('the key "{key:Q}" is entered in the dashboard')
def step_enter_key(context, key):
    field = _css(context, "#key-input")[0]
    field.clear()
    field.send_keys(key)
    _css(context, "#key-submit")[0].click()


@then("the dashboard says the key was refused")
def step_refused(context):
    _poll(context, lambda: "refused" in _css(context, "#key-error")[0].text, 10, "the key refused")
    assert not _css(context, "#board")[0].is_displayed()


@then('the key is kept in the tab\'s session storage and not in the URL')
def step_key_kept(context):
    page = _page(context)
    stored = page.execute_script("return sessionStorage.getItem('rbee.apiKey')")
    assert stored and stored not in page.current_url and "key" not in page.current_url.lower(), page.current_url
    assert page.execute_script("return localStorage.length") == 0


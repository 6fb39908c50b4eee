"""The pages a new user opens first, in real Chromium against a real hub (issue 18):
no request fails while they load, a ``?token=`` or ``?key=`` leaves the
address bar and the page still works after a reload, and the demo's code
sample names the port that actually serves it."""
from __future__ import annotations

from urllib.parse import urlsplit

from tests.integration.tokens import API_KEY, token

# Streams a reload cuts on purpose: their end is not a failed request.
STREAMS = ("/ws", "/sse", "/dashboard/stream")


def failed_requests(page) -> list[str]:
    """Every answer of 400 or more, and every request that failed, as the page loads."""
    failed: list[str] = []
    page.on("response", lambda response: failed.append(f"{response.status} {response.url}")
            if response.status >= 400 else None)
    # A fetch still in flight when the test reloads the page is aborted by the
    # reload (net::ERR_ABORTED): that is the browser's doing, not a failure.
    page.on("requestfailed", lambda request: failed.append(f"failed {request.url}")
            if urlsplit(request.url).path not in STREAMS and request.failure != "net::ERR_ABORTED" else None)
    return failed


def test_the_demo_drops_its_token_from_the_address_bar_and_keeps_it_for_a_reload(page, keyed_hub):
    failed = failed_requests(page)
    jwt = token("ada", info={"name": "Ada"})
    page.goto(keyed_hub.base + f"/?token={jwt}&transport=sse")
    page.wait_for_selector("#who:has-text('signed in as')")
    assert "token=" not in page.url and "transport=sse" in page.url
    origin = keyed_hub.base.rstrip("/")
    assert page.inner_text("#sample-origin") == f'"{origin}"'  # not a fixed 8000
    page.reload()
    page.wait_for_selector("#who:has-text('signed in as')")  # still Ada after the reload
    assert failed == [], failed  # no favicon 404 either


def test_the_dashboard_asks_for_its_key_and_survives_a_reload(page, keyed_hub):
    failed = failed_requests(page)
    assert page.goto(keyed_hub.base + "/dashboard").status == 401
    page.fill("input[name=key]", API_KEY)
    # The form's answer is a navigation to the dashboard: poll only once it is
    # there. The predicates are functions: Playwright polls a bare expression
    # with eval, which the dashboard's CSP forbids (it failed in CI whenever
    # the first check came too early).
    with page.expect_navigation():
        page.click("button[type=submit]")
    page.wait_for_function("() => window.hubbubDashboard && window.hubbubDashboard.last() !== null")
    assert "key=" not in page.url
    assert page.reload().status == 200
    page.wait_for_function("() => window.hubbubDashboard && window.hubbubDashboard.last() !== null")
    assert failed == [f"401 {keyed_hub.base}/dashboard"], failed  # the key form's own answer

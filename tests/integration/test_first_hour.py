"""A new user's first hour, through a real ``hubbub serve`` (issue 18): the
dashboard asks a person for its key and survives a reload, the metrics name
only connections that can exist, and secrets too short to protect anything
are said to be so at start."""
from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .server import HubProcess
from .tokens import API_KEY, AUDIENCE, SECRET

HTML = {"accept": "text/html,application/xhtml+xml"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    process = HubProcess(dev=False, env={"HUBBUB_JWT_SECRET": SECRET, "HUBBUB_JWT_AUDIENCE": AUDIENCE,
                                         "HUBBUB_API_KEY": API_KEY})
    process.start(tmp_path_factory.mktemp("first-hour"))
    yield process
    process.stop()


def test_a_browser_without_the_key_gets_a_page_asking_for_it(secured):
    page = httpx.get(secured.base + "/dashboard", headers=HTML, timeout=10)
    assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
    assert '<form method="get" action="dashboard">' in page.text and 'name="key"' in page.text
    # A program still gets the JSON refusal.
    refused = httpx.get(secured.base + "/dashboard", timeout=10)
    assert refused.status_code == 401 and refused.json()["code"] == 401


def test_the_key_from_the_address_bar_survives_a_reload_as_a_session_cookie(secured):
    with httpx.Client(base_url=secured.base, timeout=10) as browser:
        first = browser.get("/dashboard", params={"key": API_KEY}, headers=HTML)
        assert first.status_code == 200
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age" not in cookie
        # The page dropped ?key= from its address bar: the reload carries only the cookie.
        reload = browser.get("/dashboard", headers=HTML)
        assert reload.status_code == 200 and "hubbub · operations" in reload.text
        with browser.stream("GET", "/dashboard/stream") as stream:
            assert stream.status_code == 200
            assert next(stream.iter_lines()).startswith("retry:")
    wrong = httpx.get(secured.base + "/dashboard", headers={**HTML, "cookie": "hubbub_dashboard_key=nope"},
                      timeout=10)
    assert wrong.status_code == 401
    # The cookie is the dashboard's only: it opens nothing else.
    metrics = httpx.get(secured.base + "/metrics", headers={"cookie": cookie.split(";")[0]}, timeout=10)
    assert metrics.status_code == 401


def test_metrics_name_no_long_poll_connections_on_the_fast_port(secured):
    text = httpx.get(secured.base + "/metrics", headers={"x-api-key": API_KEY}, timeout=10).text
    kinds = {(s.labels["port"], s.labels["transport"]) for f in text_string_to_metric_families(text)
             if f.name == "hubbub_connections" for s in f.samples}
    assert kinds == {("asgi", "ws"), ("asgi", "sse"), ("asgi", "poll"), ("native", "ws"), ("native", "sse")}


def test_secrets_too_short_to_protect_anything_are_named_at_start(tmp_path):
    hub = HubProcess(dev=False, env={"HUBBUB_JWT_SECRET": "abcde", "HUBBUB_API_KEY": "k"}).start(tmp_path)
    try:
        deadline = time.monotonic() + 10
        while "HUBBUB_JWT_SECRET is too short (5 bytes)" not in hub.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        output = hub.output()
        assert "HUBBUB_API_KEY is too short (1 characters)" in output
        assert "HUBBUB_JWT_SECRET is too short (5 bytes)" in output
    finally:
        hub.stop()

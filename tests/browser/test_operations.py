"""The operators' dashboard and pages on other origins, in real Chromium against a real hub.

The other origins are real: two small HTTP servers on loopback, one listed in
``HUBBUB_CORS_ORIGINS`` and one not. Pages opened there load ``/hubbub.js``
from the hub and talk to it cross-origin.
"""
from __future__ import annotations

import http.server
import threading
import time
import uuid

import httpx
import pytest

from tests.integration.server import HubProcess
from tests.integration.tokens import API_KEY, AUDIENCE, SECRET, token

from .conftest import ARTIFACTS
from .harness import dump, open_harness, start_client, wait_open, wait_received

KEY = {"x-api-key": API_KEY}


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # any path: a blank page of this origin
        body = b"<!doctype html><title>another origin</title>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def origins():
    """(listed, unlisted): two origins served by real HTTP servers on loopback."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tuple(f"http://127.0.0.1:{server.server_address[1]}" for server in servers)
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def secured(origins, tmp_path_factory):
    """A production-mode hub (JWT, API key) that lists only the first origin."""
    listed, _ = origins
    process = HubProcess(dev=False, env={
        "HUBBUB_JWT_SECRET": SECRET, "HUBBUB_JWT_AUDIENCE": AUDIENCE, "HUBBUB_API_KEY": API_KEY,
        "HUBBUB_CORS_ORIGINS": listed, "HUBBUB_HEARTBEAT": "1", "HUBBUB_ACCESS_LOG": "1"})
    process.start(tmp_path_factory.mktemp("operations"))
    yield process
    process.stop()


class Publisher(threading.Thread):
    """Publishes batches to a few topics until stopped (at most ``limit`` seconds)."""

    def __init__(self, hub: HubProcess, topics: list[str], limit: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.hub, self.topics, self.limit = hub, topics, limit
        self.stopped = threading.Event()
        self.published = 0

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        with httpx.Client(base_url=self.hub.base, headers=KEY, timeout=10) as client:
            n = 0
            while not self.stopped.is_set() and time.monotonic() < deadline:
                batch = [{"topic": self.topics[i % len(self.topics) if i % 3 else 0], "data": {"n": n + i}}
                         for i in range(20)]
                assert client.post("/publish", json=batch).status_code == 200
                n += len(batch)
                self.published = n
                time.sleep(0.05)


def test_dashboard_moves_while_a_publisher_runs(page, secured):
    assert page.goto(secured.base + "/dashboard?key=wrong").status == 401
    page.goto(secured.base + f"/dashboard?key={API_KEY}")
    assert page.url == secured.base + "/dashboard"  # the key left the address bar at once
    # A function, not an expression: Playwright polls an expression with eval,
    # which the dashboard's CSP forbids.
    page.wait_for_function("() => window.hubbubDashboard && window.hubbubDashboard.last() !== null")
    first = page.evaluate("window.hubbubDashboard.last()")

    run = uuid.uuid4().hex[:6]
    topics = [f"public.orders.{run}", f"public.chat.{run}", f"user.alice.{run}"]
    publisher = Publisher(secured, topics)
    with httpx.Client(timeout=10) as client, client.stream(
            "GET", secured.url("native", f"/sse?topic=public.>&token={token('alice')}")) as subscriber:
        assert subscriber.status_code == 200
        publisher.start()
        try:
            page.wait_for_function(
                """([published]) => {
                     const s = window.hubbubDashboard.last();
                     const rate = document.getElementById('c-deliveries').textContent;
                     return s.published >= published + 200 && rate !== '0' && rate !== '–'
                       && document.querySelectorAll('#topics .name').length >= 2;
                   }""", arg=[first["published"]], timeout=20_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard_moving.png"))
            moving = page.evaluate("window.hubbubDashboard.last()")
            busiest = page.eval_on_selector_all("#topics .name", "nodes => nodes.map(n => n.textContent)")
            connections = page.text_content("#c-connections")
        finally:
            publisher.stopped.set()
            publisher.join()
    assert moving["published"] > first["published"]
    assert moving["delivered"] > first["delivered"]  # the SSE subscriber got them
    assert int(connections) >= 1
    assert topics[0] in busiest  # the busiest topic is named
    # The series behind the charts moved too.
    assert max(page.evaluate("window.hubbubDashboard.series.deliveries")) > 0


# -- pages on other origins ---------------------------------------------------------
CROSS = [("sse", "asgi"), ("sse", "fast"), ("poll", "asgi")]


@pytest.mark.parametrize("transport,port_kind", CROSS, ids=[f"{t}-{p}" for t, p in CROSS])
def test_a_listed_origin_gets_deliveries(page, secured, origins, transport, port_kind):
    listed, _ = origins
    topic = f"user.alice.cross{uuid.uuid4().hex[:6]}"
    open_harness(page, listed, secured.base, f"{transport} from {listed}")
    start_client(page, secured.base, topics=[topic], transport=transport, token=token("alice"),
                 fastUrl=secured.url("fast", "") if port_kind == "fast" else None)
    wait_open(page, transport)
    ids = secured.publish(*({"topic": topic, "data": {"n": n}} for n in range(3)), headers=KEY)
    received = wait_received(page, 3)
    assert [m["id"] for m in received] == ids, dump(page)


@pytest.mark.parametrize("transport,port_kind", CROSS, ids=[f"{t}-{p}" for t, p in CROSS])
def test_an_unlisted_origin_is_blocked(page, secured, origins, transport, port_kind):
    _, unlisted = origins
    topic = f"user.alice.blocked{uuid.uuid4().hex[:6]}"
    endpoint = secured.url(port_kind, f"/{transport}?topic={topic}&token={token('alice')}&timeout=0")
    open_harness(page, unlisted, secured.base, f"{transport} from {unlisted}")
    # The page's own fetch fails: the browser withholds the response.
    assert page.evaluate("url => fetch(url).then(() => 'read', e => e.name)", endpoint) == "TypeError"
    start_client(page, secured.base, topics=[topic], transport=transport, token=token("alice"),
                 fastUrl=secured.url("fast", "") if port_kind == "fast" else None)
    time.sleep(2.5)  # several attempts, each refused
    secured.publish({"topic": topic, "data": "never seen"}, headers=KEY)
    time.sleep(0.5)
    assert page.evaluate("window.client.state") in ("connecting", "reconnecting"), dump(page)
    assert page.evaluate("window.received") == []
    assert any("CORS" in line for line in page.console_lines), dump(page)


WS_PROBE = """(url) => new Promise((resolve) => {
  const ws = window.socket = new WebSocket(url);
  window.frames_ = [];
  ws.onmessage = (e) => window.frames_.push(e.data);
  ws.onopen = () => resolve({opened: true});
  ws.onclose = (e) => resolve({opened: false, code: e.code});
})"""


@pytest.mark.parametrize("port_kind", ["asgi", "fast"])
def test_cross_origin_websocket_with_the_cookie(browser, secured, origins, port_kind):
    """The user's ``hubbub_token`` cookie goes with every WebSocket to the hub, from any
    page: a listed origin's socket works, an unlisted origin's is refused (403)."""
    listed, unlisted = origins
    topic = f"user.alice.ws{uuid.uuid4().hex[:6]}"
    url = secured.url(port_kind, f"/ws?topic={topic}", "ws")
    context = browser.new_context()
    context.add_cookies([{"name": "hubbub_token", "value": token("alice"), "domain": "127.0.0.1",
                          "path": "/"}])
    try:
        evil = context.new_page()
        console: list[str] = []
        evil.on("console", lambda message: console.append(message.text))
        evil.goto(unlisted + "/evil")
        refused = evil.evaluate(WS_PROBE, url)
        assert refused == {"opened": False, "code": 1006}
        evil.wait_for_timeout(200)
        assert any("403" in line for line in console), console

        good = context.new_page()
        good.goto(listed + "/app")
        assert good.evaluate(WS_PROBE, url) == {"opened": True}
        secured.publish({"topic": topic, "data": {"for": "alice"}}, headers=KEY)
        good.wait_for_function("window.frames_.some(f => f.includes('\"for\":\"alice\"'))")
        ARTIFACTS.mkdir(exist_ok=True)
        evil.screenshot(path=str(ARTIFACTS / f"ws_cookie_unlisted_{port_kind}.png"))
    finally:
        context.close()

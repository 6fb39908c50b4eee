"""A small test page that loads ``/hubbub.js`` from the hub and records what its client sees.

The page is served by Playwright's router at any origin we choose (the ASGI
port, the fast port), so the client runs same-origin with the endpoint under
test without the hub having to serve test pages.
"""
from __future__ import annotations

import json
from urllib.parse import urlencode

DEMO_VIEWPORT = {"width": 1280, "height": 860}

HARNESS = """<!doctype html>
<html><head><meta charset="utf-8"><title>hubbub.js test page</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2330; }
  #state { font-weight: 600; } #log { font: 12px/1.5 ui-monospace, monospace; white-space: pre; }
</style>
<script src="%(script)s"></script></head>
<body>
<h1>hubbub.js %(title)s</h1>
<p>state: <span id="state">idle</span> · transport: <span id="transport">-</span>
 · received: <span id="count">0</span></p>
<div id="log"></div>
<script>
  window.received = [];
  window.events = [];
  function show(line) {
    var log = document.getElementById("log");
    log.textContent = (line + "\\n" + log.textContent).slice(0, 6000);
  }
  window.start = function (url, options) {
    var client = window.client = hubbub.connect(url, options);
    client.on("message", function (m) {
      received.push(m);
      document.getElementById("count").textContent = received.length;
      show(m.id + "  " + m.topic + "  " + m.event + "  " + JSON.stringify(m.data));
    });
    ["connected", "disconnected", "reset", "dropped", "error", "state",
     "join", "leave", "notification", "notification_deleted", "unread_count"].forEach(function (name) {
      client.on(name, function (payload) {
        events.push([name, payload]);
        if (name === "state") {
          document.getElementById("state").textContent = payload.state;
          document.getElementById("transport").textContent = client.transport || "-";
        } else {
          show("[" + name + "] " + JSON.stringify(payload));
        }
      });
    });
  };
</script>
</body></html>
"""


def open_harness(page, origin: str, script_base: str, title: str = "") -> None:
    """Open the harness as a page of ``origin`` (the ASGI port or the fast port).

    The page first loads a real response from that origin (a 404 is fine),
    then its content is replaced: Chromium then knows the page came from
    loopback, which its Local Network Access checks require before the page
    may open sockets to loopback (a page fulfilled by Playwright's router is
    treated as public and blocked).
    """
    html = HARNESS % {"script": script_base + "/hubbub.js", "title": title}
    page.goto(origin + "/__test__")
    page.set_content(html)


def start_client(page, url: str, **options) -> None:
    page.evaluate("([url, options]) => start(url, options)", [url, options])


def wait_open(page, transport: str | None = None, timeout: float = 15_000) -> None:
    page.wait_for_function(
        "t => window.client.state === 'open' && (!t || window.client.transport === t)",
        arg=transport, timeout=timeout)


def wait_received(page, count: int, timeout: float = 15_000) -> list[dict]:
    page.wait_for_function("n => window.received.length >= n", arg=count, timeout=timeout)
    return page.evaluate("window.received")


def events(page, name: str) -> list:
    return [payload for event, payload in page.evaluate("window.events") if event == name]


def dump(page) -> str:
    """What the page saw, for assertion messages."""
    return json.dumps({"events": page.evaluate("window.events")[-30:],
                       "console": page.console_lines[-30:]}, indent=1)[:6000]


def open_demo(context, hub, token: str | None = None, transport: str | None = None):
    """Open the --dev demo page at ``/`` in ``context`` as the token's user
    (``?token=``), on one transport (``?transport=``) when given; returns the
    page once it is live on that transport."""
    query = {key: value for key, value in (("token", token), ("transport", transport)) if value}
    page = context.new_page()
    page.console_lines = []
    page.on("console", lambda message: page.console_lines.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: page.console_lines.append(f"pageerror: {error}"))
    page.goto(hub.base + "/" + ("?" + urlencode(query) if query else ""))
    label = {"ws": "WebSocket", "sse": "Server-Sent Events", "poll": "long-poll"}[transport or "ws"]
    page.wait_for_selector(f"#conn:text('live over {label}')")
    return page


def demo_state(page) -> str:
    """The demo's people list, badge, notes and wire log, for assertion messages."""
    return json.dumps(page.evaluate("""() => ({
        people: [...document.querySelectorAll('#people .person')].map(p => [p.dataset.via, p.textContent]),
        badge: document.getElementById('badge').className + ' ' + document.getElementById('badge').textContent,
        notes: [...document.querySelectorAll('#notes .note')].map(n => n.className + ' ' + n.dataset.id),
        wire: [...document.querySelectorAll('#wire div')].slice(0, 20).map(d => d.textContent),
    })""") | {"console": page.console_lines[-20:]}, indent=1)

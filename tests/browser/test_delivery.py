"""hubbub.js delivers over every transport, on both ports, in a real browser."""
from __future__ import annotations

import uuid

import pytest

import hubbub

from .harness import dump, open_harness, start_client, wait_open, wait_received

# (transport, port): the fast port serves only /ws and /sse.
CASES = [("ws", "asgi"), ("sse", "asgi"), ("poll", "asgi"), ("ws", "fast"), ("sse", "fast")]


@pytest.mark.parametrize("transport,port_kind", CASES, ids=[f"{t}-{p}" for t, p in CASES])
def test_delivery(page, hub, transport, port_kind):
    topic = f"public.browser.{uuid.uuid4().hex[:8]}"
    fast = hub.url("fast", "")
    origin = hub.base if port_kind == "asgi" else fast
    open_harness(page, origin, hub.base, f"{transport} on the {port_kind} port")
    start_client(page, hub.base, topics=[topic], transport=transport,
                 fastUrl=fast if port_kind == "fast" else None)
    wait_open(page, transport)

    # One at a time, then a batch of ten (which the hub may put in one WS
    # frame, one message per line), with custom event names, which SSE
    # carries as named events.
    first = hub.publish({"topic": topic, "data": {"n": 0}})
    batch = hub.publish(*({"topic": topic, "data": {"n": n}, "event": "update"} for n in range(1, 11)))
    ids = first + batch
    received = wait_received(page, len(ids))
    assert [m["id"] for m in received] == ids, dump(page)
    assert [m["data"]["n"] for m in received] == list(range(11))
    assert {m["event"] for m in received[1:]} == {"update"}
    assert all(m["topic"] == topic and isinstance(m["ts"], int) for m in received)

    # The page publishes too: over WS as a client op (the promise gives the
    # event id), over SSE and poll through POST /publish (dev, loopback). A
    # page on the fast port would reach /publish cross-origin, which needs
    # CORS (not in this branch).
    if transport != "ws" and port_kind == "fast":
        return
    event_id = page.evaluate(
        "t => client.publish(t, {from: 'page'}, {event: 'chat'})", topic)
    received = wait_received(page, len(ids) + 1)
    assert received[-1] == {**received[-1], "id": event_id, "event": "chat", "data": {"from": "page"}}
    assert len(received) == len(ids) + 1, dump(page)


def test_es_module_import(page, hub):
    """The same client as an ES module: import hubbub from "/hubbub.mjs"."""
    topic = f"public.browser.{uuid.uuid4().hex[:8]}"
    html = f"""<!doctype html><title>module</title><script type="module">
      import hubbub, {{ connect }} from "{hub.base}/hubbub.mjs";
      window.moduleVersion = hubbub.version;
      window.sameConnect = connect === hubbub.connect;
      window.globalLeak = typeof window.hubbub;
      window.got = [];
      const client = connect("{hub.base}", {{topics: ["{topic}"]}});
      client.on("connected", () => {{ window.ready = true; }});
      client.on("message", (m) => window.got.push(m.data));
    </script>"""
    page.goto(hub.base + "/__module__")  # a real page of the hub's origin (see open_harness)
    page.set_content(html)
    page.wait_for_function("window.ready === true")
    hub.publish({"topic": topic, "data": "hello"})
    page.wait_for_function("window.got.length === 1")
    # The module's version is the package's, and importing it defines no global.
    assert page.evaluate("[window.moduleVersion, window.sameConnect, window.globalLeak]") == \
        [hubbub.__version__, True, "undefined"]

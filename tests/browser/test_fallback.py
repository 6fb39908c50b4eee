"""transport "auto": WS, else SSE, else long-poll; and back up when the better one opens again."""
from __future__ import annotations

import re
import uuid

from .harness import dump, events, open_harness, start_client, wait_open, wait_received

QUICK = {"backoffBaseMs": 200, "backoffMaxMs": 1000, "openTimeoutMs": 3000}
WS_URL = re.compile(r"/ws(\?|$)")


def block_websockets(page) -> None:
    # The handshake is answered by the router, which closes it at once: to
    # the page it looks like a proxy that refuses WebSocket upgrades.
    page.route_web_socket(WS_URL, lambda ws: ws.close(code=1011, reason="blocked by the test"))


def block_sse(page) -> None:
    page.route(re.compile(r"/sse(\?|$)"), lambda route: route.abort("blockedbyclient"))


def delivered_in_order(page, hub, topic, start: int, count: int) -> None:
    ids = hub.publish(*({"topic": topic, "data": {"n": n}} for n in range(start, start + count)))
    received = wait_received(page, start + count)
    assert [m["id"] for m in received[start:]] == ids, dump(page)


def test_falls_back_to_sse_when_websockets_are_blocked(page, hub):
    topic = f"public.fallback.{uuid.uuid4().hex[:8]}"
    block_websockets(page)
    open_harness(page, hub.base, hub.base, "WS blocked")
    start_client(page, hub.base, topics=[topic], **QUICK)
    wait_open(page, "sse")
    delivered_in_order(page, hub, topic, 0, 5)
    assert [e["transport"] for e in events(page, "connected")] == ["sse"]


def test_falls_back_to_poll_when_websockets_and_sse_are_blocked(page, hub):
    topic = f"public.fallback.{uuid.uuid4().hex[:8]}"
    block_websockets(page)
    block_sse(page)
    open_harness(page, hub.base, hub.base, "WS and SSE blocked")
    start_client(page, hub.base, topics=[topic], **QUICK)
    wait_open(page, "poll")
    delivered_in_order(page, hub, topic, 0, 5)
    assert [e["transport"] for e in events(page, "connected")] == ["poll"]
    # publish() works on the fallback too (POST /publish: dev mode, loopback).
    event_id = page.evaluate(f"client.publish('{topic}', 'from the page')")
    assert wait_received(page, 6)[-1]["id"] == event_id


def test_falls_back_when_the_fast_port_is_unreachable(page, hub):
    """ws and sse go to fastUrl; a closed port there leaves long-poll on the ASGI port."""
    topic = f"public.fallback.{uuid.uuid4().hex[:8]}"
    open_harness(page, hub.base, hub.base, "fast port closed")
    start_client(page, hub.base, topics=[topic], fastUrl="http://127.0.0.1:9", **QUICK)
    wait_open(page, "poll")
    delivered_in_order(page, hub, topic, 0, 3)


def test_returns_to_websocket_when_it_opens_again(page, hub):
    topic = f"public.fallback.{uuid.uuid4().hex[:8]}"
    block_websockets(page)
    block_sse(page)
    open_harness(page, hub.base, hub.base, "blocked, then unblocked")
    start_client(page, hub.base, topics=[topic], upgradeAfterMs=1000, **QUICK)
    wait_open(page, "poll")
    delivered_in_order(page, hub, topic, 0, 3)

    # Unblock: within a few upgrade checks the client is back on WS, having
    # resumed from its last id, so publications made meanwhile arrive once.
    page.unroute_all()
    page.route_web_socket(WS_URL, lambda ws: ws.connect_to_server())
    meanwhile = hub.publish(*({"topic": topic, "data": {"n": n}} for n in range(3, 6)))
    wait_open(page, "ws", timeout=20_000)
    delivered_in_order(page, hub, topic, 6, 3)
    received = page.evaluate("window.received")
    assert [m["id"] for m in received[3:6]] == meanwhile, dump(page)
    assert [m["data"]["n"] for m in received] == list(range(9))
    assert [e["transport"] for e in events(page, "connected")] == ["poll", "ws"]

"""hubbub.js and the hub's liveness pings on the ASGI port (SPEC 10 "Connection lifetime").

Granian keeps protocol pings to itself, so on the ASGI port the hub sends
{"op":"ping"}; hubbub.js answers, and says at connect that it does. A page
that stops answering is closed 4410 "no pong" and comes back by itself.
"""
from __future__ import annotations

import uuid

from .harness import dump, events, open_harness, start_client, wait_open, wait_received

FAST_RETRY = {"backoffBaseMs": 200, "backoffMaxMs": 1000, "openTimeoutMs": 3000}
# The session hub's liveness period (HUBBUB_HEARTBEAT=1, below PRESENCE_TTL / 3).
PERIOD_S = 1.0

# Swallow this socket's pongs from now on, as a frozen page would not send them.
STOP_PONGS = """() => {
  const socket = window.client.link.socket, send = socket.send.bind(socket);
  socket.send = (data) => { if (JSON.parse(data).op !== "pong") send(data); };
}"""


def test_a_page_that_stops_answering_pings_is_closed_4410_and_comes_back(page, hub):
    topic = f"public.liveness.{uuid.uuid4().hex[:8]}"
    open_harness(page, hub.base, hub.base, "liveness (ASGI port)")
    start_client(page, hub.base, topics=[topic], transport="ws", **FAST_RETRY)
    wait_open(page, "ws")
    page.wait_for_timeout(4 * PERIOD_S * 1000)  # pinged and answering: it stays
    assert events(page, "disconnected") == [], dump(page)

    page.evaluate(STOP_PONGS)
    page.wait_for_function("window.events.some(e => e[0] === 'disconnected')", timeout=10_000)
    [disconnected] = events(page, "disconnected")
    assert disconnected == {"transport": "ws", "code": 4410, "reason": "no pong", "willReconnect": True}

    wait_open(page, "ws")  # a new socket, whose pongs go through
    [event_id] = hub.publish({"topic": topic, "data": "back"})
    assert wait_received(page, 1)[0]["id"] == event_id

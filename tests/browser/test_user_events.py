"""hubbub.js surfaces a user's hub events exactly as the hub sends them, per transport.

``join`` / ``leave`` (SPEC 6, 10: WS ``{"op":"join",...}``, SSE ``event: join``)
and the inbox's ``notification`` / ``notification_deleted`` / ``unread_count``
(SPEC 8: WS ``{"op":..,"data":{..}}``, SSE ``event:`` + data, poll items and
the answer's ``unread_count``) all reach ``client.on(name)`` as the same plain
objects; ``client.presence(topic)`` answers from the WS op or
``GET /presence/{topic}``.
"""
from __future__ import annotations

import uuid

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.integration.helpers_user import KEY
from tests.integration.tokens import token

from .harness import dump, events, open_harness, wait_open

CASES = [("ws", "asgi"), ("sse", "asgi"), ("poll", "asgi"), ("ws", "fast"), ("sse", "fast")]


def wait_event(page, name: str, count: int = 1, timeout: float = 15_000) -> list:
    page.wait_for_function(
        "([name, n]) => window.events.filter(e => e[0] === name).length >= n",
        arg=[name, count], timeout=timeout)
    return events(page, name)


@pytest.mark.parametrize("transport,port_kind", CASES, ids=[f"{t}-{p}" for t, p in CASES])
def test_presence_and_inbox_events(page, keyed_hub, transport, port_kind):
    hub = keyed_hub
    run = uuid.uuid4().hex[:8]
    topic = f"public.room.{run}"
    me, other = f"me{run}", f"other{run}"
    fast = hub.url("fast", "")
    open_harness(page, hub.base if port_kind == "asgi" else fast, hub.base, f"{transport} user events")
    # Subscribed with presence before the link opens (SSE needs a topic to open at all).
    page.evaluate("""([url, options, topic]) => {
        start(url, options);
        window.subscribed = client.subscribe(topic, {presence: true});
    }""", [hub.base, {"token": token(me, info={"name": "Me"}), "transport": transport,
                      "fastUrl": fast if port_kind == "fast" else None}, topic])
    wait_open(page, transport)
    page.evaluate("window.subscribed")
    # Every connect of a user starts with the count (poll: in each answer).
    assert wait_event(page, "unread_count")[0] == {"count": 0}, dump(page)

    # presence(): the WS op, or GET /presence/{topic} on SSE and poll. Long-poll
    # takes no part in presence, so a poll page is not in the list.
    takes_part = transport != "poll"
    users = page.evaluate("t => client.presence(t)", topic)
    expected_me = [{"user": me, "info": {"name": "Me"}, "connections": 1}] if takes_part else []
    assert users == expected_me, dump(page)

    # Another user arrives and leaves: join then leave, the hub's object as is.
    other_jwt = token(other, info={"name": "Other"})
    with ws_connect(hub.url("fast", f"/ws?topic={topic}&token={other_jwt}", "ws"), open_timeout=5) as other_ws:
        entry = {"topic": topic, "user": other, "info": {"name": "Other"}}
        if takes_part:
            assert wait_event(page, "join") == [entry], dump(page)
        users = page.evaluate("t => client.presence(t)", topic)
        assert sorted(u["user"] for u in users) == sorted([other] + ([me] if takes_part else [])), users
        other_ws.close()
    if takes_part:
        assert wait_event(page, "leave") == [entry], dump(page)

    # The inbox: the record as POST /notifications returned it, then the count.
    created = httpx.post(hub.base + "/notifications", headers=KEY, timeout=10, json={
        "user": me, "title": "Payment", "message": "Received", "level": "success", "data": {"order": 42}})
    assert created.status_code == 201, created.text
    record = created.json()
    assert wait_event(page, "notification") == [record], dump(page)
    page.wait_for_function("() => window.events.filter(e => e[0] === 'unread_count').pop()[1].count === 1")

    deleted = httpx.delete(f"{hub.base}/notifications/{record['id']}", timeout=10,
                           headers={"Authorization": f"Bearer {token(me)}"})
    assert deleted.status_code == 200, deleted.text
    assert wait_event(page, "notification_deleted") == [{"id": record["id"]}], dump(page)
    page.wait_for_function("() => window.events.filter(e => e[0] === 'unread_count').pop()[1].count === 0")

    # Nothing else was read as a hub event: no publication, no error, and a
    # poll page got no presence events it cannot have.
    assert page.evaluate("window.received") == [], dump(page)
    assert events(page, "error") == [], dump(page)
    if not takes_part:
        assert events(page, "join") == [] and events(page, "leave") == [], dump(page)


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_subscribe_again_after_unsubscribe(page, hub, transport):
    """The client forgets what its open link had on unsubscribe, so the same
    topic subscribed again reaches the hub again and delivers."""
    topic = f"public.again.{uuid.uuid4().hex[:8]}"
    open_harness(page, hub.base, hub.base, f"{transport} subscribe again")
    # Opened with the topic (in the WS handshake or the SSE URL).
    page.evaluate("([url, options]) => start(url, options)",
                  [hub.base, {"topics": ["public.keepalive", topic], "transport": transport}])
    wait_open(page, transport)
    first = hub.publish({"topic": topic, "data": 1})
    page.wait_for_function("n => window.received.length === n", arg=1)
    page.evaluate("t => client.unsubscribe(t)", topic)
    page.evaluate("t => client.subscribe(t)", topic)
    again = hub.publish({"topic": topic, "data": 2})
    page.wait_for_function("n => window.received.length === n", arg=2)
    assert [m["id"] for m in page.evaluate("window.received")] == first + again, dump(page)

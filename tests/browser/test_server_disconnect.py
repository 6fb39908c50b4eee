"""hubbub.js after the server API disconnects its user (SPEC 10 "Server API",
issue 22), in Chromium against a real secured hub: a backend's disconnect
(WS close 4000-4999, SSE ``event: disconnect``, a waiting poll's 410 with
``disconnect`` ``{code, reason}``) ends the
client with ``disconnected`` ``{code, reason, willReconnect: false}`` and it
stays away, even with a ``getToken`` that could hand it a fresh token; a
disconnect with 4408, which asks for a reconnect, is reconnected and resumed.
"""
from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.integration.helpers_user import KEY
from tests.integration.tokens import token

from .harness import dump, events, open_harness, wait_open

CASES = [("ws", "asgi"), ("ws", "fast"), ("sse", "asgi"), ("sse", "fast"), ("poll", "asgi")]


def disconnect(hub, user: str, code: int, reason: str) -> None:
    """POST /disconnect once the hub holds the user's connection (a poll is only
    held while a request waits, so a 0 is asked again)."""
    deadline = time.monotonic() + 10
    while True:
        answer = httpx.post(hub.base + "/disconnect", headers=KEY, timeout=10,
                            json={"user": user, "code": code, "reason": reason})
        assert answer.status_code == 200, answer.text
        if answer.json()["closed"] == 1:
            return
        assert time.monotonic() < deadline, "the user's connection never showed up"
        time.sleep(0.05)


def wait_events(page, name: str, count: int) -> list:
    page.wait_for_function("([name, n]) => window.events.filter(e => e[0] === name).length >= n",
                           arg=[name, count], timeout=15_000)
    return events(page, name)


@pytest.mark.parametrize("transport,port_kind", CASES, ids=[f"{t}-{p}" for t, p in CASES])
def test_a_server_disconnect_ends_the_client(page, keyed_hub, transport, port_kind):
    hub = keyed_hub
    run = uuid.uuid4().hex[:8]
    user, topic = f"sd{run}", f"public.sd.{run}"
    fast = hub.url("fast", "")
    open_harness(page, hub.base if port_kind == "asgi" else fast, hub.base, f"{transport} server disconnect")
    page.expose_function("mintToken", lambda: token(user))
    page.evaluate("""([url, options]) => {
        options.getToken = () => window.mintToken();
        start(url, options);
    }""", [hub.base, {"topics": [topic], "transport": transport, "backoffBaseMs": 50,
                      "fastUrl": fast if port_kind == "fast" else None}])
    wait_open(page, transport)

    # 4408 asks for a reconnect: the client comes back and resumes (a poll
    # learns the code from its 410's `disconnect`).
    disconnect(hub, user, 4408, "move along")
    lost = wait_events(page, "disconnected", 1)[0]
    assert (lost["code"], lost["reason"], lost["willReconnect"]) == (4408, "move along", True), dump(page)
    wait_events(page, "connected", 2)
    hub.publish({"topic": topic, "data": "after 4408"}, headers=KEY)
    page.wait_for_function("() => window.received.some(m => m.data === 'after 4408')", timeout=15_000)

    disconnect(hub, user, 4403, "banned")
    page.wait_for_function("() => window.client.state === 'closed'", timeout=15_000)
    lost = events(page, "disconnected")[-1]
    assert (lost["code"], lost["reason"], lost["willReconnect"]) == (4403, "banned", False), dump(page)
    connects = len(events(page, "connected"))
    # With a 50 ms backoff a reconnect would have come many times over by now.
    page.wait_for_timeout(1500)
    assert len(events(page, "connected")) == connects, dump(page)
    assert page.evaluate("window.client.state") == "closed"
    answer = httpx.post(hub.base + "/disconnect", headers=KEY, timeout=10, json={"user": user})
    assert answer.json() == {"closed": 0}, "the client came back"
    # An operation after the end is refused at once, not left waiting.
    refused = page.evaluate("() => client.publish('public.x', 1).then(() => 'sent', e => e.reason)")
    assert refused == "client closed", refused

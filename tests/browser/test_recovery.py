"""hubbub.js comes back by itself: after the network drops and after the hub restarts."""
from __future__ import annotations

import uuid

import pytest

from tests.integration.server import HubProcess

from .harness import dump, events, open_harness, start_client, wait_open, wait_received

TRANSPORTS = ["ws", "sse", "poll"]
# Quick retries so a test waits seconds, not the production defaults.
FAST_RETRY = {"backoffBaseMs": 200, "backoffMaxMs": 1000, "openTimeoutMs": 3000, "idleTimeoutMs": 5000}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_publications_made_while_offline_arrive_once_in_order(page, hub, transport):
    topic = f"public.offline.{uuid.uuid4().hex[:8]}"
    open_harness(page, hub.base, hub.base, f"offline and back ({transport})")
    start_client(page, hub.base, topics=[topic], transport=transport, **FAST_RETRY)
    wait_open(page, transport)
    before = hub.publish({"topic": topic, "data": {"n": 0}})
    wait_received(page, 1)

    page.context.set_offline(True)
    page.wait_for_function("window.client.state !== 'open'")
    while_offline = hub.publish(*({"topic": topic, "data": {"n": n}} for n in range(1, 8)))
    page.wait_for_timeout(500)  # a few reconnect attempts fail while offline
    assert page.evaluate("window.received.length") == 1
    page.context.set_offline(False)

    wait_open(page, transport)
    after = hub.publish({"topic": topic, "data": {"n": 8}})
    received = wait_received(page, 9)
    page.wait_for_timeout(300)  # anything doubled would have arrived by now
    received = page.evaluate("window.received")
    assert [m["id"] for m in received] == before + while_offline + after, dump(page)
    assert [m["data"]["n"] for m in received] == list(range(9))
    assert events(page, "reset") == []
    disconnected = events(page, "disconnected")
    assert disconnected and disconnected[0]["transport"] == transport and disconnected[0]["willReconnect"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reconnects_after_hub_restart_and_surfaces_reset(page, tmp_path, transport):
    """A restarted in-memory hub has a new history: the client resumes, is told
    `reset` (history_gap) so the page reloads its state, and live delivery goes on."""
    topic = f"public.restart.{uuid.uuid4().hex[:8]}"
    hub = HubProcess(env={"HUBBUB_HEARTBEAT": "1"}).start(tmp_path)
    try:
        open_harness(page, hub.base, hub.base, f"hub restart ({transport})")
        # The script came from the hub; keep the page while the hub is down.
        start_client(page, hub.base, topics=[topic], transport=transport, **FAST_RETRY)
        wait_open(page, transport)
        hub.publish({"topic": topic, "data": "before"})
        wait_received(page, 1)

        hub.stop()
        page.wait_for_function("window.client.state === 'reconnecting'")
        hub.start(tmp_path)  # same ports
        wait_open(page, transport, timeout=20_000)
        page.wait_for_function("window.events.some(e => e[0] === 'reset')")
        [reset] = events(page, "reset")
        assert reset == {"topics": [topic], "reason": "history_gap"}, dump(page)

        after = hub.publish({"topic": topic, "data": "after"})
        received = wait_received(page, 2)
        page.wait_for_timeout(300)
        received = page.evaluate("window.received")
        assert [m["data"] for m in received] == ["before", "after"], dump(page)
        assert received[1]["id"] == after[0]
        assert page.evaluate("window.client.lastEventId") == after[0]
    finally:
        hub.stop()

"""hubbub.js across a Redis that lost its data: a new epoch of ids (docs/protocol.md).

A private ``redis-server`` is killed and started again empty; the hub starts
a new epoch whose ids may sort below the old ones. On every transport the
page is told ``reset`` once, receives the new epoch's publications, and after
going offline resumes within the new epoch: from the reset's id when nothing
of the new epoch reached it yet, from the newest id it got afterwards.
"""
from __future__ import annotations

import uuid

import pytest

from tests.integration.epochs import epoch, hub_on, lose_redis_data

from .harness import dump, events, open_harness, start_client, wait_open, wait_received

# Quick retries so a test waits seconds, not the production defaults.
FAST_RETRY = {"backoffBaseMs": 200, "backoffMaxMs": 1000, "openTimeoutMs": 3000, "idleTimeoutMs": 5000}


def offline_while(page, transport: str, publish) -> list[str]:
    """Take the page offline, ``publish()`` meanwhile, bring it back; the ids published."""
    page.context.set_offline(True)
    page.wait_for_function("window.client.state !== 'open'")
    ids = publish()
    page.context.set_offline(False)
    wait_open(page, transport, timeout=20_000)
    return ids


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
def test_hubbub_js_follows_a_new_epoch_and_resumes_in_it(page, redis_server, tmp_path, transport):
    hub = hub_on(redis_server, tmp_path)
    topic = f"public.epoch.{uuid.uuid4().hex[:8]}"

    def publish(label: str, count: int) -> list[str]:
        return hub.publish(*({"topic": topic, "data": f"{label} {n}"} for n in range(count)))

    try:
        open_harness(page, hub.base, hub.base, f"new epoch ({transport})")
        start_client(page, hub.base, topics=[topic], transport=transport, **FAST_RETRY)
        wait_open(page, transport)
        old = publish("old", 2)
        wait_received(page, 2)

        lose_redis_data(redis_server, hub)
        page.wait_for_function("window.events.some(e => e[0] === 'reset')", timeout=20_000)
        assert events(page, "reset") == [{"topics": [topic], "reason": "history_gap"}], dump(page)

        # Offline before any publication of the new epoch arrived: the page
        # resumes from the id the reset carried, so nothing is lost.
        missed = offline_while(page, transport, lambda: publish("missed", 2))
        assert epoch(missed[0]) != epoch(old[0])
        wait_received(page, 4)
        live = publish("live", 1)
        wait_received(page, 5)

        # Offline again: it resumes from the newest id of the new epoch it got.
        missed_again = offline_while(page, transport, lambda: publish("missed again", 2))
        wait_received(page, 7)
        page.wait_for_timeout(300)  # anything doubled would have arrived by now
        received = page.evaluate("window.received")
        assert [m["id"] for m in received] == old + missed + live + missed_again, dump(page)
        assert len(events(page, "reset")) == 1, dump(page)
        assert page.evaluate("window.client.lastEventId") == missed_again[-1]
    finally:
        hub.stop()

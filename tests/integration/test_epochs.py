"""The Python client across a Redis that lost its data (a new epoch of ids).

A private ``redis-server`` is killed and started again empty, so the hub
starts a new epoch whose ids may sort below the old ones (``6f775402-814``
then ``23f0d0b4-1``). The client takes the reset, receives the new epoch's
publications and resumes within the new epoch after each reconnect, whether
or not a publication of the new epoch reached it first (docs/protocol.md,
"Ids and epochs").
"""
from __future__ import annotations

import asyncio
import contextlib
import uuid

from hubbub.client import connect

from .epochs import epoch, hub_on, lose_redis_data
from .proxy import CuttableProxy


async def next_messages(client, count: int, timeout: float = 10.0) -> list:
    return [await client.next(timeout) for _ in range(count)]


async def away(client, proxy: CuttableProxy, publish) -> list[str]:
    """Cut the client off, ``publish()`` while it is away, let it back; the ids published."""
    reconnects = client.reconnects
    proxy.refusing = True
    await proxy.cut()
    ids = publish()
    proxy.refusing = False
    async with asyncio.timeout(15):
        while client.reconnects == reconnects:
            await asyncio.sleep(0.05)
    return ids


async def test_python_client_follows_a_new_epoch_and_resumes_in_it(redis_server, tmp_path, port_kind):
    hub = hub_on(redis_server, tmp_path)
    topic = "ep" + uuid.uuid4().hex[:8]

    def publish(label: str, count: int) -> list[str]:
        return hub.publish(*({"topic": topic, "data": f"{label} {n}"} for n in range(count)))

    proxy = CuttableProxy(hub.port if port_kind == "asgi" else hub.fast_port)
    port = await proxy.start()
    client = connect(f"ws://127.0.0.1:{port}/ws", topics=[topic], backoff_base=0.1, backoff_max=0.3)
    await client.start()
    try:
        old = publish("old", 3)
        assert [m.id for m in await next_messages(client, 3)] == old

        await asyncio.to_thread(lose_redis_data, redis_server, hub)
        reset = await client.next(10)
        assert (reset.kind, reset.topic, reset.data["reason"]) == ("reset", topic, "history_gap")

        # Away before any publication of the new epoch reached the client: it
        # resumes from the reset's position, not from its old id (which would
        # only get another reset and lose these).
        missed = await away(client, proxy, lambda: publish("missed", 2))
        assert epoch(missed[0]) != epoch(old[0])
        got = await next_messages(client, 2)
        assert [(m.kind, m.id) for m in got] == [("message", i) for i in missed]

        live = publish("live", 1)
        assert (await client.next(10)).id == live[0]
        assert client.last_id == live[0]

        # Away again: it resumes from the newest id of the new epoch it got.
        missed_again = await away(client, proxy, lambda: publish("missed again", 3))
        got = await next_messages(client, 3)
        assert [(m.kind, m.id) for m in got] == [("message", i) for i in missed_again]
        extra = None
        with contextlib.suppress(TimeoutError):
            extra = await client.next(0.5)
        assert extra is None, f"nothing doubled or reset after the resume, got {extra}"
    finally:
        await client.close()
        proxy.close()
        hub.stop()

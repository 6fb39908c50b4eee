"""The asyncio client (hubbub.client) against the real server, both ports."""
import asyncio
import uuid

import pytest

from hubbub.client import ConnectionClosed, connect
from hubbub.errors import HubError

from .server import HubProcess


async def test_subscribe_publish_iterate(hub, port_kind):
    p = "c" + uuid.uuid4().hex[:8]
    async with connect(hub.url(port_kind, "/ws", "ws"), topics=[f"{p}.a"]) as client:
        await client.subscribe(f"{p}.b.*", filter={"region": "eu"})
        first = await client.publish(f"{p}.a", {"n": 1})
        hub.publish({"topic": f"{p}.b.x", "data": {"n": 2}, "tags": {"region": "eu"}},
                    {"topic": f"{p}.b.x", "data": {"n": 3}, "tags": {"region": "us"}},
                    {"topic": f"{p}.a", "data": {"n": 4}})
        got = []
        async with asyncio.timeout(5):
            async for message in client:
                got.append(message)
                if len(got) == 3:
                    break
        assert [m.data["n"] for m in got] == [1, 2, 4]
        assert got[0].id == first and got[0].topic == f"{p}.a" and got[0].kind == "message"
        assert client.last_id == got[-1].id


async def test_errors_raise_hub_error(hub, port_kind):
    async with connect(hub.url(port_kind, "/ws", "ws")) as client:
        with pytest.raises(HubError) as error:
            await client.subscribe("bad..pattern")
        assert error.value.code == 400 and "empty segment" in error.value.reason
        await client.ping()  # still connected


async def test_reconnects_after_the_hub_restarts(tmp_path):
    first = HubProcess().start(tmp_path)
    url = first.url("native", "/ws", "ws")
    async with connect(url, topics=["re.a"], backoff_base=0.1, backoff_max=0.5) as client:
        first.publish({"topic": "re.a", "data": 1})
        assert (await client.next(5)).data == 1
        first.stop()
        second = HubProcess()
        second.port, second.fast_port = first.port, first.fast_port
        second.env.update(HUBBUB_PORT=str(first.port), HUBBUB_FAST_PORT=str(first.fast_port))
        second.start(tmp_path)
        try:
            async with asyncio.timeout(15):
                while client.reconnects == 0 or not second.stats()["subscriptions"]:
                    await asyncio.sleep(0.1)
            second.publish({"topic": "re.a", "data": 2})
            messages = [await client.next(5), await client.next(5)]
            # The resume point belongs to the old hub: it answers reset, then the live message.
            assert [m.kind for m in messages] == ["reset", "message"] and messages[1].data == 2
        finally:
            second.stop()


async def test_no_reconnect_after_close(hub):
    client = connect(hub.url("asgi", "/ws", "ws"))
    await client.start()
    await client.close()
    with pytest.raises(ConnectionClosed):
        await client.next(5)

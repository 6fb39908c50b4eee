"""The asyncio client (hubbub.client) against the real server, both ports."""
import asyncio
import uuid

import pytest

from hubbub.client import ConnectionClosed, connect
from hubbub.errors import HubError

from .proxy import CuttableProxy
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


# -- failures to connect, and resuming without any message seen (issues 10 and 14) -------
class Misbehaving:
    """A loopback server on ``port`` that accepts TCP and then answers ``reply``
    (nothing: close before the handshake) and closes. Counts the attempts."""

    def __init__(self, port: int, reply: bytes = b"") -> None:
        self.port, self.reply, self.hits, self.server = port, reply, 0, None

    async def __aenter__(self):
        async def handle(reader, writer):
            self.hits += 1
            if self.reply:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(self.reply)
            writer.close()
        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port, reuse_address=True)
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()


async def _wait(predicate, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


async def test_a_peer_closing_before_the_handshake_is_retried_until_the_hub_comes(tmp_path):
    hub = HubProcess()
    async with Misbehaving(hub.fast_port) as peer:
        client = connect(hub.url("native", "/ws", "ws"), topics=["mb.a"], backoff_base=0.05, backoff_max=0.2)
        await client.start()  # no exception, no silent death: it keeps trying
        await _wait(lambda: peer.hits >= 3)
        assert isinstance(client.last_error, ConnectionError)
    hub.start(tmp_path)
    try:
        await _wait(lambda: hub.stats()["subscriptions"] == 1)
        hub.publish({"topic": "mb.a", "data": "finally"})
        async with asyncio.timeout(5):
            async for message in client:
                assert message.kind == "message" and message.data == "finally"
                break
    finally:
        await client.close()
        hub.stop()


async def test_a_502_during_a_deploy_goes_through_backoff(tmp_path):
    first = HubProcess().start(tmp_path)
    client = connect(first.url("native", "/ws", "ws"), topics=["mb.b"], backoff_base=0.05, backoff_max=0.2)
    await client.start()
    first.stop()
    async with Misbehaving(first.fast_port, BAD_GATEWAY) as proxy:
        await _wait(lambda: proxy.hits >= 3)
        assert "502" in repr(client.last_error)
    second = HubProcess()
    second.port, second.fast_port = first.port, first.fast_port
    second.env.update(HUBBUB_PORT=str(first.port), HUBBUB_FAST_PORT=str(first.fast_port))
    second.start(tmp_path)
    try:
        await _wait(lambda: client.reconnects == 1 and second.stats()["subscriptions"] == 1)
        second.publish({"topic": "mb.b", "data": "back"})
        got = [await client.next(5), await client.next(5)]
        assert [m.kind for m in got] == ["reset", "message"] and got[1].data == "back"
    finally:
        await client.close()
        second.stop()


async def test_max_retries_ends_iteration_with_the_reason():
    hub = HubProcess()  # never started: only its free port is used
    async with Misbehaving(hub.fast_port, BAD_GATEWAY):
        client = connect(hub.url("native", "/ws", "ws"), backoff_base=0.01, max_retries=2)
        await client.start()
        with pytest.raises(ConnectionClosed) as closed:
            await client.next(10)
        assert "gave up after 3" in closed.value.reason and "502" in closed.value.reason
        async with asyncio.timeout(1):
            assert [m async for m in client] == []  # iteration ends, it does not hang
        await client.close()


async def test_a_subscription_that_saw_no_message_resumes_from_its_ack_position(hub):
    """Issue 14: nothing received yet, the connection drops, a publication lands
    while the client is away: it is replayed on reconnect, not lost."""
    p = "np" + uuid.uuid4().hex[:8]
    proxy = CuttableProxy(hub.fast_port)
    port = await proxy.start()
    client = connect(f"ws://127.0.0.1:{port}/ws", topics=[f"{p}.a"], backoff_base=0.1, backoff_max=0.3)
    await client.start()
    try:
        proxy.refusing = True
        await proxy.cut()
        hub.publish({"topic": f"{p}.a", "data": "while away"})
        proxy.refusing = False
        message = await client.next(10)
        assert message.kind == "message" and message.data == "while away"
        assert client.reconnects == 1
    finally:
        await client.close()
        proxy.close()


async def test_the_token_argument_wins_over_a_token_in_the_url(tmp_path):
    # The hub refuses a parameter given twice (400): a URL copied with its
    # ?token= still connects with the token passed as an argument.
    from .helpers_user import SECURED_ENV
    from .tokens import token

    hub = HubProcess(dev=False, env=SECURED_ENV).start(tmp_path)
    try:
        url = hub.url("native", "/ws?token=stale.token.value", "ws")
        jwt = token("alice", publish=["user.alice.>"])
        async with connect(url, token=jwt, topics=["user.alice.t"], max_retries=1) as client:
            event_id = await asyncio.wait_for(client.publish("user.alice.t", {"n": 1}), 5)
            message = await client.next(5)
            while message.kind != "message":  # a user's connection hears its unread_count first
                message = await client.next(5)
        assert message.id == event_id and message.data == {"n": 1}
    finally:
        hub.stop()

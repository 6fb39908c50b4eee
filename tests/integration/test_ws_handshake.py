"""A listen-only WebSocket client is subscribed by the time it has its 101.

SPEC 6 lets a client that only listens subscribe with ``topic=`` in the URL
and send nothing: the completed handshake is its only sign that it is
subscribed, so a publication made right after it must reach it. The hub
subscribes before it answers, even when the handshake's checks wait (an
application's auth hook); here the hook is slow on purpose, which made the
window between the 101 and the subscription wide when the hub answered first.
Both ports: the native listener and the ASGI app under a real server (uvicorn
in this process, so the test can publish the moment the client connects).
"""
import asyncio
import contextlib
import json
import socket

import pytest
import uvicorn
import websockets

from hubbub import Config, Hub, HubError, Principal

from .server import ws_connect, ws_messages

HOOK_DELAY = 0.3


async def slow_authenticate(request) -> Principal:
    await asyncio.sleep(HOOK_DELAY)  # an application asking its session store
    if request.cookie("session") == "bad":
        raise HubError(401, "unknown session")
    return Principal(user="alice", subscribe=("news.>",), publish=())


@contextlib.asynccontextmanager
async def asgi_server(hub: Hub):
    """The hub's ASGI app under uvicorn on a loopback socket, on this loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(hub.asgi(), log_level="warning", lifespan="off"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
        sock.close()


@contextlib.asynccontextmanager
async def ws_port(kind: str, tmp_path):
    hub = Hub(Config(dev=True, data_dir=str(tmp_path)), authenticate=slow_authenticate)
    await hub.start()
    try:
        if kind == "native":
            yield hub, (await hub.listen()).port
        else:
            async with asgi_server(hub) as port:
                yield hub, port
    finally:
        await hub.stop()


@pytest.mark.parametrize("kind", ["native", "asgi"])
async def test_a_publication_right_after_the_handshake_reaches_a_query_subscriber(kind, tmp_path):
    async with ws_port(kind, tmp_path) as (hub, port):
        for round_ in range(3):
            async with ws_connect(f"ws://127.0.0.1:{port}/ws?topic=news.{round_}") as ws:
                await hub.publish(f"news.{round_}", round_)  # no pause after the 101
                [message] = await ws_messages(ws, 1)
                assert message["topic"] == f"news.{round_}" and message["data"] == round_


@pytest.mark.parametrize("kind", ["native", "asgi"])
async def test_a_refused_handshake_still_closes_4401_after_the_101(kind, tmp_path):
    async with ws_port(kind, tmp_path) as (hub, port):
        async with ws_connect(f"ws://127.0.0.1:{port}/ws?topic=news.x",
                              additional_headers={"Cookie": "session=bad"}) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    await ws.recv()
        assert closed.value.rcvd.code == 4401 and closed.value.rcvd.reason == "unknown session"


def masked_text_frame(payload: bytes) -> bytes:
    """A client's text frame (RFC 6455: masked), short payloads only."""
    mask = b"\x01\x02\x03\x04"
    return bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_text_frame(reader: asyncio.StreamReader) -> bytes:
    first, second = await reader.readexactly(2)
    assert first == 0x81, first  # an unmasked, final text frame
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    return await reader.readexactly(length)


async def test_a_frame_sent_right_behind_the_upgrade_request_is_answered_after_the_handshake(tmp_path):
    # A client that does not wait for its 101 before its first frame (both in
    # one write): the frame is handled once the session is open, so it is not
    # taken for a missing auth frame (4401) while the auth hook still runs.
    # The native port only: it reads the socket itself. On the ASGI port the
    # server reads it (the app asks for frames only once it has accepted), and
    # uvicorn does not hand over a frame that came with the upgrade request.
    async with ws_port("native", tmp_path) as (hub, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            upgrade = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n").encode()
            writer.write(upgrade + masked_text_frame(b'{"op":"subscribe","topic":"news.p","id":1}'))
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101"), head
                replies = []
                while not any(r["op"] == "ack" for r in replies):  # the user's unread_count may come first
                    replies += [json.loads(line) for line in (await read_text_frame(reader)).split(b"\n")]
            assert {"op": "ack", "id": 1} == {k: v for k, v in replies[-1].items() if k in ("op", "id")}, replies
            assert all(r["op"] in ("ack", "unread_count") for r in replies), replies
        finally:
            writer.close()


@pytest.mark.parametrize("kind", ["native", "asgi"])
async def test_a_client_that_leaves_while_its_handshake_is_checked_leaves_nothing_behind(kind, tmp_path):
    async with ws_port(kind, tmp_path) as (hub, port):
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write((f"GET /ws?topic=news.gone HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            await writer.drain()
            writer.close()  # while the auth hook still runs
        await asyncio.sleep(HOOK_DELAY * 2)  # the hooks have answered
        async with asyncio.timeout(5):  # and whatever they opened is gone again
            while hub.core.connections or await hub.topics():
                await asyncio.sleep(0.05)

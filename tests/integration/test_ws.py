"""The WebSocket contract (SPEC 6) on both ports, with the `websockets` library."""
import asyncio
import json
import socket
import uuid

import pytest
import websockets

from .server import ws_connect, ws_messages


def topic_prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


async def test_subscribe_publish_ack_and_delivery(hub, port_kind):
    p = topic_prefix()
    newest = hub.publish({"topic": f"{p}-before", "data": 0})[0]
    async with ws_connect(hub.url(port_kind, "/ws", "ws")) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": f"{p}.*", "id": 1}))
        # A subscribe ack carries the stream position: the hub's newest id.
        assert await ws_messages(ws, 1) == [{"op": "ack", "id": 1, "position": newest}]
        await ws.send(json.dumps({"op": "publish", "topic": f"{p}.x", "data": {"n": 1}, "id": "p1"}))
        ack, message = await ws_messages(ws, 2)
        assert ack["op"] == "ack" and ack["id"] == "p1" and isinstance(ack["event_id"], str)
        assert message["op"] == "message"
        assert message["topic"] == f"{p}.x" and message["data"] == {"n": 1}
        assert message["id"] == ack["event_id"] and message["event"] == "message"
        assert isinstance(message["ts"], int)


async def test_query_topics_subscribe_at_connect_for_listen_only_clients(hub, port_kind):
    p = topic_prefix()
    async with ws_connect(hub.url(port_kind, f"/ws?topic={p}.a&topic={p}.b.%3E", "ws")) as ws:
        await asyncio.sleep(0.2)
        hub.publish({"topic": f"{p}.a", "data": 1}, {"topic": f"{p}.b.c.d", "data": 2},
                    {"topic": f"{p}.c", "data": 3})
        got = await ws_messages(ws, 2)
        assert [m["data"] for m in got] == [1, 2]


async def test_wildcards_and_filters_end_to_end(hub, port_kind):
    p = topic_prefix()
    async with ws_connect(hub.url(port_kind, "/ws", "ws")) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": f"{p}.*.orders", "id": 1,
                                  "filter": {"region": "eu", "level": ["high", "critical"]}}))
        await ws_messages(ws, 1)
        hub.publish(
            {"topic": f"{p}.shop.orders", "data": "no-tags"},
            {"topic": f"{p}.shop.orders", "data": "us", "tags": {"region": "us", "level": "high"}},
            {"topic": f"{p}.shop.orders", "data": "eu-low", "tags": {"region": "eu", "level": "low"}},
            {"topic": f"{p}.shop.orders", "data": "yes-1", "tags": {"region": "eu", "level": "high"}},
            {"topic": f"{p}.shop.orders.x", "data": "too-deep", "tags": {"region": "eu", "level": "high"}},
            {"topic": f"{p}.shop.orders", "data": "yes-2", "tags": {"region": "eu", "level": "critical"}},
        )
        got = await ws_messages(ws, 2)
        assert [m["data"] for m in got] == ["yes-1", "yes-2"]


async def test_batched_frames_are_newline_delimited(hub, port_kind):
    p = topic_prefix()
    async with ws_connect(hub.url(port_kind, f"/ws?topic={p}", "ws")) as ws:
        await asyncio.sleep(0.2)
        hub.publish(*({"topic": p, "data": i} for i in range(200)))
        frames = []
        messages = []
        async with asyncio.timeout(5):
            while len(messages) < 200:
                frame = await ws.recv()
                frames.append(frame)
                messages.extend(json.loads(line) for line in frame.split("\n"))
        assert [m["data"] for m in messages] == list(range(200))
        assert len(frames) < 200  # one write carried several messages


async def test_unsubscribe_stops_delivery(hub, port_kind):
    p = topic_prefix()
    async with ws_connect(hub.url(port_kind, "/ws", "ws")) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": p, "id": 1}))
        await ws.send(json.dumps({"op": "unsubscribe", "topic": p, "id": 2}))
        sub_ack, unsub_ack = await ws_messages(ws, 2)
        assert sub_ack["op"] == "ack" and sub_ack["id"] == 1 and unsub_ack == {"op": "ack", "id": 2}
        hub.publish({"topic": p, "data": "after"})
        await ws.send(json.dumps({"op": "ping", "id": 3}))
        assert await ws_messages(ws, 1) == [{"op": "pong", "id": 3}]


@pytest.mark.parametrize("frame, code, fragment", [
    ("not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "must be a JSON object"),
    ('{"op": "fly", "id": 9}', 400, "unknown op 'fly'"),
    ('{"id": 9}', 400, "no 'op'"),
    ('{"op": "subscribe", "id": 9}', 400, "needs 'topic'"),
    ('{"op": "subscribe", "topic": "a..b", "id": 9}', 400, "empty segment"),
    ('{"op": "subscribe", "topic": "a.>.b", "id": 9}', 400, "last segment"),
    ('{"op": "subscribe", "topic": 42, "id": 9}', 400, "must be a string"),
    ('{"op": "subscribe", "topic": "a", "filter": {"k": 1}, "id": 9}', 400, "must be a string or a list"),
    ('{"op": "publish", "topic": "a.*", "data": 1, "id": 9}', 400, "wildcards are only for"),
    ('{"op": "publish", "topic": "a", "id": 9}', 400, "needs 'data'"),
    ('{"op": "publish", "topic": "$sys.x", "data": 1, "id": 9}', 403, "not allowed to publish"),
    ('{"op": "auth", "id": 9}', 400, "needs a 'token'"),  # upgrades are in test_presence.py
    ('{"op": "presence", "id": 9}', 400, "presence needs 'topic'"),
    ('{"op": "presence", "topic": "a..b", "id": 9}', 400, "empty segment"),
    # A field the op does not take is refused, never dropped in silence.
    ('{"op": "publish", "topic": "a", "data": 1, "priority": "critical", "id": 9}', 400,
     "publish does not take 'priority'; it takes data, ephemeral, event, topic"),
    ('{"op": "subscribe", "topic": "a", "filters": "k:v", "id": 9}', 400, "subscribe does not take 'filters'"),
    ('{"op": "unsubscribe", "topic": "a", "user": "u", "id": 9}', 400, "unsubscribe does not take 'user'"),
    ('{"op": "refresh", "token": "t", "exp": 1, "id": 9}', 400, "refresh does not take 'exp'"),
    ('{"op": "publish", "topic": "a", "data": 1, "k1": 1, "k2": 2, "k3": 3, "k4": 4, "id": 9}', 400,
     "does not take 'k1', 'k2', 'k3' and 1 more"),
])
async def test_bad_frames_get_an_error_and_the_connection_stays(hub, port_kind, frame, code, fragment):
    p = topic_prefix()
    async with ws_connect(hub.url(port_kind, f"/ws?topic={p}", "ws")) as ws:
        await ws.send(frame)
        [error] = await ws_messages(ws, 1)
        assert error["op"] == "error" and error["code"] == code and fragment in error["reason"]
        if '"id"' in frame and not frame.startswith("["):
            assert error["id"] == 9
        hub.publish({"topic": p, "data": "still here"})
        assert (await ws_messages(ws, 1))[0]["data"] == "still here"


async def test_bad_query_topic_is_an_error_frame_not_a_close(hub, port_kind):
    p = topic_prefix()
    async with ws_connect(hub.url(port_kind, f"/ws?topic=bad..topic&topic={p}", "ws")) as ws:
        [error] = await ws_messages(ws, 1)
        assert error["op"] == "error" and error["code"] == 400
        hub.publish({"topic": p, "data": "ok"})
        assert (await ws_messages(ws, 1))[0]["data"] == "ok"


async def test_oversize_frame_closes_1009_and_others_are_untouched(hub, port_kind):
    p = topic_prefix()
    async with ws_connect(hub.url(port_kind, f"/ws?topic={p}", "ws")) as bystander:
        async with ws_connect(hub.url(port_kind, "/ws", "ws"), max_size=None) as ws:
            await ws.send(json.dumps({"op": "publish", "topic": p, "data": "x" * 70_000}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws_messages(ws, 1)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        hub.publish({"topic": p, "data": "fine"})
        assert (await ws_messages(bystander, 1))[0]["data"] == "fine"


async def test_binary_frame_with_invalid_utf8_is_an_error(hub, port_kind):
    async with ws_connect(hub.url(port_kind, "/ws", "ws")) as ws:
        await ws.send(b'{"op": "ping", "x": "\xff\xfe"}')
        [error] = await ws_messages(ws, 1)
        assert error["op"] == "error" and error["code"] == 400


async def test_the_asgi_port_pings_idle_connections_in_frames(hub):
    # Granian hides protocol pings from the app, so PORT pings with an op;
    # the native port pings at the protocol level (the test below).
    async with ws_connect(hub.url("asgi", "/ws", "ws")) as ws:
        [ping] = await ws_messages(ws, 1, timeout=5)  # the session hub heartbeats every second
        assert ping == {"op": "ping"}
        await ws.send('{"op": "pong"}')


async def test_native_port_pings_and_drops_a_peer_that_never_pongs(hub):
    """Protocol-level liveness on the fast port: a silent peer is pinged, then dropped
    with a close frame that says why (SPEC 10: 4410 no pong)."""
    from picows import WSListener, WSMsgType, ws_connect as picows_connect

    class Silent(WSListener):
        def __init__(self):
            self.pings = 0
            self.close_code = None
            self.gone = asyncio.get_running_loop().create_future()

        def on_ws_frame(self, transport, frame):
            if frame.msg_type == WSMsgType.PING:
                self.pings += 1
            elif frame.msg_type == WSMsgType.CLOSE:
                self.close_code = frame.get_close_code()

        def on_ws_disconnected(self, transport):
            self.gone.set_result(True)

    transport, listener = await picows_connect(Silent, hub.url("native", "/ws", "ws"),
                                               enable_auto_pong=False)
    try:
        await asyncio.wait_for(listener.gone, 10)  # heartbeat is 1 s: ping, no pong, drop
    finally:
        transport.disconnect()
    assert listener.pings >= 1
    assert listener.close_code == 4410


async def test_client_disconnect_frees_subscriptions(hub, port_kind):
    p = topic_prefix()
    before = hub.stats()["subscriptions"]
    async with ws_connect(hub.url(port_kind, f"/ws?topic={p}.a&topic={p}.b", "ws")):
        await asyncio.sleep(0.3)
        assert hub.stats()["subscriptions"] >= before + 2
    for _ in range(50):
        if hub.stats()["subscriptions"] <= before:
            break
        await asyncio.sleep(0.1)
    assert hub.stats()["subscriptions"] <= before


def test_raw_socket_garbage_does_not_hurt_the_hub(hub, port_kind):
    port = hub.port if port_kind == "asgi" else hub.fast_port
    for payload in (b"\x00\xff garbage\r\n\r\n", b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
                    b"GET /ws HTTP/1.1\r\n" + b"X: y\r\n" * 2000 + b"\r\n", b"GET / HTTP/1.1\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            try:
                s.recv(4096)
            except OSError:
                pass
    assert hub.stats()["status"] == "ok"


def _masked_text_frame(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + body


async def test_invalid_utf8_text_frame_hurts_nobody_else(hub, port_kind):
    p = topic_prefix()
    port = hub.port if port_kind == "asgi" else hub.fast_port
    async with ws_connect(hub.url(port_kind, f"/ws?topic={p}", "ws")) as bystander:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            assert b" 101 " in head.split(b"\r\n")[0]
            s.sendall(_masked_text_frame(b'{"op": "ping", "x": "\xff\xfe"}'))
            reply = head.split(b"\r\n\r\n", 1)[1]
            try:
                while len(reply) < 2:
                    reply += s.recv(4096)
            except OSError:
                pass
            # Either an error frame (the hub parsed the bytes) or a 1007 close
            # (the server's WebSocket layer refused the text): never a crash.
            opcode = reply[0] & 0x0F if reply else None
            assert opcode in (1, 8)
            if opcode == 1:
                assert b'"code":400' in reply
        hub.publish({"topic": p, "data": "alive"})
        assert (await ws_messages(bystander, 1))[0]["data"] == "alive"

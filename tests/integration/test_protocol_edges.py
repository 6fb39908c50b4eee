"""RFC 6455 and HTTP edges found by the hostile-input pass, through the real server.

Raw sockets, so the frames can be exactly as wrong as a hostile client makes them.
"""
import json
import os
import socket
import struct

import httpx
import pytest

from .server import ws_connect, ws_messages

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    """A masked client frame."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = bytes((first, 0x80 | len(payload)))
    else:
        head = bytes((first, 0x80 | 126)) + struct.pack("!H", len(payload))
    return head + mask + body


def raw_ws(port: int) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(HANDSHAKE)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, rest = data.split(b"\r\n\r\n", 1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    return s, rest


def close_code(s: socket.socket, already: bytes = b"") -> int | None:
    """Read frames until a close frame; its status code (None if the socket just ended)."""
    data = already
    while True:
        while len(data) >= 2:
            length = data[1] & 0x7F
            offset = 2
            if length == 126:
                length, offset = struct.unpack("!H", data[2:4])[0], 4
            elif length == 127:
                length, offset = struct.unpack("!Q", data[2:10])[0], 10
            if len(data) < offset + length:
                break
            opcode, payload = data[0] & 0x0F, data[offset:offset + length]
            data = data[offset + length:]
            if opcode == 8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        try:
            chunk = s.recv(4096)
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk


@pytest.mark.parametrize("frames,code", [
    ([frame(1, b'{"op":"ping"}', rsv1=True)], 1002),
    ([frame(1, b'{"op":', fin=False), frame(1, b'"ping"}')], 1002),
    ([frame(0, b'{"op":"ping"}')], 1002),
    ([frame(1, b'{"op": "ping", "x": "\xff\xfe"}')], 1007),
], ids=["rsv1", "new-message-inside-fragments", "orphan-continuation", "invalid-utf8-text"])
def test_fast_port_fails_protocol_violations(hub, frames, code):
    s, rest = raw_ws(hub.fast_port)
    with s:
        s.sendall(b"".join(frames))
        assert close_code(s, rest) == code


def test_fast_port_still_accepts_a_proper_fragmented_message(hub):
    s, rest = raw_ws(hub.fast_port)
    with s:
        s.sendall(frame(1, b'{"op":"ping",', fin=False) + frame(0, b'"id":7}'))
        data = rest
        while b"pong" not in data:
            data += s.recv(4096)
        assert b'{"op":"pong","id":7}' in data


def test_asgi_port_ends_a_connection_that_sends_invalid_utf8_text(hub):
    """Granian validates text frames itself and drops the connection (it sends
    no 1007: documented); what matters is that it ends and hurts nobody."""
    s, rest = raw_ws(hub.port)
    with s:
        s.sendall(frame(1, b'{"op": "ping", "x": "\xff\xfe"}'))
        assert close_code(s, rest) in (None, 1007)
    assert hub.stats()["status"] == "ok"


def test_a_whole_oversize_head_in_one_read_is_431_on_the_fast_port(hub):
    head = b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"y" * (20 << 10) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", hub.fast_port), timeout=5) as s:
        s.sendall(head)
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize("topic", [1, None, [], "", "x" * 300, "a..b", "a.>.b"])
async def test_unsubscribe_with_an_invalid_topic_is_an_error(hub, port_kind, topic):
    async with ws_connect(hub.url(port_kind, "/ws", "ws")) as ws:
        await ws.send(json.dumps({"op": "unsubscribe", "topic": topic, "id": 3}))
        [reply] = await ws_messages(ws, 1)
        assert reply["op"] == "error" and reply["code"] == 400 and reply["id"] == 3, reply


async def test_unsubscribe_of_a_valid_topic_is_acked(hub, port_kind):
    async with ws_connect(hub.url(port_kind, "/ws?topic=u.a", "ws")) as ws:
        await ws.send(json.dumps({"op": "unsubscribe", "topic": "u.a", "id": 4}))
        [reply] = await ws_messages(ws, 1)
        assert reply == {"op": "ack", "id": 4}


def test_malformed_frames_cannot_flood_the_log(make_hub):
    """picows logs an ERROR per malformed frame; the hub lets at most a few through a minute."""
    hub = make_hub()
    for _ in range(40):
        with socket.create_connection(("127.0.0.1", hub.fast_port), timeout=5) as s:
            s.sendall(HANDSHAKE)
            s.recv(4096)
            s.sendall(b"\x81\x05hello")  # unmasked: picows' parser refuses it
            close_code(s)
    assert httpx.get(hub.base + "/healthz").status_code == 200
    lines = [line for line in hub.output().splitlines() if "WS parser error" in line]
    assert 1 <= len(lines) <= 10, lines

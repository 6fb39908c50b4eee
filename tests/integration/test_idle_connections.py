"""What an idle connection on the fast port keeps (issue 20).

A hub in this process on uvloop (as `hubbub serve` runs it), real sockets:
picows WebSocket clients and raw-socket SSE readers. Once they are
connected, subscribed and have received a publication, the server side of
each keeps no sniffer, nothing of picows' handshake, no outbox storage, and
shares its flusher and close callbacks with every other connection; and
each still gets what is published after that (the memory cuts change no
behaviour). The byte counts are in bench/idle_memory.py and bench/RESULTS.md.
"""
import asyncio
import gc
import time

import uvloop
from picows import WSListener, WSMsgType, ws_connect

from hubbub import Config, Hub
from hubbub.transports import native

N = 12
TOPIC = "idle.t"


class Reader(WSListener):
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.pongs: list[bytes] = []
        self.close: tuple[int, bytes] | None = None

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.frames.append(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.PONG:
            self.pongs.append(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close = (frame.get_close_code(), frame.get_close_message())


class SSEReader(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = b""

    def connection_made(self, transport) -> None:
        transport.write(f"GET /sse?topic={TOPIC} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        self.data += data


async def until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def alive(kind: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


async def scenario() -> None:
    hub = Hub(Config.from_env(dev=True, heartbeat=60))
    server = await hub.listen("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    ws_clients, sse_clients, sse_transports = [], [], []
    try:
        for _ in range(N):
            transport, reader = await ws_connect(Reader, f"ws://127.0.0.1:{server.port}/ws?topic={TOPIC}")
            ws_clients.append((transport, reader))
            sse_transport, sse_reader = await loop.create_connection(SSEReader, "127.0.0.1", server.port)
            sse_clients.append(sse_reader)
            sse_transports.append(sse_transport)
        await until(lambda: len(hub.core.connections) == 2 * N, "every connection")
        await until(lambda: all(b"event: connected" in r.data for r in sse_clients), "the SSE heads")
        await hub.publish(TOPIC, {"n": 1})
        await until(lambda: all(r.frames for _, r in ws_clients), "the first publication over WS")
        await until(lambda: all(b'"n":1' in r.data for r in sse_clients), "the first publication over SSE")

        conns = list(hub.core.connections.values())
        # The sniffer handed every socket over and nothing holds it (uvloop
        # would keep its data_received: see native._Released).
        assert alive(native._Sniffer) == 0
        # Delivered and drained: no outbox keeps lane storage; no control list.
        assert not any(c.outbox.allocated for c in conns)
        assert all(c.control == () for c in conns)
        # One flusher entry point and one close callback for all of them.
        assert len({id(c.schedule) for c in conns}) == 1
        assert len({id(c.on_closed) for c in conns}) == 1
        # One pattern string for every subscription of the topic (interned).
        assert len({id(pattern) for c in conns for pattern in c.subscriptions}) == 1
        # A WS connection's transport is its picows listener too (one object).
        ws_conns = [c for c in conns if isinstance(c.transport, native.NativeWSTransport)]
        assert all(c.transport.conn is c for c in ws_conns)
        sse_conns = [c for c in conns if isinstance(c.transport, native._SSEStream)]
        assert len(ws_conns) == len(sse_conns) == N
        for conn in ws_conns:  # picows' copies of the handshake are emptied
            request, response = conn.transport.ws.request, conn.transport.ws.response
            assert len(request.headers) == 0 and request.path == b""
            assert len(response.headers) == 0
        if native.shrink_write_buffer is not None:  # and its 1 KiB write buffer is 64 bytes
            from hubbub._picows_buffer import write_buffer_capacity

            assert {write_buffer_capacity(c.transport.ws) for c in ws_conns} == {native.PICOWS_WRITE_BUFFER}

        # And they still work: a second publication reaches every client.
        await hub.publish(TOPIC, {"n": 2})
        await until(lambda: all(len(r.frames) == 2 for _, r in ws_clients), "the second publication over WS")
        await until(lambda: all(b'"n":2' in r.data for r in sse_clients), "the second publication over SSE")
        assert all(b'"n":2' in r.frames[1] for _, r in ws_clients)
        # A control reply after the release (a ping op) is answered too.
        ws_clients[0][0].send(WSMsgType.TEXT, b'{"op":"ping","id":7}')
        await until(lambda: len(ws_clients[0][1].frames) == 3, "the pong")
        assert b'"pong"' in ws_clients[0][1].frames[2]
        # picows' own frames through the small write buffer, which grows for
        # the ones that need more: a protocol ping's pong (its payload echoed)
        # and a close whose reason is longer than the 64 bytes it starts with.
        transport, reader = ws_clients[1]
        transport.send_ping(b"p" * 100)
        await until(lambda: reader.pongs, "picows' pong")
        assert reader.pongs == [b"p" * 100]
        reason = "r" * 120
        ws_conns[1].close(4000, reason)
        await until(lambda: reader.close is not None, "picows' close frame")
        assert reader.close == (4000, reason.encode())
    finally:
        for transport, _ in ws_clients:
            transport.disconnect()
        for transport in sse_transports:
            transport.close()
        await hub.stop()


def test_an_idle_connection_keeps_only_what_it_uses():
    uvloop.run(scenario())

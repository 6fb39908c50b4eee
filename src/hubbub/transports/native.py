"""The native fast listener: ``/ws`` over picows and ``/sse`` over a minimal HTTP/1.1 streamer.

One uvloop server socket; each new connection starts in ``_Sniffer``, which
reads the request head and then either hands the socket to picows (a
WebSocket upgrade to ``/ws``: the bytes already read are fed to picows'
protocol as if it had read them) or turns into an SSE stream.

Writers never await. A connection whose outbox went from idle to busy is
flushed once, at the end of the current loop turn (``call_soon``), with
everything queued by then in ONE write. While the kernel buffer of a slow
client is full (transport paused), its outbox absorbs the backlog under its
bounds, so the cost of a slow client stays with that client.

SSE responses are delimited by connection close (``Connection: close``, no
chunked framing), so the queued event bytes go to the socket untouched.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import orjson
from picows import WSAutoPingStrategy, WSListener, WSMsgType
from picows.picows import WSProtocol

from .. import wire
from ..accesslog import log_access
from ..auth import ANONYMOUS, Request
from ..connection import CLOSE_SHUTDOWN, CLOSE_TOO_BIG, Connection
from ..cors import CorsPolicy, head_lines
from ..ops import WSSession
from .http import SSE_HEADERS, error_body, open_sse

if TYPE_CHECKING:
    from ..hub import Hub

log = logging.getLogger("hubbub.native")
picows_log = logging.getLogger("hubbub.native.picows")
picows_log.setLevel(logging.WARNING)  # picows logs every accepted connection at INFO
# Handed to picows as an adapter, not a Logger: given a Logger, picows builds
# a child logger for every connection (about 2 KiB each, never freed).
picows_logger = logging.LoggerAdapter(picows_log, {})

MAX_HEAD_BYTES = 16 << 10
HEAD_TIMEOUT = 10.0  # seconds to send a complete request head
MAX_HEADERS = 100
# picows' read buffer starts at this size and grows when a frame needs it:
# clients mostly listen, so small keeps idle connections cheap (16 KiB was
# most of the RSS of an idle connection).
READ_BUFFER_INITIAL = 2048
CLOSE_TIMEOUT = 2.0  # seconds a peer has to answer our close frame
HIGH_WATER = 256 << 10  # bytes in the kernel-side write buffer before we stop feeding it
SSE_HEAD = b"HTTP/1.1 200 OK\r\n" + b"".join(
    f"{k}: {v}\r\n".encode() for k, v in SSE_HEADERS) + b"connection: close\r\n\r\n"
_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


def http_response(status: int, payload: object, headers: list[tuple[str, str]] = ()) -> bytes:
    body = orjson.dumps(payload)
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "content-type: application/json", f"content-length: {len(body)}", "connection: close",
            *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class NativeServer:
    def __init__(self, hub: "Hub") -> None:
        self.hub = hub
        self.cors = CorsPolicy.of(hub.config)
        self.server: asyncio.base_events.Server | None = None
        self.sse_connections: set[NativeSSEConnection] = set()
        self._heartbeat_task: asyncio.Task | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._to_flush: list = []
        self._flush_handle: asyncio.Handle | None = None

    async def start(self, host: str, port: int, ssl=None, reuse_port: bool = False) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Sniffer(self), host, port, ssl=ssl, reuse_port=reuse_port, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]
        self._heartbeat_task = asyncio.ensure_future(self._sse_heartbeats())

    def schedule(self, conn) -> None:
        """Flush ``conn`` at the end of this loop turn, with every other woken
        connection: one callback a turn, however many connections."""
        self._to_flush.append(conn)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush_all)

    def _flush_all(self) -> None:
        self._flush_handle = None
        connections, self._to_flush = self._to_flush, []
        for conn in connections:
            conn.flush()

    async def close(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _sse_heartbeats(self) -> None:
        # One timer for all SSE streams: a ping to each that wrote nothing
        # since the last round.
        heartbeat = self.hub.config.heartbeat
        while True:
            await asyncio.sleep(heartbeat)
            for conn in list(self.sse_connections):
                if conn.idle:
                    conn.write_raw(wire.SSE_PING)
                conn.idle = True

    def ws_protocol(self, listener_factory) -> WSProtocol:
        """picows' own server protocol, configured as ``ws_create_server`` would."""
        heartbeat = self.hub.config.heartbeat
        return WSProtocol(
            None, None, False, listener_factory, picows_logger,
            True,  # disconnect on exception
            5.0,   # handshake timeout
            True, heartbeat, heartbeat, WSAutoPingStrategy.PING_WHEN_IDLE,  # protocol-level liveness
            True,  # auto pong
            self.hub.config.max_message_bytes,
            None, READ_BUFFER_INITIAL,
        )


class _Sniffer(asyncio.Protocol):
    """Reads one request head, then becomes the protocol that serves it."""

    def __init__(self, server: NativeServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        # A client that never finishes its request head must not hold a socket.
        self.head_timer = asyncio.get_running_loop().call_later(self.server.hub.config.head_timeout,
                                                                transport.abort)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._reply(431, "request head too large")
            return
        self.head_timer.cancel()
        try:
            method, target, headers = _parse_head(bytes(self.buffer[:end]))
        except ValueError as error:
            self._reply(400, f"malformed request: {error}")
            return
        url = urlsplit(target)
        client = (self.transport.get_extra_info("peername") or ("-",))[0]
        if self.server.hub.config.access_log:
            log_access(client, method, url.path, url.query, "-", "native")
        request = Request(path=url.path, headers=headers,
                          query=parse_qs(url.query, keep_blank_values=True), client=client)
        if url.path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
            if not self.server.cors.ws_allowed(headers):  # cross-site WebSocket hijacking
                self._reply(403, "origin not allowed")
                return
            if self.server.hub.draining:  # a load balancer sees 503, not a closed socket
                self._reply(503, "hub is shutting down")
                return
            self._to_websocket(request)
        elif url.path == "/sse" and method == "OPTIONS":  # CORS preflight
            status, cors = self.server.cors.preflight(headers)
            self.transport.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'No Content')}\r\n".encode()
                                 + head_lines([*cors, ("connection", "close")]) + b"\r\n")
            self.transport.close()
        elif url.path == "/sse" and method == "GET":
            stream = _SSEStream(self.server, request, self.transport)
            self.transport.set_protocol(stream)
            stream.start()
        elif url.path == "/sse":
            self._reply(405, "use GET for /sse")
        elif url.path == "/ws":
            self._reply(400, "/ws needs a WebSocket upgrade")
        else:
            self._reply(404, f"no such endpoint {url.path} on the fast port")

    def _to_websocket(self, request: Request) -> None:
        server = self.server
        protocol = server.ws_protocol(lambda upgrade: _WSHandler(server, request))
        transport = self.transport
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data = bytes(self.buffer)
        while data:
            buf = protocol.get_buffer(len(data))
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            protocol.buffer_updated(n)
            data = data[n:]

    def _reply(self, status: int, reason: str) -> None:
        self.transport.write(http_response(status, error_body(status, reason)))
        self.transport.close()

    def connection_lost(self, exc) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("bad request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise ValueError("too many headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"bad header line {line[:40]!r}")
        headers[name.lower()] = value.strip()
    return parts[0], parts[1], headers


class _NativeConnection(Connection):
    """A connection whose writer is a plain function: woken, it is flushed at
    the end of the loop turn (with all others, see NativeServer.schedule)."""

    def __init__(self, hub: "Hub", fmt: int, principal, server: NativeServer, transport) -> None:
        super().__init__(hub, fmt, principal)
        self.server = server
        self.socket_transport = transport
        self.scheduled = False

    def wake(self) -> None:
        if not self.scheduled and not self.closed:
            self.scheduled = True
            self.server.schedule(self)

    def flush(self) -> None:
        self.scheduled = False
        transport = self.socket_transport
        if self.closed or transport.is_closing():
            return
        while transport.get_write_buffer_size() < HIGH_WATER:
            batch = self.next_batch()
            if not batch:
                self.outbox.armed = True
                return
            self.write(batch)
        # Paused: the outbox keeps the backlog; resume_writing flushes again.

    def write(self, batch: bytes) -> None:
        raise NotImplementedError


# -- SSE ------------------------------------------------------------------------
class NativeSSEConnection(_NativeConnection):

    def __init__(self, hub: "Hub", principal, stream: "_SSEStream") -> None:
        super().__init__(hub, wire.SSE, principal, stream.server, stream.transport)
        self.stream = stream
        self.idle = True

    def write(self, batch: bytes) -> None:
        self.socket_transport.write(batch)  # close-delimited body: the bytes as queued
        self.idle = False

    def write_raw(self, data: bytes) -> None:
        if not self.closed:
            self.socket_transport.write(data)

    def closing(self) -> None:
        self.server.sse_connections.discard(self)
        self.socket_transport.close()


class _SSEStream(asyncio.Protocol):
    def __init__(self, server: NativeServer, request: Request, transport) -> None:
        self.server = server
        self.request = request
        self.transport = transport
        self.conn: NativeSSEConnection | None = None
        self.gone = False

    def start(self) -> None:
        asyncio.ensure_future(self._open())

    async def _open(self) -> None:
        hub = self.server.hub
        cors = self.server.cors.response_headers(self.request.headers)
        conn, opening = await open_sse(hub, self.request, lambda p: NativeSSEConnection(hub, p, self))
        if self.gone:
            if conn is not None:
                hub.detach(conn)
            return
        if conn is None:
            status, payload, headers = opening
            self.transport.write(http_response(status, payload, [*headers, *cors]))
            self.transport.close()
            return
        self.conn = conn
        self.server.sse_connections.add(conn)
        self.transport.write(SSE_HEAD[:-2] + head_lines(cors) + b"\r\n" + opening)
        conn.flush()

    def data_received(self, data: bytes) -> None:
        pass  # nothing more is expected from an SSE client

    def pause_writing(self) -> None:
        pass  # flush() checks the buffer size itself

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.wake()

    def connection_lost(self, exc) -> None:
        self.gone = True
        if self.conn is not None:
            self.conn.close(CLOSE_SHUTDOWN)


# -- WebSocket --------------------------------------------------------------------
_SHORT_HEADERS = tuple(bytes((0x81, length)) for length in range(126))
# Below this a batch is copied behind its header into one write(); above it
# the two go to writelines() uncopied. One write() was the cheaper call in
# py-spy profiles of small fan-out frames.
COPY_BELOW = 16 << 10


def text_frame_header(length: int) -> bytes:
    """RFC 6455 header of an unmasked, final text frame of ``length`` bytes."""
    if length < 126:
        return _SHORT_HEADERS[length]
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


class NativeWSConnection(_NativeConnection):

    def __init__(self, hub: "Hub", ws, server: NativeServer) -> None:
        super().__init__(hub, wire.WS, ANONYMOUS, server, ws.underlying_transport)
        self.ws = ws

    def write(self, batch: bytes) -> None:
        # Data frames are framed here and written to the socket's transport
        # directly: the shared frame bytes go out as they are, and this avoids
        # picows' send() for payloads over 8 KiB, whose header is a view of a
        # reused buffer that a paused transport keeps and the next send
        # overwrites (corrupt frames under backpressure, seen in picows 2.3.1).
        size = len(batch)
        if size < COPY_BELOW:
            self.socket_transport.write(text_frame_header(size) + batch)
        else:
            self.socket_transport.writelines((text_frame_header(size), batch))

    def closing(self) -> None:
        if self.control:  # the error explaining the close goes first
            self.write(self.take_owed())
        self.ws.send_close(self.close_code, self.close_reason.encode()[:120])
        # Let the peer answer the close (its reply disconnects, see _WSHandler):
        # cutting the socket now could reset it before it reads our close frame.
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.ws.disconnect)


class _WSHandler(WSListener):
    def __init__(self, server: NativeServer, request: Request) -> None:
        self.server = server
        self.request = request
        self.conn: NativeWSConnection | None = None
        self.session: WSSession | None = None
        self.fragments: list[bytes] | None = None

    def on_ws_connected(self, transport) -> None:
        hub = self.server.hub
        if hub.draining:
            transport.send_close(CLOSE_SHUTDOWN)
            transport.disconnect()
            return
        self.conn = NativeWSConnection(hub, transport, self.server)
        self.session = WSSession(hub, self.conn, self.request)
        self.request = None
        asyncio.ensure_future(self.session.open())

    def on_ws_frame(self, transport, frame) -> None:
        session = self.session
        if session is None:
            return
        kind = frame.msg_type
        if kind == WSMsgType.TEXT or kind == WSMsgType.BINARY:
            if frame.fin:
                session.on_frame(frame.get_payload_as_bytes())
            else:
                self.fragments = [frame.get_payload_as_bytes()]
        elif kind == WSMsgType.CONTINUATION and self.fragments is not None:
            self.fragments.append(frame.get_payload_as_bytes())
            size = sum(map(len, self.fragments))
            if size > self.server.hub.config.max_message_bytes:
                self.fragments = None
                self.conn.close(CLOSE_TOO_BIG, "message over MAX_MESSAGE_BYTES")
            elif frame.fin:
                data, self.fragments = b"".join(self.fragments), None
                session.on_frame(data)
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def pause_writing(self) -> None:
        pass  # flush() checks the buffer size itself

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.wake()

    def on_ws_disconnected(self, transport) -> None:
        if self.conn is not None:
            self.conn.closed = True
            self.session.close()

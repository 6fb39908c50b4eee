"""The native fast listener: ``/ws`` over picows and ``/sse`` over a minimal HTTP/1.1 streamer.

One uvloop server socket; each new connection starts in ``_Sniffer``, which
reads the request head and then either hands the socket to picows (a
WebSocket upgrade to ``/ws``: the bytes already read are fed to picows'
protocol as if it had read them) or turns into an SSE stream. The probes
(``/healthz``, ``/readyz``, ``/livez``) are answered here too, by the same
endpoint as on the ASGI port, so a probe of either port tells the truth.

The transports here only write bytes to the socket: the connection is the
writer (``core/connection.py``) and the core's flusher decides when it writes.
While the kernel buffer of a slow client is over the high-water mark, its
outbox absorbs the backlog under its bounds, so the cost of a slow client
stays with that client; ``resume_writing`` wakes the writer again.

SSE responses are delimited by connection close (``Connection: close``, no
chunked framing), so the queued event bytes go to the socket untouched.

Idle connections are most connections, so what each one keeps is counted
(bench/idle_memory.py, issue 20): slotted objects, no per-connection
closures or bound methods where a shared one works, and nothing kept from
the handshake that Hubbub does not read again.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import picows
from multidict import CIMultiDict, CIMultiDictProxy  # picows' header type (one of its dependencies)
from picows import WSAutoPingStrategy, WSListener, WSMsgType
from picows.picows import WSProtocol

from .. import wire
from .._core import FRAME_RAW, FRAME_WS_TEXT, NATIVE, register_socket_transport, write_ws_text
from ..accesslog import log_access
from ..auth import ANONYMOUS, Request
from ..core.connection import CLOSE_INTERNAL, CLOSE_PROTOCOL, CLOSE_SHUTDOWN, CLOSE_TOO_BIG, Connection
from ..cors import CorsPolicy, head_lines
from ..endpoints.health import PATHS as HEALTH_PATHS
from ..endpoints.responses import Response, encode, error_body
from ..logutil import RateLimitFilter
from .streams import SSEHeartbeat, WakesWriter
from .ws_session import WSSession, check_handshake

if TYPE_CHECKING:
    from . import Served

log = logging.getLogger("hubbub.native")
picows_log = logging.getLogger("hubbub.native.picows")
picows_log.setLevel(logging.WARNING)  # picows logs every accepted connection at INFO
picows_log.addFilter(RateLimitFilter())  # and an ERROR per malformed frame, which clients choose
# Handed to picows as an adapter, not a Logger: given a Logger, picows builds
# a child logger for every connection (about 2 KiB each, never freed).
picows_logger = logging.LoggerAdapter(picows_log, {})


def _write_buffer_shrinker():
    """``shrink_write_buffer(transport, capacity)`` from the compiled core, or
    None: without the compiled core, or where it was built against another
    picows release than the one installed (its struct layout may differ)."""
    if not NATIVE:
        return None
    try:
        from .._picows_buffer import BUILT_FOR, shrink_write_buffer
    except (ImportError, ValueError):  # not built; or Cython's check of picows' type size refused it
        return None
    return shrink_write_buffer if BUILT_FOR == picows.__version__ else None


# picows' write buffer of an open connection: 64 bytes instead of its 1 KiB
# (a header or a small frame of picows' own; it grows when one needs more).
# None where the swap is unavailable: picows keeps its own.
shrink_write_buffer = _write_buffer_shrinker()
PICOWS_WRITE_BUFFER = 64

MAX_HEAD_BYTES = 16 << 10
MAX_HEADERS = 100
# picows' read buffer starts at this size and grows when a frame needs it:
# clients mostly listen, so small keeps idle connections cheap (16 KiB was
# most of the RSS of an idle connection).
READ_BUFFER_INITIAL = 2048
CLOSE_TIMEOUT = 2.0  # seconds a peer has to answer our close frame
SSE_HEAD = b"HTTP/1.1 200 OK\r\n" + b"".join(
    f"{k}: {v}\r\n".encode() for k, v in wire.SSE_HEADERS) + b"connection: close\r\n\r\n"
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


def http_response(response: Response) -> bytes:
    """A whole HTTP/1.1 answer, after which the connection closes."""
    status, body, headers = encode(response)
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n".encode()
    return head + head_lines([*headers, ("connection", "close")]) + b"\r\n" + body


class NativeServer:
    def __init__(self, hub: "Served") -> None:
        self.hub = hub
        self.cors = CorsPolicy.of(hub.config)
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        # One float for every picows protocol (each would otherwise keep its own, 24 B).
        self.liveness_period = float(hub.config.liveness_period)

    async def start(self, host: str, port: int, ssl=None, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Sniffer(self), host, port, ssl=ssl, reuse_port=reuse_port, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def ws_protocol(self, listener_factory) -> WSProtocol:
        """picows' own server protocol, configured as ``ws_create_server`` would."""
        heartbeat = self.liveness_period  # unused while picows' auto-ping is off
        return WSProtocol(
            None, None, False, listener_factory, picows_logger,
            True,  # disconnect on exception
            5.0,   # handshake timeout
            # No picows auto-ping: it runs a task per connection (~700 B of
            # every idle connection). The hub's heartbeat round pings instead
            # (NativeWSTransport.heartbeat).
            False, heartbeat, heartbeat, WSAutoPingStrategy.PING_WHEN_IDLE,
            True,  # auto pong
            self.hub.config.max_message_bytes,
            None, READ_BUFFER_INITIAL,
        )


class _Released(asyncio.Protocol):
    """Where the socket's transport points for a moment while the sniffer hands
    it to picows. uvloop keeps the last ``data_received`` it was given, and a
    buffered protocol (picows') has none to replace it with: the sniffer's
    bound method would keep the sniffer alive for the connection's life.
    This one is shared, and its ``data_received`` is a plain function."""

    __slots__ = ()
    data_received = staticmethod(lambda data: None)


_RELEASED = _Released()
# What picows' handshake objects hold once released (see forget_handshake).
_NO_HEADERS = CIMultiDictProxy(CIMultiDict())


def forget_handshake(ws) -> None:
    """Empty the upgrade request and 101 response that picows keeps for the
    connection's life (``WSTransport.request``/``response``): their headers
    are ~2 KiB of every connection, more with a browser's, and the request's
    path may carry a token. Hubbub parsed the request itself (``_Sniffer``)
    and reads neither again; the two objects stay, empty."""
    request, response = ws.request, ws.response
    if request is not None:
        request.method = request.path = request.version = b""
        request.headers = _NO_HEADERS
    if response is not None:
        response.version = b""
        response.headers = _NO_HEADERS


def _feed(protocol: WSProtocol, data: bytes) -> None:
    """Hand picows' protocol bytes read before it had the socket, as if it had read them."""
    while data:
        buf = protocol.get_buffer(len(data))
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        protocol.buffer_updated(n)
        data = data[n:]


class _Sniffer(asyncio.Protocol):
    """Reads one request head, then becomes the protocol that serves it."""

    __slots__ = ("server", "buffer", "transport", "head_timer")

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
        if end > MAX_HEAD_BYTES:  # the whole head came in one read: same limit
            self._reply(431, "request head too large")
            return
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
            if self.server.hub.core.draining:  # a load balancer sees 503, not a closed socket
                self._reply(503, "hub is shutting down")
                return
            self._to_websocket(request, end + 4)
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
        elif url.path in HEALTH_PATHS:
            answer = http_response(self.server.hub.router.health.answer(method, url.path))
            if method == "HEAD":  # the head a GET gets, its content-length included, and no body
                answer = answer[:answer.index(b"\r\n\r\n") + 4]
            self.transport.write(answer)
            self.transport.close()
        else:
            self._reply(404, f"no such endpoint {url.path} on the fast port")

    def _to_websocket(self, request: Request, head_end: int) -> None:
        # The handshake's checks may wait (an auth hook): the 101 waits with
        # them, and the socket is not read meanwhile (the client sends no
        # frame before its 101 anyway).
        self.transport.pause_reading()
        asyncio.ensure_future(self._upgrade(request, head_end))

    async def _upgrade(self, request: Request, head_end: int) -> None:
        try:
            server = self.server
            handshake = await check_handshake(server.hub.streams, request)
            if self.transport.is_closing():  # the client left while it was checked
                return
            listener = NativeWSTransport(server, request)
            # The head first (picows writes the 101 and calls on_ws_connected),
            # then any frame the client sent right behind it, once the session is open.
            behind = bytes(self.buffer[head_end:])
            del self.buffer[head_end:]
            protocol = self._hand_to_picows(listener)
            if listener.session is not None:
                # The same callback as the 101: subscribed before any
                # publication can be delivered to a client that has its 101.
                listener.session.open(handshake)
                _feed(protocol, behind)
        except Exception:
            log.exception("upgrading to a WebSocket failed")
            if self.transport is not None:
                self.transport.abort()

    def _hand_to_picows(self, listener: "NativeWSTransport") -> WSProtocol:
        """Make the socket picows' and feed it the bytes read so far."""
        handed = [listener]  # picows keeps the factory for the connection's life: not the listener
        protocol = self.server.ws_protocol(lambda upgrade: handed.pop())
        transport = self.transport
        transport.set_protocol(_RELEASED)  # drops uvloop's hold on self.data_received
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data = bytes(self.buffer)
        self.buffer = self.head_timer = self.transport = None  # the sniffer's part is over
        transport.resume_reading()
        _feed(protocol, data)
        return protocol

    def _reply(self, status: int, reason: str) -> None:
        self.transport.write(http_response((status, error_body(status, reason), [])))
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


# -- SSE ------------------------------------------------------------------------
class _SSEStream(SSEHeartbeat, WakesWriter, asyncio.Protocol):
    """An SSE response delimited by connection close: the socket's protocol, and
    its connection's transport (one object: batches go to the socket as queued)."""

    __slots__ = ("server", "request", "transport", "conn", "gone")
    port = "native"

    def __init__(self, server: NativeServer, request: Request, transport) -> None:
        self.server = server
        self.request: Request | None = request
        self.transport = transport
        self.conn: Connection | None = None
        self.gone = False

    # -- the connection's transport --
    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        self.transport.close()

    # -- the socket's protocol --

    def start(self) -> None:
        asyncio.ensure_future(self._open())

    async def _open(self) -> None:
        try:
            await self._open_stream()
        except Exception:
            log.exception("opening an SSE stream failed")
            if self.conn is not None:
                self.conn.close(CLOSE_INTERNAL)
            if not self.transport.is_closing():
                self.transport.write(http_response((500, error_body(500, "internal error"), [])))
                self.transport.close()

    async def _open_stream(self) -> None:
        hub = self.server.hub
        cors = self.server.cors.response_headers(self.request.headers)
        conn, opening = await hub.streams.open_sse(
            self.request, lambda principal: hub.core.connection(wire.SSE, principal, self))
        self.request = None
        if self.gone:
            if conn is not None:
                conn.lost()
            return
        if conn is None:
            status, payload, headers = opening
            self.transport.write(http_response((status, payload, [*headers, *cors])))
            self.transport.close()
            return
        self.conn = conn
        self.transport.write(SSE_HEAD[:-2] + head_lines(cors) + b"\r\n" + opening)
        conn.flush()

    # Nothing more is expected from an SSE client. A plain function: uvloop
    # keeps what ``data_received`` gives, and a bound method is 64 B of each stream.
    data_received = staticmethod(lambda data: None)

    def connection_lost(self, exc) -> None:
        self.gone = True
        if self.conn is not None:
            self.conn.lost()


# -- WebSocket --------------------------------------------------------------------
class NativeWSTransport(WakesWriter, WSListener):
    """A picows connection: its listener (frames in) and its connection's
    transport (frames out, framed here and written to the socket). One object
    for both, as every idle connection has one of each."""

    __slots__ = ("server", "request", "conn", "session", "ws", "socket", "heard", "awaiting_pong",
                 "fragments", "fragments_size", "fragments_text")
    port = "native"

    def __init__(self, server: NativeServer, request: Request) -> None:
        self.server = server
        self.request: Request | None = request  # until the session has it
        self.conn: Connection | None = None
        self.session: WSSession | None = None
        self.ws = self.socket = None  # picows' transport and the socket's, once connected
        self.heard = True  # a frame came from the peer since the last heartbeat round
        self.awaiting_pong = False
        self.fragments: list[bytes] | None = None  # a fragmented message being received
        self.fragments_size = 0
        self.fragments_text = False

    # -- the connection's transport --
    def write(self, data: bytes) -> None:
        # Framed here and written to the socket's transport directly: the
        # shared frame bytes go out as they are, and this avoids picows'
        # send() for payloads over 8 KiB, whose header is a view of a reused
        # buffer that a paused transport keeps and the next send overwrites
        # (corrupt frames under backpressure, seen in picows 2.3.1). The
        # framing is the round writer's, so both write the same bytes.
        write_ws_text(self.socket, data)

    def buffered(self) -> int:
        return self.socket.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        self.ws.send_close(code, reason.encode())  # Connection.close cut it to fit
        # Let the peer answer the close (its reply disconnects, see on_ws_frame):
        # cutting the socket now could reset it before it reads our close frame.
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.ws.disconnect)

    def heartbeat(self, idle: bool) -> bool | None:
        """Protocol-level liveness: a peer silent for a round is pinged; one
        that has not answered by the next round is taken for dead (False: the
        connection closes it with 4410, then the socket goes after CLOSE_TIMEOUT)."""
        if self.awaiting_pong:
            return False
        if not self.heard:
            self.ws.send_ping()
            self.awaiting_pong = True
        self.heard = False
        return None

    # -- picows' listener --
    def on_ws_connected(self, transport) -> None:
        forget_handshake(transport)  # the 101 is written: picows is done with both
        if shrink_write_buffer is not None:
            shrink_write_buffer(transport, PICOWS_WRITE_BUFFER)
        hub = self.server.hub
        if hub.core.draining:
            transport.send_close(CLOSE_SHUTDOWN)
            transport.disconnect()
            return
        self.ws = transport
        self.socket = transport.underlying_transport
        self.conn = hub.core.connection(wire.WS, ANONYMOUS, self)
        self.session = WSSession(hub.streams, self.conn, self.request)  # opened by _Sniffer._upgrade
        self.request = None

    def on_ws_frame(self, ws, frame) -> None:
        session = self.session
        if session is None:
            return
        kind = frame.msg_type
        self.heard = True  # any frame, a pong included, shows the peer alive
        self.awaiting_pong = False
        if kind == WSMsgType.CLOSE:
            ws.send_close(frame.get_close_code())
            ws.disconnect()
            return
        if kind == WSMsgType.PING or kind == WSMsgType.PONG:
            return  # answered and timed by picows itself
        # RFC 6455 5.2 and 5.4: no extension was negotiated, so RSV bits must
        # be clear; a fragmented message is continued only by CONTINUATION
        # frames, and a CONTINUATION needs a message to continue.
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self.conn.close(CLOSE_PROTOCOL, "RSV bits set without a negotiated extension")
            return
        if kind == WSMsgType.CONTINUATION:
            if self.fragments is None:
                self.conn.close(CLOSE_PROTOCOL, "continuation frame with no message to continue")
                return
            self._fragment(frame)
            return
        if self.fragments is not None:
            self.conn.close(CLOSE_PROTOCOL, "new message inside a fragmented message")
            return
        if frame.fin:
            session.on_frame(frame.get_payload_as_bytes(), kind == WSMsgType.TEXT)
        else:
            self.fragments_text = kind == WSMsgType.TEXT
            self.fragments = []
            self.fragments_size = 0
            self._fragment(frame)

    def _fragment(self, frame) -> None:
        payload = frame.get_payload_as_bytes()
        self.fragments_size += len(payload)
        if self.fragments_size > self.server.hub.config.max_message_bytes:
            self.fragments = None
            self.conn.close(CLOSE_TOO_BIG, "message over MAX_MESSAGE_BYTES")
            return
        self.fragments.append(payload)
        if frame.fin:
            data, self.fragments = b"".join(self.fragments), None
            self.session.on_frame(data, self.fragments_text)

    def on_ws_disconnected(self, transport) -> None:
        if self.session is not None:
            self.session.lost(CLOSE_SHUTDOWN)


# Both write a batch to their socket as the compiled round writer would
# (framed as one text frame; as it is) and report that socket's buffer as
# their own, so a flusher round writes them without calling them.
register_socket_transport(NativeWSTransport, FRAME_WS_TEXT, "socket")
register_socket_transport(_SSEStream, FRAME_RAW, "transport")

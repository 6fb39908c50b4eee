"""The ASGI app: every endpoint, servable by Granian, uvicorn or any router.

Under Granian a ``send`` to a gone client does not raise, so each stream
watches ``receive()`` for the disconnect; and Granian hides WS ping/pong from
the app, so liveness is app-level (``{"op":"ping"}`` from the hub).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from .. import wire
from ..accesslog import log_access
from ..auth import ANONYMOUS, Request
from ..connection import CLOSE_INTERNAL, CLOSE_SHUTDOWN, HIGH_WATER, Connection
from ..errors import HubError
from ..history import Gap
from ..operations import OperationsRoutes
from ..ops import WSSession
from ..inbox import NotificationEndpoints
from .http import (PUBLISH_MAX_BODY, SSE_HEADERS, PublishEndpoint, error_body, health, open_sse,
                   open_subscriber, presence_endpoint, resume_point)
from .static import send_static, static_response

if TYPE_CHECKING:
    from ..hub import Hub

log = logging.getLogger("hubbub.asgi")

# A client that answered one hub ping and then stays silent this many
# liveness periods is taken for dead; the check runs every period, so it is
# closed within 3 periods, which is at most PRESENCE_TTL. (A client that never
# answers pings, such as a bare listener, is left to TCP: the app cannot tell
# it from a dead one.)
MISSED_PINGS_BEFORE_CLOSE = 2
PRESENCE_PREFIX = "/presence/"


class ASGISender:
    """The transport of an ASGI stream: ``write`` queues, one task awaits ``send``.

    ``buffered`` counts what is queued or being sent, so the connection's
    writer stops at the same high-water mark as on a socket and a slow
    client's backlog stays in its bounded outbox, not here.
    """

    separator = b""

    def __init__(self, send) -> None:
        self.send = send
        self.conn: Connection | None = None
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.closing: tuple[int, str] | None = None
        self.gone = False  # the peer disconnected: nothing more is sent
        self._wakeup: asyncio.Future | None = None

    def write(self, data: bytes) -> None:
        if not self.gone:
            self.queue.append(data)
            self.queued += len(data)
            self._wake()

    def buffered(self) -> int:
        return self.queued

    def close(self, code: int, reason: str) -> None:
        self.closing = (code, reason)
        self._wake()

    def heartbeat(self, idle: bool) -> None:
        pass

    def peer_gone(self) -> None:
        self.gone = True
        self._wake()
        if self.conn is not None:
            self.conn.lost()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(self) -> None:
        """Send what is written, in order, until closed or the peer is gone."""
        loop = asyncio.get_running_loop()
        while not self.gone:
            if self.queue:
                if len(self.queue) == 1:
                    data = self.queue.popleft()
                else:  # several batches since the last send: one message
                    data = self.separator.join(self.queue)
                    self.queue.clear()
                await self.send_data(data)
                self.queued -= len(data)
                conn = self.conn
                if conn is not None and conn.has_pending():
                    conn.wake()  # it may have stopped at the high-water mark
                continue
            if self.closing is not None:
                await self.send_close(*self.closing)
                return
            self._wakeup = loop.create_future()
            await self._wakeup
            self._wakeup = None

    async def send_data(self, data: bytes) -> None:
        raise NotImplementedError

    async def send_close(self, code: int, reason: str) -> None:
        raise NotImplementedError


class ASGISSE(ASGISender):
    async def send_data(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def send_close(self, code: int, reason: str) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def heartbeat(self, idle: bool) -> None:
        if idle:
            self.write(wire.SSE_PING)


class ASGIWebSocket(ASGISender):
    separator = b"\n"

    def __init__(self, send, heartbeat: float, text_of: "_TextCache") -> None:
        super().__init__(send)
        self.interval = heartbeat
        self.text_of = text_of
        self.receiving: asyncio.Future | None = None  # the reader's pending receive()
        self.last_seen = time.monotonic()  # when the client last sent a frame
        self.answers_pings = False  # it sent {"op":"pong"} once: silence now means dead

    async def send_data(self, data: bytes) -> None:
        # ASGI wants str for a text frame; one-message batches are the bytes
        # every subscriber shares, decoded once for all of them.
        await self.send({"type": "websocket.send", "text": self.text_of(data)})

    async def send_close(self, code: int, reason: str) -> None:
        # Granian sends no close frame while a receive() is pending (seen
        # with granian 2.8.7): the reader's receive is cancelled first.
        if self.receiving is not None and not self.receiving.done():
            self.receiving.cancel()
            await asyncio.wait([self.receiving])
        await self.send({"type": "websocket.close", "code": code, "reason": reason[:120]})

    def pong(self) -> None:
        """The client answered a hub ping with ``{"op":"pong"}``: from now on
        its silence means it is gone. Any other frame proves nothing: a
        client that publishes now and then may simply not speak pong."""
        self.answers_pings = True

    def heartbeat(self, idle: bool) -> None:
        # Granian hides protocol pings from the app: liveness is app-level.
        now = time.monotonic()
        if self.answers_pings and now - self.last_seen > self.interval * MISSED_PINGS_BEFORE_CLOSE:
            self.conn.close(CLOSE_SHUTDOWN, "no answer to pings")
            return
        # Ping a client that has been silent a period even while we write to
        # it: liveness is about what it sends, not about what we send.
        if idle or now - self.last_seen >= self.interval:
            self.write(wire.WS_PING)


class PollAnswer:
    """The transport of a long-poll request: the first batch written is the answer."""

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.done = asyncio.get_running_loop().create_future()

    def peer_gone(self) -> None:
        self._finish()  # nobody to answer: stop waiting

    def write(self, data: bytes) -> None:
        self.body = data if self.body is None else self.body + b"," + data
        self._finish()

    def buffered(self) -> int:
        # One batch answers the poll: after it the writer holds the rest back.
        return 0 if self.body is None else HIGH_WATER

    def close(self, code: int, reason: str) -> None:
        self._finish()

    def heartbeat(self, idle: bool) -> None:
        pass

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _TextCache:
    """Decoded text of recently sent one-message batches, bounded by bytes.

    The bound matters: batches are unique and up to BATCH_MAX_BYTES each, and
    a count bound alone let slow readers pin hundreds of MiB here.
    """

    def __init__(self, max_bytes: int = 1 << 20, max_item: int = 16 << 10) -> None:
        self.max_bytes = max_bytes
        self.max_item = max_item
        self.size = 0
        self.texts: dict[bytes, str] = {}

    def __call__(self, batch: bytes) -> str:
        text = self.texts.get(batch)
        if text is not None:
            return text
        text = batch.decode()
        if len(batch) <= self.max_item:
            while self.size + len(batch) > self.max_bytes:
                self.size -= len(self.texts.pop(next(iter(self.texts))))
            self.texts[batch] = text
            self.size += len(batch)
        return text


def request_of(scope: dict, path: str) -> Request:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    client = scope.get("client")
    return Request(path=path, headers=headers, query=query, client=client[0] if client else None)


def route_path(scope: dict) -> str:
    """The path inside our mount point, whether or not the router already stripped it."""
    path = scope.get("path") or "/"
    root = scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class HubApp:
    def __init__(self, hub: "Hub") -> None:
        self.hub = hub
        # (host, port, reuse_port) of a native listener to run beside this app
        # in the same event loop, started with the lifespan (``hubbub serve``).
        self.fast_listener: tuple[str, int, bool] | None = None
        self.publish_endpoint = PublishEndpoint(hub)
        self.text_of = _TextCache()
        self.operations = OperationsRoutes(hub)  # /metrics, /dashboard (operations.py)

    async def __call__(self, scope: dict, receive, send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        # Mounted in a router that keeps lifespan to itself: start on first use.
        await self.hub.start()
        path = route_path(scope)
        if self.hub.config.access_log:
            send = _logging_send(scope, path, send)
        if kind == "websocket":
            if path == "/ws":
                await self._websocket(scope, receive, send, request_of(scope, path))
            else:
                await receive()
                await send({"type": "websocket.close", "code": 4404, "reason": "no such endpoint"})
            return
        if kind == "http":
            await self._http(scope, receive, send, path)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.hub.start()
                    if self.fast_listener is not None:
                        host, port, reuse_port = self.fast_listener
                        await self.hub.listen(host, port, ssl=self.hub.config.ssl_context(),
                                              reuse_port=reuse_port)
                except Exception as error:  # report, as the protocol asks
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.hub.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- HTTP -----------------------------------------------------------------
    async def _http(self, scope: dict, receive, send, path: str) -> None:
        method = scope["method"]
        request = request_of(scope, path)
        if await self._inbox_and_presence(receive, send, method, path, request):
            return
        if path == "/sse" and method == "GET":
            await self._sse(receive, send, request)
        elif path == "/publish" and method == "POST":
            try:
                body = await _read_body(receive, PUBLISH_MAX_BODY)
            except HubError as error:
                await _json(send, error.code, error_body(error.code, error.reason))
                return
            status, payload, headers = await self.publish_endpoint(request, body)
            await _json(send, status, payload, headers)
        elif path == "/poll" and method == "GET":
            status, payload = await self._poll(receive, request)
            await _json(send, status, payload)
        elif path == "/healthz" and method in ("GET", "HEAD"):
            status, payload, headers = health(self.hub)
            await _json(send, status, payload, headers)
        # -- operations: /metrics, /dashboard, /dashboard/stream (operations.py) --
        elif self.operations.handles(path):
            await self.operations(method, path, request, receive, send)
        # -- end of operations --
        elif (static := static_response(method, path, request.headers, self.hub.config.dev)) is not None:
            await send_static(send, static)  # /hubbub.js, /hubbub.mjs, the dev demo at /
        elif path in ("/sse", "/publish", "/healthz", "/poll"):
            await _json(send, 405, error_body(405, f"{method} is not allowed on {path}"))
        else:
            await _json(send, 404, error_body(404, f"no such endpoint {path}"))

    # -- /notifications (SPEC 8) and /presence/{topic} (SPEC 10) ------------------
    async def _inbox_and_presence(self, receive, send, method: str, path: str,
                                  request: Request) -> bool:
        """Answer the inbox and presence routes; False for any other path."""
        hub = self.hub
        if NotificationEndpoints.handles(path):
            endpoints = hub.notifications
            if endpoints is None:  # the store is down or not open yet
                reason = f"notification store unavailable: {hub.inbox_error}"
                await _json(send, 503, error_body(503, reason))
                return True
            try:
                body = await _read_body(receive, endpoints.max_body) if method == "POST" else b""
            except HubError as error:
                await _json(send, error.code, error_body(error.code, error.reason))
                return True
            status, payload, headers = await endpoints.route(method, path, request, body)
            await _json(send, status, payload, headers)
            return True
        if path.startswith(PRESENCE_PREFIX):
            if method not in ("GET", "HEAD"):
                await _json(send, 405, error_body(405, f"{method} is not allowed on {path}"),
                            [("allow", "GET")])
                return True
            status, payload, headers = await presence_endpoint(hub, request, path[len(PRESENCE_PREFIX):])
            await _json(send, status, payload, headers)
            return True
        return False

    async def _sse(self, receive, send, request: Request) -> None:
        hub = self.hub
        stream = ASGISSE(send)
        conn, opening = await open_sse(hub, request, lambda p: Connection(hub, wire.SSE, p, stream))
        if conn is None:
            status, payload, headers = opening
            await _json(send, status, payload, headers)
            return
        stream.conn = conn
        stream.write(opening)
        watcher = asyncio.ensure_future(_watch_disconnect(receive, stream))
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(k.encode(), v.encode()) for k, v in SSE_HEADERS]})
            await stream.run()
        except OSError:
            pass  # the client went away mid-write (servers that do raise)
        finally:
            watcher.cancel()
            conn.lost()

    # -- long-poll ----------------------------------------------------------------
    async def _poll(self, receive, request: Request) -> tuple[int, Any]:
        """Answer at once with what was missed since ``since``, else wait for the next publication."""
        hub = self.hub
        try:
            timeout = _poll_timeout(request)
            answer = PollAnswer()
            conn = await open_subscriber(hub, request, lambda p: Connection(hub, wire.POLL, p, answer))
        except HubError as error:
            return error.code, error_body(error.code, error.reason)
        since = resume_point(request)
        start_id = hub.last_event_id  # a resume point for "nothing new yet"
        watcher = asyncio.ensure_future(_watch_disconnect(receive, answer))
        try:
            if since:
                try:
                    replay = hub.replay(conn, list(conn.subscriptions), since)
                except Gap as gap:
                    answer_reset = {"messages": [], "last_id": start_id, "reset": {
                        "topics": list(conn.subscriptions), "reason": gap.reason}}
                    unread = await hub.unread_count_or_none(conn.principal.user)
                    if unread is not None:
                        answer_reset["unread_count"] = unread
                    return 200, orjson.dumps(answer_reset)
                if replay:
                    body = b",".join(kept.frames[wire.POLL] for kept in replay)
                    unread = await hub.unread_count_or_none(conn.principal.user)
                    return 200, _poll_body(body, replay[-1].event_id, 0, unread)
            if timeout > 0 and not conn.has_pending():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await answer.done
            # Every answer tells a user its unread count: a poll client is not
            # connected between polls, so this is how it catches up.
            unread = await hub.unread_count_or_none(conn.principal.user)
            conn.flush()  # whatever is queued now, flusher round or not
            body = answer.body or b""
            return 200, _poll_body(body, _last_id(body) or since or start_id, conn.outbox.take_dropped(),
                                   unread)
        finally:
            watcher.cancel()
            conn.close(CLOSE_SHUTDOWN)
            conn.lost()

    # -- WebSocket --------------------------------------------------------------
    async def _websocket(self, scope: dict, receive, send, request: Request) -> None:
        hub = self.hub
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if hub.draining:
            await send({"type": "websocket.close", "code": CLOSE_SHUTDOWN})
            return
        await send({"type": "websocket.accept"})
        ws = ASGIWebSocket(send, hub.config.liveness_period, self.text_of)
        conn = ws.conn = Connection(hub, wire.WS, ANONYMOUS, ws)
        session = WSSession(hub, conn, request)
        sender = asyncio.ensure_future(_run_sender(ws))
        try:
            await session.open()
            while not conn.closed:
                ws.receiving = asyncio.ensure_future(receive())
                try:
                    message = await ws.receiving
                except asyncio.CancelledError:
                    if ws.receiving.cancelled() and conn.closed:
                        break  # our close: the sender cancelled the read to send its frame
                    raise
                kind = message["type"]
                if kind == "websocket.receive":
                    ws.last_seen = time.monotonic()
                    data = message.get("text")
                    session.on_frame(data if data is not None else message.get("bytes") or b"")
                elif kind == "websocket.disconnect":
                    ws.peer_gone()
        finally:
            conn.close(CLOSE_SHUTDOWN)  # no-op unless still open (cancelled)
            await sender
            session.lost(CLOSE_SHUTDOWN)


async def _run_sender(sender: ASGISender) -> None:
    try:
        await sender.run()
    except Exception:
        log.exception("ASGI sender failed")
        if sender.conn is not None:
            sender.conn.lost(CLOSE_INTERNAL)


def _last_id(body: bytes) -> str | None:
    """The id of the newest kept publication in a poll answer's envelopes."""
    if not body:
        return None
    for envelope in reversed(orjson.loads(b"[" + body + b"]")):
        if envelope.get("id") is not None:
            return envelope["id"]
    return None


POLL_MAX_TIMEOUT = 60.0


def _poll_timeout(request: Request) -> float:
    raw = request.first("timeout")
    if raw is None or raw == "":
        return 20.0
    try:
        value = float(raw)
    except ValueError:
        raise HubError(400, f"timeout must be a number of seconds, not {raw!r}") from None
    if not 0 <= value <= POLL_MAX_TIMEOUT:
        raise HubError(400, f"timeout must be between 0 and {POLL_MAX_TIMEOUT:g} seconds")
    return value


def _poll_body(envelopes: bytes, last_id: str | None, dropped: int = 0,
               unread_count: int | None = None) -> bytes:
    """A poll answer. ``messages`` holds publication envelopes (they have a
    ``topic``) and, for a user, inbox events ``{"event": .., "data": ..}``."""
    tail = b',"dropped":%d' % dropped if dropped else b""
    if unread_count is not None:
        tail += b',"unread_count":%d' % unread_count
    return b'{"messages":[' + envelopes + b'],"last_id":' + orjson.dumps(last_id) + tail + b"}"


def _logging_send(scope: dict, path: str, send):
    """Wrap ``send`` to write one access line when the response (or accept/close) starts."""
    client = (scope.get("client") or ("-",))[0]
    query = scope.get("query_string", b"").decode("latin-1")
    method = scope.get("method", "WS")

    handshake_logged = False

    async def logged(message: dict) -> None:
        nonlocal handshake_logged
        kind = message["type"]
        if kind == "http.response.start":
            log_access(client, method, path, query, message["status"], "asgi")
        elif kind in ("websocket.accept", "websocket.close") and not handshake_logged:
            handshake_logged = True
            log_access(client, "WS", path, query, 101 if kind == "websocket.accept" else 403, "asgi")
        await send(message)
    return logged


async def _watch_disconnect(receive, transport) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            transport.peer_gone()
            return


async def _read_body(receive, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HubError(400, "client disconnected before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HubError(413, f"body over the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _json(send, status: int, payload: Any, headers: list[tuple[str, str]] = ()) -> None:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *((k.encode(), v.encode()) for k, v in headers)]})
    await send({"type": "http.response.body", "body": body})

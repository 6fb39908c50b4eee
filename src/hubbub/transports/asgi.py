"""The ASGI app: every endpoint, servable by Granian, uvicorn or any router.

Under Granian a ``send`` to a gone client does not raise, so each stream
watches ``receive()`` for the disconnect; and Granian hides WS ping/pong from
the app, so liveness is app-level (``{"op":"ping"}`` from the hub).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from .. import wire
from ..accesslog import log_access
from ..auth import ANONYMOUS, Request
from ..connection import CLOSE_SHUTDOWN, Connection
from ..errors import HubError
from ..history import Gap
from ..ops import WSSession
from .http import (PUBLISH_MAX_BODY, SSE_HEADERS, PublishEndpoint, error_body, health, open_sse,
                   open_subscriber, resume_point)
from .static import send_static, static_response

if TYPE_CHECKING:
    from ..hub import Hub

log = logging.getLogger("hubbub.asgi")

# A client that answered one hub ping and then stays silent this many
# heartbeats is taken for dead. (A client that never answers pings, such as a
# bare listener, is left to TCP: the app cannot tell it from a dead one.)
MISSED_PINGS_BEFORE_CLOSE = 2


class ASGIConnection(Connection):
    def __init__(self, hub: "Hub", fmt: int, principal) -> None:
        super().__init__(hub, fmt, principal)
        self._waiter: asyncio.Future | None = None
        self.peer_gone = False
        self.receiving: asyncio.Future | None = None  # the WS reader's pending receive()
        self.last_seen = time.monotonic()  # when the client last sent a frame (WS liveness)
        self.answers_pings = False  # it answered a hub ping once: silence now means dead

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def closing(self) -> None:
        self.wake()  # the writer ends the stream or sends the close frame

    async def wait(self, timeout: float) -> bool:
        """Sleep until woken (True) or ``timeout`` seconds pass (False)."""
        if self.closed or self.has_pending():
            return True
        self.outbox.armed = True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None
            self.outbox.armed = False


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(False)


class _TextCache:
    """ASGI wants ``str`` for text frames. A single-message batch is the very
    bytes object every subscriber shares, so decode it once for all of them."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.texts: dict[bytes, str] = {}

    def __call__(self, batch: bytes) -> str:
        text = self.texts.get(batch)
        if text is None:
            text = batch.decode()
            if len(self.texts) >= self.size:
                del self.texts[next(iter(self.texts))]
            self.texts[batch] = text
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
        if path == "/sse" and method == "GET":
            await self._sse(receive, send, request)
        elif path == "/publish" and method == "POST":
            try:
                body = await _read_body(receive, PUBLISH_MAX_BODY)
            except HubError as error:
                await _json(send, error.code, error_body(error.code, error.reason))
                return
            status, payload, headers = self.publish_endpoint(request, body)
            await _json(send, status, payload, headers)
        elif path == "/poll" and method == "GET":
            try:
                timeout = _poll_timeout(request)
                conn = await open_subscriber(self.hub, request, lambda p: ASGIConnection(self.hub, wire.WS, p))
            except HubError as error:
                await _json(send, error.code, error_body(error.code, error.reason))
                return
            watcher = asyncio.ensure_future(_watch_disconnect(receive, conn))
            try:
                body = await self._poll(conn, resume_point(request), timeout)
            finally:
                watcher.cancel()
            await _json(send, 200, body)
        elif path == "/healthz" and method in ("GET", "HEAD"):
            status, payload, headers = health(self.hub)
            await _json(send, status, payload, headers)
        elif (static := static_response(method, path, request.headers, self.hub.config.dev)) is not None:
            await send_static(send, static)  # /hubbub.js, /hubbub.mjs, the dev demo at /
        elif path in ("/sse", "/publish", "/healthz", "/poll"):
            await _json(send, 405, error_body(405, f"{method} is not allowed on {path}"))
        else:
            await _json(send, 404, error_body(404, f"no such endpoint {path}"))

    async def _sse(self, receive, send, request: Request) -> None:
        hub = self.hub
        conn, opening = await open_sse(hub, request, lambda p: ASGIConnection(hub, wire.SSE, p))
        if conn is None:
            status, payload, headers = opening
            await _json(send, status, payload, headers)
            return
        watcher = asyncio.ensure_future(_watch_disconnect(receive, conn))
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(k.encode(), v.encode()) for k, v in SSE_HEADERS]})
            await send({"type": "http.response.body", "body": opening, "more_body": True})
            heartbeat = hub.config.heartbeat
            while True:
                batch = conn.next_batch() if not conn.peer_gone else b""
                if batch:
                    await send({"type": "http.response.body", "body": batch, "more_body": True})
                elif conn.closed:
                    break
                elif not await conn.wait(heartbeat):
                    await send({"type": "http.response.body", "body": wire.SSE_PING, "more_body": True})
            if not conn.peer_gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write (servers that do raise)
        finally:
            conn.close(CLOSE_SHUTDOWN)
            watcher.cancel()

    # -- long-poll ----------------------------------------------------------------
    async def _poll(self, conn: ASGIConnection, since: str | None, timeout: float) -> bytes:
        """Answer at once with what is missed since ``since``, else wait for the next publication."""
        hub = self.hub
        start_id = hub.last_event_id  # a resume point for "nothing new yet"
        try:
            if since:
                try:
                    replay = hub.replay(conn, list(conn.subscriptions), since)
                except Gap as gap:
                    return orjson.dumps({"messages": [], "last_id": start_id, "reset": {
                        "topics": list(conn.subscriptions), "reason": gap.reason}})
                if replay:
                    envelopes = [wire.envelope_of_ws_frame(kept.frames[wire.WS]) for kept in replay]
                    return _poll_body(envelopes, replay[-1].event_id)
            if timeout > 0 and not conn.outbox.count and not conn.closed:
                await conn.wait(timeout)
            envelopes = []
            if conn.outbox.count:
                batch = conn.outbox.drain()
                envelopes = [wire.envelope_of_ws_frame(frame) for frame in batch.split(b"\n")]
            last_id = since or start_id
            for envelope in reversed(envelopes):
                event_id = orjson.loads(envelope).get("id")
                if event_id is not None:
                    last_id = event_id
                    break
            return _poll_body(envelopes, last_id, conn.outbox.take_dropped())
        finally:
            conn.close(CLOSE_SHUTDOWN)

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
        conn = ASGIConnection(hub, wire.WS, ANONYMOUS)
        session = WSSession(hub, conn, request)
        writer = asyncio.ensure_future(self._ws_writer(conn, send))
        try:
            await session.open()
            while not conn.closed:
                # receive() runs as its own task so the writer can cancel it:
                # Granian does not send a close frame while a receive() is
                # pending (seen with granian 2.8.7).
                conn.receiving = asyncio.ensure_future(receive())
                try:
                    message = await conn.receiving
                except asyncio.CancelledError:
                    if conn.receiving.cancelled() and conn.closed:
                        break
                    raise
                kind = message["type"]
                if kind == "websocket.receive":
                    conn.last_seen = time.monotonic()
                    data = message.get("text")
                    session.on_frame(data if data is not None else message.get("bytes") or b"")
                elif kind == "websocket.disconnect":
                    conn.peer_gone = True
                    conn.close(message.get("code", 1000))
        finally:
            session.close()
            conn.close(CLOSE_SHUTDOWN)
            await writer

    async def _ws_writer(self, conn: ASGIConnection, send) -> None:
        try:
            await self._ws_write_loop(conn, send)
        except Exception:
            log.exception("websocket writer failed")
            conn.close(1011, "internal error")

    async def _ws_write_loop(self, conn: ASGIConnection, send) -> None:
        heartbeat = self.hub.config.heartbeat
        pings_sent_at = None
        while not conn.peer_gone:
            if conn.closed:
                # Say what is still owed (acks, the error that explains the
                # close), not the backlog, then the close frame.
                if conn.control:
                    await send({"type": "websocket.send", "text": conn.take_owed().decode()})
                if conn.receiving is not None and not conn.receiving.done():
                    conn.receiving.cancel()
                    await asyncio.wait([conn.receiving])
                await send({"type": "websocket.close", "code": conn.close_code or 1000,
                            "reason": conn.close_reason[:120]})
                return
            batch = conn.next_batch()
            if batch:
                await send({"type": "websocket.send", "text": self.text_of(batch)})
                continue
            if await conn.wait(heartbeat):
                continue
            now = time.monotonic()
            if pings_sent_at is not None and conn.last_seen > pings_sent_at:
                conn.answers_pings = True
            if conn.answers_pings and now - conn.last_seen > heartbeat * MISSED_PINGS_BEFORE_CLOSE:
                conn.close(CLOSE_SHUTDOWN, "no answer to pings")
                continue
            pings_sent_at = now
            await send({"type": "websocket.send", "text": wire.WS_PING.decode()})


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


def _poll_body(envelopes: list[bytes], last_id: str | None, dropped: int = 0) -> bytes:
    tail = b',"dropped":%d}' % dropped if dropped else b"}"
    return b'{"messages":[' + b",".join(envelopes) + b'],"last_id":' + orjson.dumps(last_id) + tail


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


async def _watch_disconnect(receive, conn: ASGIConnection) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            conn.peer_gone = True
            conn.close(CLOSE_SHUTDOWN)
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

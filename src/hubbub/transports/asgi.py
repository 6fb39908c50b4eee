"""The ASGI app: every endpoint, servable by Granian, uvicorn or any router.

Streams are served here (SSE, long-poll, WebSocket, the dashboard stream);
every other request goes to the endpoints' ``Router``. The transports of
the streams are ``asgi_streams.py``'s.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import orjson

from .. import wire
from ..auth import ANONYMOUS, Request
from ..core.connection import CLOSE_AUTH, CLOSE_SHUTDOWN, Connection
from ..core.history import Gap
from ..endpoints.operations import STREAM_PATH
from ..endpoints.responses import Response, error_body, error_response
from ..errors import HubError, Unauthorized
from .asgi_http import (body_reader, logging_send, request_of, route_path, send_response,
                        start_message, watch_disconnect)
from .asgi_streams import ASGISSE, ASGIWebSocket, PollAnswer, TextCache, run_sender
from .streams import resume_point
from .ws_session import WSSession, check_handshake

if TYPE_CHECKING:
    from . import Served

POLL_DEFAULT_TIMEOUT = 20.0
POLL_MAX_TIMEOUT = 60.0


class HubApp:
    def __init__(self, hub: "Served") -> None:
        self.hub = hub
        # (host, port, reuse_port) of a native listener to run beside this app
        # in the same event loop, started with the lifespan (``hubbub serve``).
        self.fast_listener: tuple[str, int, bool] | None = None
        self.text_of = TextCache()

    async def __call__(self, scope: dict, receive, send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        # Mounted in a router that keeps lifespan to itself: start on first use.
        await self.hub.start()
        path = route_path(scope)
        if self.hub.config.access_log:
            send = logging_send(scope, path, send)
        if kind == "websocket":
            if path == "/ws":
                await self._websocket(receive, send, request_of(scope, path))
            else:
                await receive()
                await send({"type": "websocket.close", "code": 4404, "reason": "no such endpoint"})
            return
        if kind == "http":
            await self._http(scope["method"], path, receive, send, request_of(scope, path))

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

    async def _http(self, method: str, path: str, receive, send, request: Request) -> None:
        if method == "GET" and path == "/sse":
            await self._sse(receive, send, request)
        elif method == "GET" and path == "/poll":
            await self._poll(receive, send, request)
        elif method == "GET" and path == STREAM_PATH:
            await self._dashboard_stream(receive, send, request)
        else:
            await send_response(send, await self.hub.router.answer(method, path, request,
                                                                   body_reader(receive)))

    # -- SSE --------------------------------------------------------------------------
    async def _sse(self, receive, send, request: Request) -> None:
        core = self.hub.core
        stream = ASGISSE(send)
        conn, opening = await self.hub.streams.open_sse(
            request, lambda principal: core.connection(wire.SSE, principal, stream))
        if conn is None:
            await send_response(send, opening)
            return
        stream.conn = conn
        stream.write(opening)
        watcher = asyncio.ensure_future(watch_disconnect(receive, stream))
        try:
            await send(start_message(200, wire.SSE_HEADERS))
            await stream.run()
        except OSError:
            pass  # the client went away mid-write (servers that do raise)
        finally:
            watcher.cancel()
            conn.lost()

    async def _dashboard_stream(self, receive, send, request: Request) -> None:
        refusal = self.hub.operations.answer("GET", STREAM_PATH, request)
        if refusal is not None:
            await send_response(send, refusal)
            return
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
        watcher = asyncio.ensure_future(watch())
        try:
            await send(start_message(200, wire.SSE_HEADERS))
            async for chunk in self.hub.operations.events(gone):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the page went away mid-write (servers that do raise)
        finally:
            watcher.cancel()

    # -- long-poll ----------------------------------------------------------------------
    async def _poll(self, receive, send, request: Request) -> None:
        await send_response(send, await self._poll_answer(receive, request))

    async def _poll_answer(self, receive, request: Request) -> Response:
        """Answer at once with what was missed since ``since``, else wait for the next publication."""
        core = self.hub.core
        recovery = core.recovery
        try:
            timeout = _poll_timeout(request)
            since = resume_point(request)  # read before anything is attached: a repeated one is a 400
            answer = PollAnswer()
            conn = await self.hub.streams.open_subscriber(
                request, lambda principal: core.connection(wire.POLL, principal, answer))
        except HubError as error:
            return error_response(error)
        start_id = recovery.last_event_id  # a resume point for "nothing new yet"
        watcher = asyncio.ensure_future(watch_disconnect(receive, answer))
        unread_count = self.hub.unread.count_or_none
        try:
            if since:
                try:
                    replay = recovery.replay(conn, list(conn.subscriptions), since)
                except Gap as gap:
                    answer_reset = {"messages": [], "last_id": start_id, "reset": {
                        "topics": list(conn.subscriptions), "reason": gap.reason}}
                    unread = await unread_count(conn.principal.user)
                    if unread is not None:
                        answer_reset["unread_count"] = unread
                    return 200, answer_reset, []
                if replay:
                    body = b",".join(kept.frames[wire.POLL] for kept in replay)
                    unread = await unread_count(conn.principal.user)
                    return 200, _poll_body(body, replay[-1].event_id, 0, unread), _JSON
            if timeout > 0 and not conn.has_pending():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await answer.done
            if conn.close_code == wire.POLL_DISCONNECTED:  # POST /disconnect, while it waited
                return poll_disconnected(conn)
            if conn.close_code == CLOSE_AUTH:  # its token expired while it waited (SPEC 10)
                return error_response(Unauthorized(conn.close_reason))
            # Every answer tells a user its unread count: a poll client is not
            # connected between polls, so this is how it catches up.
            unread = await unread_count(conn.principal.user)
            conn.flush()  # whatever is queued now, flusher round or not
            body = answer.body or b""
            return 200, _poll_body(body, _last_id(body) or since or start_id, conn.outbox.take_dropped(),
                                   unread), _JSON
        finally:
            watcher.cancel()
            conn.close(CLOSE_SHUTDOWN)
            conn.lost()

    # -- WebSocket ------------------------------------------------------------------------
    async def _websocket(self, receive, send, request: Request) -> None:
        hub = self.hub
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if hub.core.draining:
            await send({"type": "websocket.close", "code": CLOSE_SHUTDOWN})
            return
        handshake = await check_handshake(hub.streams, request)
        ws = ASGIWebSocket(send, hub.config.liveness_period, self.text_of)
        conn = ws.conn = hub.core.connection(wire.WS, ANONYMOUS, ws)
        session = WSSession(hub.streams, conn, request)
        # Subscribed before the accept is sent (what it owes waits in its
        # outbox for the sender): a client that has its 101 misses nothing.
        session.open(handshake)
        sender = None
        try:
            await send({"type": "websocket.accept"})
            sender = asyncio.ensure_future(run_sender(ws))
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
            if sender is not None:
                await sender
            session.lost(CLOSE_SHUTDOWN)


_JSON = [("content-type", "application/json")]


def _last_id(body: bytes) -> str | None:
    """The id of the newest kept publication in a poll answer's envelopes."""
    if not body:
        return None
    for envelope in reversed(orjson.loads(b"[" + body + b"]")):
        if envelope.get("id") is not None:
            return envelope["id"]
    return None


def _poll_timeout(request: Request) -> float:
    raw = request.first("timeout")
    if raw is None or raw == "":
        return POLL_DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise HubError(400, f"timeout must be a number of seconds, not {raw!r}") from None
    if not 0 <= value <= POLL_MAX_TIMEOUT:
        raise HubError(400, f"timeout must be between 0 and {POLL_MAX_TIMEOUT:g} seconds")
    return value


def poll_disconnected(conn: Connection) -> Response:
    """410 for a poll the server API disconnected while it waited, with the
    operator's ``{code, reason}`` as SSE's ``disconnect`` event has them, so a
    poll client follows the same rule (4408 comes back, others stay away)."""
    reason = conn.close_reason or "disconnected"
    body = error_body(wire.POLL_DISCONNECTED, reason)
    body["disconnect"] = {"code": conn.disconnect_code, "reason": conn.close_reason}
    return wire.POLL_DISCONNECTED, body, []


def _poll_body(envelopes: bytes, last_id: str | None, dropped: int = 0,
               unread_count: int | None = None) -> bytes:
    """A poll answer. ``messages`` holds publication envelopes (they have a
    ``topic``) and, for a user, inbox events ``{"event": .., "data": ..}``."""
    tail = b',"dropped":%d' % dropped if dropped else b""
    if unread_count is not None:
        tail += b',"unread_count":%d' % unread_count
    return b'{"messages":[' + envelopes + b'],"last_id":' + orjson.dumps(last_id) + tail + b"}"

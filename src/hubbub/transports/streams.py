"""Opening a stream, whatever carries it: what SSE, WebSocket and long-poll share.

``Streams`` (one per hub) admits and authenticates a client, makes its
connection, subscribes the ``topic=`` patterns of its request and answers a
resume (``recover``: the missed publications, or a ``reset``). The
transports and the WebSocket session call it; it calls the hub core.

Also the two pieces every socket transport has: the SSE heartbeat (a
comment line to an idle stream) and the wake when a paused socket drains.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import wire
from ..core.history import Gap
from ..endpoints.responses import Response, error_response
from ..errors import HubError, Unauthorized

if TYPE_CHECKING:
    from ..auth import Authenticator, Principal, Request
    from ..config import Config
    from ..core.connection import Connection
    from ..core.hub import HubCore
    from ..services.presence import Presence

MakeConnection = Callable[["Principal"], "Connection"]
# The single-valued query parameters of every stream (SSE, poll, WS); topic= repeats.
SINGLE_PARAMS = ("token", "since", "filter", "presence")


def refuse_repeated(request: "Request") -> None:
    """HubError 400 when a single-valued stream parameter is given more than
    once (``Request.first``): checked up front, so a stream is refused before
    anything is attached, never halfway through opening."""
    for name in SINGLE_PARAMS:
        request.first(name)


def resume_point(request: "Request") -> str | None:
    """The id an SSE or poll client resumes from: Last-Event-ID wins over since=."""
    return request.header("last-event-id") or request.first("since")


def wants_presence(request: "Request") -> bool:
    """``presence=1`` in a request's query: join/leave events for its topics."""
    return request.first("presence") in ("1", "true")


class Streams:
    def __init__(self, config: "Config", core: "HubCore", auth: "Authenticator",
                 presence: "Presence") -> None:
        self.config = config
        self.core = core
        self.auth = auth
        self.presence = presence

    def subscribe_query(self, conn: "Connection", request: "Request") -> list[HubError]:
        """Subscribe the ``topic=`` patterns of a request; returns the refusals."""
        filter_spec = request.first("filter")
        presence = wants_presence(request)
        errors = []
        for pattern in request.query.get("topic", []):
            try:
                self.core.subscribe(conn, pattern, filter_spec, presence)
            except HubError as error:
                errors.append(error)
        return errors

    async def open_subscriber(self, request: "Request", make_conn: MakeConnection,
                              presence: bool = False) -> "Connection":
        """Admit, authenticate and subscribe the ``topic=`` patterns of an SSE or
        poll request; returns the attached connection. Raises HubError (400, 401,
        403, 429) and then nothing stays attached. ``presence``: join/leave events.
        A user's request may name no topic: it gets the user's inbox events only."""
        core = self.core
        core.admit(request.client)
        refuse_repeated(request)
        principal = await self.auth.principal(request)
        if principal is None:
            raise Unauthorized("authentication required")
        topics = request.query.get("topic", [])
        if not topics and principal.user is None:
            # A user's connection with no topic is its notification stream (the
            # bell); an anonymous one with no topic would get nothing at all.
            raise HubError(400, "at least one topic= is required without a user token")
        conn = make_conn(principal)
        core.attach(conn)
        try:
            for pattern in topics:
                core.subscribe(conn, pattern, request.first("filter"), presence)
        except HubError:
            conn.lost()
            raise
        return conn

    async def open_sse(self, request: "Request",
                       make_conn: MakeConnection) -> "tuple[Connection | None, Response | bytes]":
        """Open an SSE stream: (connection, the stream's first bytes) or (None, an error response)."""
        try:
            since = resume_point(request)  # a repeated since= is a 400 too
            await self.core.recovery.caught_up(since)  # an id another node gave out: let it arrive
            conn = await self.open_subscriber(request, make_conn, wants_presence(request))
        except HubError as error:
            return None, error_response(error)
        try:
            hello = wire.SSE_PREAMBLE + wire.sse_event("connected", {
                "connection_id": conn.id, "topics": list(conn.subscriptions), "user": conn.principal.user,
            })
            if since:
                hello += b"".join(self.recover(conn, list(conn.subscriptions), since))
        except BaseException:
            conn.lost()  # attached but never streamed: nothing else would release it
            raise
        # Whatever the hooks send (the inbox's unread_count) follows `connected`:
        # the transport writes the hello before any of it can be written.
        self.core.connected(conn)
        return conn, hello

    def recover(self, conn: "Connection", patterns: list[str], since: Any) -> list[bytes]:
        """What these subscriptions missed since ``since``, in the connection's
        format, or the ``reset`` that says history no longer covers it.

        Runs in the same step as the subscribe: live publications queue behind it.
        """
        try:
            replay = self.core.recovery.replay(conn, patterns, since)
        except Gap as gap:
            return wire.reset(conn.fmt, patterns, gap.reason, self.core.recovery.last_event_id)
        return [kept.frames[conn.fmt] for kept in replay]


class SSEHeartbeat:
    """An idle SSE stream gets a comment line each heartbeat round (keeps
    proxies from timing it out; an SSE client cannot answer a ping)."""

    __slots__ = ()

    def heartbeat(self, idle: bool) -> None:
        if idle:
            self.write(wire.SSE_PING)


class WakesWriter:
    """asyncio's flow control for a socket protocol: the writer checks the
    buffer size itself, and is woken when a paused socket drains."""

    __slots__ = ()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.wake()

"""The WebSocket protocol (SPEC section 6), shared by both WS transports.

``WSSession`` sits between a transport and the hub core: it authenticates
the handshake, subscribes the query's topics, runs client ops and turns
every refusal into an ``error`` frame, so the same bytes in give the same
bytes out on the ASGI port and on the native port. Transports only move frames.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from .. import wire
from ..auth import Principal, Request, may_publish, may_subscribe
from ..core.connection import (CLOSE_AUTH, CLOSE_BAD_DATA, CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_TOO_BIG,
                               CLOSE_TRY_LATER, Connection)
from ..errors import Forbidden, HubError
from ..limits import AbuseCounter, TokenBucket
from ..topics import requested_pattern
from .streams import refuse_repeated

if TYPE_CHECKING:
    from ..core.codec import Publication
    from .streams import Streams

log = logging.getLogger("hubbub")

AUTH_TIMEOUT = 5.0
# Refused publishes (over CLIENT_PUBLISH_RATE) tolerated within ABUSE_WINDOW
# seconds, as a multiple of the burst, before the connection is closed 1008.
ABUSE_WINDOW = 10.0
ABUSE_BURSTS = 2


class Refusal(NamedTuple):
    """A handshake refused after the transport accepted it (SPEC 6 closes
    with a code): the session sends it once the 101 is out."""
    error: HubError
    close_code: int
    explain: bool  # an error frame goes before the close


async def check_handshake(streams: "Streams", request: Request) -> "Principal | Refusal | None":
    """A WebSocket handshake's checks, the ones that may wait (an auth hook; a
    ``since`` id that another node gave out, until it arrives here), run
    before the transport answers 101 so that ``WSSession.open`` need not wait.

    Returns the principal, None when the handshake brought no credentials
    (an auth frame must follow), or the Refusal to send. Never raises."""
    core = streams.core
    try:
        core.admit(request.client)
    except HubError as error:
        return Refusal(error, CLOSE_TRY_LATER, True)
    try:  # a repeated single-valued parameter refuses the handshake: error 400, close 1008
        refuse_repeated(request)
    except HubError as error:
        return Refusal(error, CLOSE_POLICY, True)
    try:
        principal = await streams.auth.principal(request)
        since = request.first("since")
        if since:  # an id another node gave out: let it arrive here
            await core.recovery.caught_up(since)
    except HubError as error:
        return Refusal(error, CLOSE_AUTH, False)
    except Exception:
        log.exception("checking a WebSocket handshake failed")
        return Refusal(HubError(500, "internal error"), CLOSE_INTERNAL, False)
    return principal


class WSSession:
    # Slots, and the publish limiters made on first publish: most clients
    # only listen, and an idle connection should cost as little as possible.
    __slots__ = ("streams", "conn", "request", "authenticated", "_auth_timer", "_publish_bucket", "_abuse",
                 "_publishing")

    def __init__(self, streams: "Streams", conn: Connection, request: Request) -> None:
        self.streams = streams
        self.conn = conn
        self.request = request
        self.authenticated = False
        self._auth_timer: asyncio.TimerHandle | None = None
        self._publish_bucket: TokenBucket | None = None
        self._abuse: AbuseCounter | None = None
        self._publishing: asyncio.Future | None = None  # the last publish awaiting the backplane

    @property
    def publish_bucket(self) -> TokenBucket:
        if self._publish_bucket is None:
            self._publish_bucket = TokenBucket(self.streams.config.client_publish_rate)
        return self._publish_bucket

    @property
    def abuse(self) -> AbuseCounter:
        if self._abuse is None:
            self._abuse = AbuseCounter(int(ABUSE_BURSTS * self.publish_bucket.burst), ABUSE_WINDOW)
        return self._abuse

    def open(self, handshake: "Principal | Refusal | None") -> None:
        """The transport has answered 101: act on ``check_handshake``'s outcome.

        Synchronous, and called in the same loop callback as the 101 is
        written (before an ASGI accept is sent): a client that has seen its
        101 is already subscribed to its query's topics, so a publication
        made the moment the handshake completes reaches it."""
        conn = self.conn
        try:
            if isinstance(handshake, Refusal):
                if handshake.explain:
                    conn.send_control(wire.ws_error(handshake.error.code, handshake.error.reason))
                conn.close(handshake.close_code, handshake.error.reason)
            elif handshake is None:
                # No credentials in the handshake: the first frame must be
                # {"op": "auth"} within AUTH_TIMEOUT seconds.
                loop = asyncio.get_running_loop()
                self._auth_timer = loop.call_later(AUTH_TIMEOUT, self._auth_timed_out)
            else:
                self._authenticated(handshake)
        except Exception:
            log.exception("opening a WebSocket session failed")
            conn.close(CLOSE_INTERNAL, "internal error")

    def _auth_timed_out(self) -> None:
        if not self.authenticated:
            self.conn.close(CLOSE_AUTH, "authentication timed out")

    def _authenticated(self, principal: Principal, request_id: Any = None) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        conn = self.conn
        conn.principal = principal
        core = self.streams.core
        try:
            core.attach(conn)
        except HubError as error:
            conn.send_control(wire.ws_error(error.code, error.reason, request_id))
            conn.close(CLOSE_AUTH if error.code == 401 else CLOSE_POLICY, error.reason)
            return
        self.authenticated = True
        if request_id is not None:
            conn.send_control(wire.ws_op("ack", id=request_id))
        for error in self.streams.subscribe_query(conn, self.request):
            conn.send_control(wire.ws_error(error.code, error.reason))
        since = self.request.first("since")
        if since and conn.subscriptions:
            self._recover(list(conn.subscriptions), since)
        self.request = None  # the handshake is done with; idle connections stay small
        core.connected(conn)  # the hooks' greetings (the inbox's unread_count)

    def _recover(self, patterns: list[str], since: str) -> None:
        """Replay what these subscriptions missed since ``since``, or reset them."""
        frames = self.streams.recover(self.conn, patterns, since)
        if frames:
            self.conn.send_control(*frames)

    def lost(self, code: int) -> None:
        """The transport is gone: forget the connection (once) and any auth wait."""
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        self.conn.lost(code)

    def on_frame(self, data: bytes | str, text: bool = False) -> None:
        """One client message; ``text``: it came in a text frame (so must be UTF-8)."""
        conn = self.conn
        if conn.closed:
            return
        if len(data) > self.streams.config.max_message_bytes:
            conn.close(CLOSE_TOO_BIG, "frame over MAX_MESSAGE_BYTES")
            return
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            if text and isinstance(data, bytes) and not _is_utf8(data):
                # RFC 6455 8.1: a text message that is not UTF-8 fails the connection.
                conn.close(CLOSE_BAD_DATA, "text frame is not valid UTF-8")
            else:
                conn.send_control(wire.ws_error(400, "frame is not valid JSON"))
            return
        if not isinstance(msg, dict):
            conn.send_control(wire.ws_error(400, "frame must be a JSON object"))
            return
        request_id = msg.get("id")
        op = msg.get("op")
        try:
            if not self.authenticated:
                if op != "auth":
                    conn.close(CLOSE_AUTH, "authentication required: send {\"op\":\"auth\"} first")
                    return
                unknown = _unknown_fields(op, msg)
                if unknown:
                    conn.close(CLOSE_AUTH, unknown)
                    return
                self._auth_frame(msg, request_id)
                return
            handler = _OPS.get(op) if isinstance(op, str) else None
            if handler is None:
                raise HubError(400, f"unknown op {op!r}" if op is not None else "frame has no 'op'")
            unknown = _unknown_fields(op, msg)
            if unknown:
                raise HubError(400, unknown)
            handler(self, msg, request_id)
        except HubError as error:
            conn.send_control(wire.ws_error(error.code, error.reason, request_id))

    def _auth_frame(self, msg: dict, request_id: Any) -> None:
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            self.conn.close(CLOSE_AUTH, "auth frame needs a 'token'")
            return
        try:
            principal = self.streams.auth.decode(token)
        except HubError as error:
            self.conn.close(CLOSE_AUTH, error.reason)
            return
        self._authenticated(principal, request_id)

    # -- ops ----------------------------------------------------------------
    def op_subscribe(self, msg: dict, request_id: Any) -> None:
        if "topic" not in msg:
            raise HubError(400, "subscribe needs 'topic'")
        presence = msg.get("presence", False)
        if not isinstance(presence, bool):
            raise HubError(400, "presence must be true or false")
        core = self.streams.core
        core.subscribe(self.conn, msg["topic"], msg.get("filter"), presence)
        # "position": the hub's newest id, a resume point for a client that
        # gets no message before the connection drops (issue 14).
        self.conn.send_control(wire.ws_op("ack", id=request_id, position=core.recovery.last_event_id))
        if msg.get("since") is not None:
            self._recover([msg["topic"]], msg["since"])

    def op_unsubscribe(self, msg: dict, request_id: Any) -> None:
        if "topic" not in msg:
            raise HubError(400, "unsubscribe needs 'topic'")
        self.streams.core.unsubscribe(self.conn, msg["topic"])  # validates it like subscribe
        self.conn.send_control(wire.ws_op("ack", id=request_id))

    def op_publish(self, msg: dict, request_id: Any) -> None:
        if "topic" not in msg:
            raise HubError(400, "publish needs 'topic'")
        if not self.publish_bucket.take():
            if self.abuse.strike():
                self.conn.send_control(wire.ws_error(429, "publish rate exceeded", request_id))
                self.conn.close(CLOSE_POLICY, "publish rate exceeded persistently")
                return
            raise HubError(429, f"publish rate exceeded ({self.streams.config.client_publish_rate:g}/s)")
        pub = self._publication(msg)
        core = self.streams.core
        if core.broker.synchronous:  # the memory backplane: published in this step
            event_id = core.publish_now(pub)
            self.conn.send_control(wire.ws_op("ack", id=request_id, event_id=event_id))
            return
        # Over a shared backplane publishing waits on it: chained, so one
        # connection's publishes are numbered and acknowledged in the order sent.
        self._publishing = asyncio.ensure_future(self._publish_after(self._publishing, pub, request_id))

    def _publication(self, msg: dict) -> "Publication":
        """The publish op's publication, validated and authorized (not yet published)."""
        topic = msg.get("topic")
        if isinstance(topic, str) and not may_publish(self.conn.principal, topic):
            raise Forbidden(f"not allowed to publish to {topic!r}")
        if "data" not in msg:
            raise HubError(400, "publish needs 'data'")
        return self.streams.core.prepare(topic, msg["data"], event=msg.get("event"),
                                         ephemeral=msg.get("ephemeral", False))

    async def _publish_after(self, previous: asyncio.Future | None, pub: "Publication",
                             request_id: Any) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        try:
            event_id = await self.streams.core.submit(pub)
        except HubError as error:
            self.conn.send_control(wire.ws_error(error.code, error.reason, request_id))
            return
        except Exception:  # a task nobody awaits: say so to the client and the log
            log.exception("publishing through the backplane failed")
            self.conn.send_control(wire.ws_error(500, "internal error", request_id))
            return
        self.conn.send_control(wire.ws_op("ack", id=request_id, event_id=event_id))

    def op_ping(self, msg: dict, request_id: Any) -> None:
        if request_id is None:
            self.conn.send_control(b'{"op":"pong"}')
        else:
            self.conn.send_control(wire.ws_op("pong", id=request_id))

    def op_pong(self, msg: dict, request_id: Any) -> None:
        # The answer to the hub's app-level ping (ASGI port, where Granian
        # hides protocol pings), or sent unasked at connect (hubbub.js, the
        # Python client): the client speaks pong, so from now on its silence
        # closes it (4410). Never answered: a pong needs no reply.
        pong = getattr(self.conn.transport, "pong", None)
        if pong is not None:
            pong()

    def op_auth(self, msg: dict, request_id: Any) -> None:
        conn = self.conn
        # In --dev a handshake without a token is accepted as anonymous at once;
        # a later auth frame makes the connection the token's user.
        if not (conn.principal.unrestricted and conn.principal.user is None):
            raise HubError(400, "already authenticated")
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            raise HubError(400, "auth frame needs a 'token'")
        try:
            principal = self.streams.auth.decode(token)
        except HubError as error:
            conn.close(CLOSE_AUTH, error.reason)  # as for a bad token at the handshake
            return
        dropped = self.streams.core.sign_in(conn, principal)  # 429: stays anonymous
        self.streams.core.expiry.track(conn)  # from now on it ends with the token
        conn.send_control(wire.ws_op("ack", id=request_id))
        for pattern in dropped:
            conn.send_control(wire.ws_error(403, f"not allowed to subscribe to {pattern!r};"
                                                 f" unsubscribed on auth"))
        self.streams.core.connected(conn)

    def op_refresh(self, msg: dict, request_id: Any) -> None:
        """A fresh token of the same user with a later exp extends the connection
        (SPEC 10). Refused with an error frame, the old expiry kept: no token or
        nothing to extend (400), an invalid token (401), another user's (403),
        an exp not later than the one the connection has (400)."""
        conn = self.conn
        current = conn.principal
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            raise HubError(400, "refresh needs a 'token'")
        if current.user is None:
            raise HubError(400, "this connection has no token to refresh: send {\"op\":\"auth\"}")
        principal = self.streams.auth.decode(token)  # Unauthorized: the connection stays as it was
        if principal.user != current.user:
            raise Forbidden(f"refresh token is for user {principal.user!r}, not {current.user!r}")
        if current.expires is None:
            raise HubError(400, "this connection's token has no exp: nothing to extend")
        if principal.expires is not None and principal.expires <= current.expires:
            raise HubError(400, f"refresh token's exp {principal.expires:g} is not later than"
                                f" the connection's {current.expires:g}")
        core = self.streams.core
        conn.principal = principal  # the fresh claims govern from now on, grants included
        core.expiry.track(conn)
        dropped = [p for p in conn.subscriptions if not may_subscribe(principal, p)]
        for pattern in dropped:
            core.unsubscribe(conn, pattern)
        conn.send_control(wire.ws_op("refreshed", id=request_id, exp=principal.expires))
        for pattern in dropped:
            conn.send_control(wire.ws_error(403, f"not allowed to subscribe to {pattern!r};"
                                                 f" unsubscribed on refresh"))

    def op_presence(self, msg: dict, request_id: Any) -> None:
        if "topic" not in msg:
            raise HubError(400, "presence needs 'topic'")
        topic = requested_pattern(msg["topic"])
        if not may_subscribe(self.conn.principal, topic):
            raise HubError(403, f"not allowed to see presence of {topic!r}")
        asyncio.ensure_future(self._presence_reply(topic, request_id))

    async def _presence_reply(self, topic: str, request_id: Any) -> None:
        # The store behind presence may be remote (async), so the answer is sent when ready.
        try:
            answer = await self.streams.presence.members(topic)
        except Exception:
            log.exception("presence of %r failed", topic)
            self.conn.send_control(wire.ws_error(503, "presence unavailable", request_id))
            return
        if request_id is not None:
            answer = {"id": request_id, **answer}
        self.conn.send_control(wire.ws_op("presence", **answer))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


# The fields each op takes (SPEC 6), besides "op" and "id". Any other is
# refused, as POST /publish refuses unknown fields: a "priority" the client
# thinks it set, or a misspelt "filter", must not pass in silence (the
# publication going out at normal priority, the subscription unfiltered).
# ping and pong carry nothing, so an extra field there loses nothing.
_FIELDS = {
    "subscribe": frozenset({"topic", "since", "filter", "presence"}),
    "unsubscribe": frozenset({"topic"}),
    "publish": frozenset({"topic", "data", "event", "ephemeral"}),
    "presence": frozenset({"topic"}),
    "auth": frozenset({"token"}),
    "refresh": frozenset({"token"}),
}
_ENVELOPE = frozenset({"op", "id"})


def _unknown_fields(op: str, msg: dict) -> str | None:
    """The reason to refuse ``msg`` for fields ``op`` does not take, or None."""
    fields = _FIELDS.get(op)
    if fields is None:
        return None
    unknown = msg.keys() - fields - _ENVELOPE
    if not unknown:
        return None
    named = ", ".join(repr(f[:40]) for f in sorted(unknown)[:3])  # bounded: keys are the client's
    more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
    return f"{op} does not take {named}{more}; it takes {', '.join(sorted(fields))}"


_OPS = {
    "subscribe": WSSession.op_subscribe,
    "unsubscribe": WSSession.op_unsubscribe,
    "publish": WSSession.op_publish,
    "ping": WSSession.op_ping,
    "pong": WSSession.op_pong,
    "auth": WSSession.op_auth,
    "presence": WSSession.op_presence,
    "refresh": WSSession.op_refresh,
}

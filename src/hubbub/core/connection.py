"""A client connection and its writer, whatever carries it.

One ``Connection`` per client is the one writer of that client: it owns the
outbox (publications, pushed by ``fanout``), the control frames (acks,
errors, replays), the wake handshake with the outbox (``armed``), the
batching (everything queued goes out in one write) and the close state
machine::

    OPEN ──close(code)──► CLOSING ──transport gone──► CLOSED
      └────────────peer gone (lost)────────────────────┘

The hub forgets the connection (its ``on_closed``) exactly once, at the
first step out of OPEN, so nothing is pushed to a connection that is going
away; the control frames still owed (the error that explains a close) are
written before the transport is asked to close.

A connection knows no hub: it is made (``HubCore.connection``) with its
outbox, the flusher's ``schedule`` and the core's ``on_closed``.

A transport supplies only what differs between sockets and ASGI streams
(see ``Transport``). Connections are flushed by the hub's ``Flusher``: one
callback per loop turn (or per FLUSH_DELAY when the hub is busy) writes every
woken connection.
"""
from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..auth import Principal
from ..wire import POLL, SEPARATORS, SSE, dropped_notice, sse_event

if TYPE_CHECKING:
    from .._core import Outbox, Subscription

# A batch is one write; bounded so one connection's backlog cannot hold the
# event loop for long or build a huge frame.
BATCH_MAX_MESSAGES = 512
BATCH_MAX_BYTES = 512 << 10
# Bytes a transport may hold unsent (kernel buffer, ASGI send queue) before
# the writer stops feeding it: past this the outbox keeps the backlog, under
# its own bounds, so a slow client costs only itself.
HIGH_WATER = 256 << 10

_ids = itertools.count(1)

# Close codes (WS close codes; SSE and poll simply end).
CLOSE_NORMAL = 1000
CLOSE_SHUTDOWN = 1001
CLOSE_PROTOCOL = 1002
CLOSE_BAD_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013
CLOSE_AUTH = 4401  # also a token that expired (SPEC 10): reason TOKEN_EXPIRED
TOKEN_EXPIRED = "token expired"
CLOSE_SLOW = 4408
CLOSE_NO_PONG = 4410  # SPEC 10: dropped for missing pongs, with a close frame
# A WS close frame carries at most 123 bytes of reason (RFC 6455 5.5); the
# hub sends at most this many, and the server API refuses longer ones.
MAX_CLOSE_REASON_BYTES = 120

OPEN, CLOSING, CLOSED = "open", "closing", "closed"
# No control frames owed: a shared empty tuple rather than a list per
# connection (56 B of every idle one); a list is made when frames come.
NO_CONTROL: tuple = ()


class Transport(Protocol):
    """What a connection needs from whatever carries its bytes.

    A transport may also name its listener in a ``port`` attribute
    (``"native"``; ``"asgi"`` when it has none), for the close counters."""

    def write(self, data: bytes) -> None:
        """Send these bytes (one batch of the connection's wire format); never blocks."""

    def buffered(self) -> int:
        """Bytes written but not yet sent to the peer."""

    def close(self, code: int, reason: str) -> None:
        """End the stream after what was written (WS: a close frame with ``code``)."""

    def heartbeat(self, idle: bool) -> bool | None:
        """Called every liveness period; ``idle``: nothing was written since the last call.

        False: the peer left the last ping unanswered, and the connection is
        closed with a close frame saying so (4410 ``no pong``)."""


class Connection:
    __slots__ = ("fmt", "principal", "transport", "id", "outbox", "subscriptions", "control",
                 "state", "scheduled", "wrote", "close_code", "close_reason", "disconnect_code",
                 "schedule", "on_closed", "__weakref__")

    def __init__(self, fmt: int, principal: Principal, transport: Transport, outbox: "Outbox",
                 schedule: Callable[["Connection"], None],
                 on_closed: Callable[["Connection", int | None], None]) -> None:
        self.fmt = fmt
        self.principal = principal
        self.transport = transport
        self.id = f"{secrets.token_hex(4)}{next(_ids):x}"
        self.outbox = outbox
        outbox.owner = self  # fanout hands back owners to wake, not outboxes
        self.subscriptions: dict[str, Subscription] = {}
        self.control: list[bytes] | tuple = NO_CONTROL
        self.state = OPEN
        self.scheduled = False  # waiting in the flusher's list
        # Both shared by every connection of a hub (bound once, by their owners).
        self.schedule = schedule  # the flusher's: write me on its next round
        self.on_closed = on_closed  # the core's: count the close and forget me (once)
        # Something was written since the last heartbeat round; a new
        # connection counts as busy, so its first ping waits a whole interval.
        self.wrote = True
        self.close_code: int | None = None
        self.close_reason = ""
        # The server API's close code when it disconnected this connection (a
        # poll is closed 410 and tells its client this code in the answer).
        self.disconnect_code: int | None = None

    @property
    def port(self) -> str:
        """The listener that carries it, for the metrics: ``native`` or ``asgi``."""
        return getattr(self.transport, "port", "asgi")

    @property
    def closed(self) -> bool:
        return self.state is not OPEN

    # -- queueing ------------------------------------------------------------
    def send_control(self, *frames: bytes) -> None:
        """Queue replies (and replays) ahead of messages; never dropped, never conflated."""
        if self.state is not OPEN:
            return
        if self.control:
            self.control.extend(frames)
        else:
            self.control = list(frames)
        self.wake()

    def wake(self) -> None:
        """There is something to write: have the flusher write it soon."""
        if not self.scheduled and self.state is OPEN:
            self.scheduled = True
            self.schedule(self)

    # -- writing -------------------------------------------------------------
    def flush(self) -> None:
        """Write batches while the transport takes them; re-arm the outbox once empty."""
        self.scheduled = False
        if self.state is not OPEN:
            return
        transport = self.transport
        outbox = self.outbox
        while transport.buffered() < HIGH_WATER:
            batch = self.next_batch()
            if batch:
                transport.write(batch)
                self.wrote = True
                if self.state is not OPEN:  # the write found the peer gone
                    return
                if self.control or outbox.count or outbox.dropped:
                    continue
            outbox.armed = True  # empty: the next push wakes us again
            return
        # Over the high-water mark: the transport wakes us when it drains.

    def next_batch(self) -> bytes:
        """Control replies, a pending ``dropped`` notice, then queued messages."""
        outbox = self.outbox
        if not self.control and not outbox.dropped:  # the common case: messages only
            return outbox.drain(BATCH_MAX_MESSAGES, BATCH_MAX_BYTES) if outbox.count else b""
        parts = self._take_control()
        if self.control:  # more control (a long replay) to come: messages wait behind it
            return SEPARATORS[self.fmt].join(parts)
        if outbox.dropped and self.fmt != POLL:  # a poll answer reports drops itself
            parts.append(dropped_notice(self.fmt, outbox.take_dropped()))
        if outbox.count:
            parts.append(outbox.drain(BATCH_MAX_MESSAGES, BATCH_MAX_BYTES))
        return SEPARATORS[self.fmt].join(parts)

    def _take_control(self) -> list[bytes]:
        """Control frames for one write, at most about BATCH_MAX_BYTES."""
        control = self.control
        size = 0
        for index, frame in enumerate(control):
            size += len(frame)
            if size > BATCH_MAX_BYTES and index:
                self.control = control[index:]
                return control[:index]
        self.control = NO_CONTROL
        return control or []  # a list to add to; NO_CONTROL when only a dropped notice is owed

    def has_pending(self) -> bool:
        return bool(self.control or self.outbox.count or self.outbox.dropped)

    def heartbeat(self) -> None:
        if self.state is OPEN:
            if self.transport.heartbeat(not self.wrote) is False:
                self.close(CLOSE_NO_PONG, "no pong")
                return
            self.wrote = False

    # -- closing -------------------------------------------------------------
    def expire(self) -> None:
        """The token's exp (plus leeway) passed: WS close 4401, SSE ``event: expired``
        then the end, and a waiting poll's answer becomes 401 (the transport reads
        ``close_code``)."""
        if self.state is not OPEN:
            return
        if self.fmt == SSE:
            self.control = [*self.control, sse_event("expired", {"reason": TOKEN_EXPIRED,
                                                                 "exp": self.principal.expires})]
        self.close(CLOSE_AUTH, TOKEN_EXPIRED)

    def close(self, code: int, reason: str = "") -> None:
        """Close from our side (idempotent): owed control frames, then the transport's close."""
        if self.state is not OPEN:
            return
        self.state = CLOSING
        self.close_code = code
        self.close_reason = reason = close_reason(reason)
        self.on_closed(self, code)
        if self.control:  # the error explaining the close goes first; the backlog is not owed
            owed = SEPARATORS[self.fmt].join(self.control)
            self.control = NO_CONTROL
            self.transport.write(owed)
        self.transport.close(code, reason)

    def lost(self, code: int = CLOSE_SHUTDOWN) -> None:
        """The transport is gone (peer closed, socket reset, or our close completed)."""
        if self.state is OPEN:
            self.close_code = code
            self.on_closed(self, code)
        self.state = CLOSED
        self.control = NO_CONTROL


def close_reason(reason: str) -> str:
    """``reason`` cut to fit a close frame. The cut falls on a character
    boundary: half a UTF-8 character would make the peer fail the connection
    (RFC 6455 8.1), and a reason may quote what a client sent."""
    data = reason.encode()
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return data[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")

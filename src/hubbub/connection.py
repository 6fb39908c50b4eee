"""A client connection as the hub sees it, whatever carries it.

The hub pushes publications into ``outbox`` (through ``fanout``) and
control replies (acks, errors, pongs) into ``control``; the transport's
writer collects both into one write with ``next_batch`` whenever ``wake``
tells it there is something to send. Transports subclass this and
implement ``wake`` and ``close``.
"""
from __future__ import annotations

import itertools
import secrets
from typing import TYPE_CHECKING

from ._core import Outbox
from .auth import Principal
from .wire import SEPARATORS, dropped_notice

if TYPE_CHECKING:
    from ._core import Subscription
    from .hub import Hub

# A batch is one socket write; bounded so one connection's backlog cannot
# hold the event loop for long or build a huge frame.
BATCH_MAX_MESSAGES = 512
BATCH_MAX_BYTES = 512 << 10

_ids = itertools.count(1)

# Close reasons, mapped to WS close codes by the transports.
CLOSE_SLOW = 4408
CLOSE_AUTH = 4401
CLOSE_SHUTDOWN = 1001
CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008


class Connection:
    def __init__(self, hub: "Hub", fmt: int, principal: Principal) -> None:
        config = hub.config
        self.hub = hub
        self.fmt = fmt
        self.principal = principal
        self.id = f"{secrets.token_hex(4)}{next(_ids):x}"
        self.outbox = Outbox(config.queue_max_messages, config.queue_max_bytes,
                             config.slow_consumer_policy, SEPARATORS[fmt])
        self.outbox.owner = self
        self.subscriptions: dict[str, Subscription] = {}
        self.control: list[bytes] = []
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""

    # -- called by the hub -------------------------------------------------
    def send_control(self, *frames: bytes) -> None:
        """Queue replies (and replays) ahead of messages; never dropped, never conflated."""
        if self.closed:
            return
        self.control.extend(frames)
        self.wake()

    def wake(self) -> None:
        """There is something to write: have the writer run soon."""
        raise NotImplementedError

    def close(self, code: int, reason: str = "") -> None:
        """End the connection (idempotent); the hub forgets it at once."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.close_reason = reason
        self.hub.detach(self)
        self.closing()

    def closing(self) -> None:
        """The transport's part of ``close``: end the socket or stream."""
        raise NotImplementedError

    def take_owed(self) -> bytes:
        """The control frames still owed (the error that explains a close),
        joined for one write; the backlog of messages is not owed."""
        owed = SEPARATORS[self.fmt].join(self.control)
        self.control = []
        return owed

    # -- called by the transport's writer ------------------------------------
    def next_batch(self) -> bytes:
        """Control replies, a pending ``dropped`` notice, then queued messages."""
        outbox = self.outbox
        if not self.control and not outbox.dropped:  # the common case: messages only
            return outbox.drain(BATCH_MAX_MESSAGES, BATCH_MAX_BYTES) if outbox.count else b""
        parts = self._take_control()
        if self.control:  # more control (a long replay) to come: messages wait behind it
            return SEPARATORS[self.fmt].join(parts)
        dropped = outbox.take_dropped()
        if dropped:
            parts.append(dropped_notice(self.fmt, dropped))
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
        self.control = []
        return control

    def has_pending(self) -> bool:
        return bool(self.control or self.outbox.count or self.outbox.dropped)

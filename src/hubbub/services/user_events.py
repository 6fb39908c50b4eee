"""Per-user events (the inbox's ``notification``, ``notification_deleted``,
``unread_count``) to every live connection of a user, on every node.

Between nodes they travel as fleet events (``broker.broadcast``, the
broker's events channel): ``["user", user, event, payload]``; presence
join/leave travel the same way as ``["join"|"leave", topic, user, info]``,
and the server API's ``["disconnect", user, code, reason]`` and
``["unsubscribe", user, topic]`` (``disconnect``, ``unsubscribe``).
A node handles its own where it makes them and never hears them back;
``on_fleet_event`` handles those of the other nodes.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..errors import HubError

if TYPE_CHECKING:
    from ..backplane import Broker
    from ..core.hub import HubCore
    from .presence import Presence

log = logging.getLogger("hubbub.fleet")


class UserEvents:
    def __init__(self, core: "HubCore", broker: "Broker", presence: "Presence") -> None:
        self.core = core
        self.broker = broker
        self.presence = presence

    def emit(self, user: str, event: str, payload: Any) -> "asyncio.Task | None":
        """Send an event to every live connection of ``user``, this node's at once.

        Over a shared backplane the other nodes get it too: returns the task
        sending it (the inbox awaits it, so a user's events leave this node in
        the order they happened), else None. A failure to send is logged: the
        event is a live echo of what the store already holds, and the next
        connect brings the count."""
        self.core.users.send(user, event, payload)
        if self.broker.synchronous:
            return None
        return asyncio.ensure_future(self._broadcast(["user", user, event, payload]))

    async def _broadcast(self, event: list) -> None:
        try:
            await self.broker.broadcast(event)
        except HubError as error:
            log.warning("fleet event %r for %r not sent: %s", event[2], event[1], error.reason)

    # -- the server API (POST /disconnect, POST /unsubscribe), fleet-wide --------
    async def disconnect(self, user: str, code: int, reason: str) -> int:
        """Close every connection of ``user`` on every node; returns this node's count.

        This node acts first, then tells the others. Raises HubError 503 when
        the backplane cannot take the fleet event: this node's connections
        are closed, other nodes' may not be, and a retry is safe (closing
        nobody twice)."""
        closed = self.core.users.disconnect(user, code, reason)
        if not self.broker.synchronous:
            await self.broker.broadcast(["disconnect", user, code, reason])
        return closed

    async def unsubscribe(self, user: str, topic: str) -> int:
        """Drop ``topic`` (an exact subscribed pattern) from every connection of
        ``user`` on every node; returns this node's count. 503 as ``disconnect``."""
        count = self.core.users.unsubscribe(user, topic)
        if not self.broker.synchronous:
            await self.broker.broadcast(["unsubscribe", user, topic])
        return count

    def on_fleet_event(self, event: list) -> None:
        """The broker's ``on_event``: a fleet event another node sent."""
        kind = event[0]
        if kind == "user":
            _, user, name, payload = event
            self.core.users.send(user, name, payload)
        elif kind in ("join", "leave"):
            _, topic, user, info = event
            self.presence.fleet_event(kind, topic, user, info)
        elif kind == "disconnect":
            _, user, code, reason = event
            self.core.users.disconnect(user, code, reason)
        elif kind == "unsubscribe":
            _, user, topic = event
            self.core.users.unsubscribe(user, topic)
        else:
            log.warning("unknown fleet event %r (a newer node?)", kind)

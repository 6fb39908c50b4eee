"""Telling a user's connections their unread count: on connect, and with every poll answer.

The app wires ``greet`` to the core's ``on_connected`` hook and sets
``inbox`` once the store is open (None while it is not: then nobody is
greeted, and a poll answer carries no count).
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ... import wire

if TYPE_CHECKING:
    from ...core.connection import Connection
    from .service import Inbox

log = logging.getLogger("hubbub.inbox")


class UnreadCounts:
    def __init__(self) -> None:
        self.inbox: Inbox | None = None
        self._greeters: set[asyncio.Task] = set()

    async def count_or_none(self, user: str | None) -> int | None:
        """The user's unread count, or None (anonymous, or the store failed: logged)."""
        inbox = self.inbox
        if user is None or inbox is None:
            return None
        try:
            return await inbox.unread_count_in_order(user)
        except Exception as error:
            log.warning("unread_count for user %r unavailable: %s", user,
                        getattr(error, "reason", None) or error)
            return None

    def greet(self, conn: "Connection") -> None:
        """A user's connection is open: send it ``unread_count``. In the
        background: a slow store never holds a connect."""
        if conn.principal.user is None or self.inbox is None:
            return
        task = asyncio.ensure_future(self._greet(conn))
        self._greeters.add(task)
        task.add_done_callback(self._greeters.discard)

    async def _greet(self, conn: "Connection") -> None:
        count = await self.count_or_none(conn.principal.user)
        if count is not None:
            conn.send_control(wire.user_event(conn.fmt, "unread_count", {"count": count}))

    def cancel(self) -> None:
        for task in list(self._greeters):
            task.cancel()

"""Ending connections whose token has expired (SPEC 10, "Connection lifetime").

A connection authenticated by a JWT with ``exp`` ends when exp plus
HUBBUB_JWT_LEEWAY passes. Nothing is checked per delivery: ``Expiry`` keeps
one heap of deadlines for the whole hub and one loop timer, armed for the
earliest of them, so a connection ends within a few milliseconds of its
deadline. The core's heartbeat round sweeps too (a backstop where no loop
was running when a connection was tracked, or after a wall-clock jump).

Each tracked connection costs one heap entry, and only while its token has
an ``exp``: a weak reference to the connection that carries its deadline
and orders by it (``_Entry``: ~120 bytes with its float and heap slot; a
``(deadline, seq, weakref)`` tuple was about 200). The weak reference lets
a connection that closed early be freed at once. A refresh (a later exp)
pushes a new entry: the stale one is skipped when it comes up, since the
deadline is read again from the connection's principal.
"""
from __future__ import annotations

import asyncio
import heapq
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Connection


class _Entry(weakref.ref):
    """A heap entry: a weak reference to a connection, ordered by its deadline
    (ties in any order: heapq needs only ``<``)."""

    __slots__ = ("deadline",)

    def __new__(cls, conn: "Connection", deadline: float) -> "_Entry":
        self = super().__new__(cls, conn)
        self.deadline = deadline
        return self

    def __init__(self, conn: "Connection", deadline: float) -> None:
        super().__init__(conn)

    def __lt__(self, other: "_Entry") -> bool:
        return self.deadline < other.deadline


class Expiry:
    __slots__ = ("leeway", "_heap", "_timer", "_timer_at")

    def __init__(self, leeway: float) -> None:
        self.leeway = leeway
        self._heap: list[_Entry] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # the deadline (wall clock) the timer is armed for

    def deadline(self, conn: "Connection") -> float | None:
        expires = conn.principal.expires
        return None if expires is None else expires + self.leeway

    def track(self, conn: "Connection") -> None:
        """Follow ``conn``'s deadline (its principal's, now): call again after a refresh."""
        deadline = self.deadline(conn)
        if deadline is None:
            return
        heapq.heappush(self._heap, _Entry(conn, deadline))
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)

    def __len__(self) -> int:
        return len(self._heap)

    def sweep(self) -> int:
        """End every connection past its deadline; returns how many ended."""
        heap = self._heap
        now = time.time()
        ended = 0
        while heap and heap[0].deadline <= now:
            conn = heapq.heappop(heap)()
            if conn is None or conn.closed:
                continue
            deadline = self.deadline(conn)
            if deadline is None or deadline > now:
                continue  # refreshed: its new deadline has its own entry
            conn.expire()
            ended += 1
        if heap and (self._timer is None or heap[0].deadline < self._timer_at):
            self._arm(heap[0].deadline)
        return ended

    def _fire(self) -> None:
        self._timer = None
        self.sweep()
        if self._heap and self._timer is None:
            self._arm(self._heap[0].deadline)

    def _arm(self, deadline: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a unit test): the heartbeat round sweeps
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        # A wall-clock deadline on the loop's monotonic clock: early after a
        # clock jump is harmless (the sweep re-reads the time and re-arms).
        self._timer = loop.call_later(max(0.0, deadline - time.time()), self._fire)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

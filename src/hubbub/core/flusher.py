"""One flusher per hub (so per event loop): writes every woken connection.

Woken connections are written together in one loop callback, each with
everything queued for it in ONE write. When is that callback run?

- A hub that keeps up writes at once: the callback runs on the next loop
  turn. At a steady rate the hub writes as it goes, adding no latency.
- A busy hub coalesces: when a publication arrives right after the previous
  round (within BUSY_GAP: the loop had no idle time in between), the next
  round waits until FLUSH_DELAY after the previous one. Publications that
  arrive one per loop turn (one HTTP request, one client frame each) then
  share one write per subscriber instead of costing a syscall each: the
  write (~6-10 µs on a VM) is the price of a delivery, and this divides it by
  the number of publications in the window. The delay is bounded, so latency
  is bounded too (centrifuge's write delay, but only when it pays).

In what order? Woken connections arrive in the fan-out's subscriber order,
so writing them as they came would make the same subscribers wait for the
whole round every time (at 1,000 subscribers and ~7 µs a write, the last
one ~7 ms after the first, every round). Each round starts instead at its
own point of the list and wraps around: the start moves by the golden
ratio of the list's length each round, which spreads the starts evenly
whatever the lengths, so every subscriber is early as often as late. The
cost is one multiplication a round. A round's latencies taken together do
not change (the same writes, the same time); who pays them does.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .._core import RoundWriter
from .connection import BATCH_MAX_BYTES, BATCH_MAX_MESSAGES, HIGH_WATER, OPEN
from .counters import LatencyHistogram

if TYPE_CHECKING:
    from .connection import Connection


# A wake this soon after the previous round ended means the loop had no idle
# time in between: publications are arriving as fast as they are written.
BUSY_GAP = 0.001
# Where successive rounds start, as a fraction of the round's length: the
# golden ratio's fractional part (a low-discrepancy sequence of starts).
START_STEP = 0.6180339887498949


class Flusher:
    # False: write in the order woken (what bench/write_order.py compares against).
    rotate = True

    def __init__(self, delay: float) -> None:
        self.delay = delay  # seconds (HUBBUB_FLUSH_DELAY is in milliseconds)
        self.pending: list[Connection] = []
        self._handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_round = float("-inf")  # perf_counter() when the previous round ended
        self.rounds = 0
        # Publish-to-write latency, one observation per round: the hub stamps
        # ``woken_at`` when a publication wakes the first writer of a round,
        # the round observes how long ago that was once it has written.
        self.woken_at: float | None = None
        self.write_latency = LatencyHistogram()
        self._start = 0.0  # where the next round starts, as a fraction of its length
        # Flushes a round's connections: the compiled one writes the common case
        # (messages only, one batch, a socket transport) without a Python call.
        self.writer = RoundWriter(OPEN, HIGH_WATER, BATCH_MAX_MESSAGES, BATCH_MAX_BYTES)
        # Bound once: every connection holds this same object (a bound method
        # made per connection would be 64 B of each idle connection).
        self.schedule = self._schedule

    def _schedule(self, conn: "Connection") -> None:
        """Write ``conn`` on the next round (``schedule``, the connections' entry point)."""
        self.pending.append(conn)
        if self._handle is None:
            self._arm()

    def wake_all(self, conns: "list[Connection]") -> None:
        """``Connection.wake`` for each of a fan-out's woken connections, in one
        call rather than two per delivery (at one publication a round, the
        Python calls around a delivery's write are most of the hub's own cost)."""
        pending = self.pending
        for conn in conns:
            if not conn.scheduled and conn.state is OPEN:
                conn.scheduled = True
                pending.append(conn)
        if pending and self._handle is None:
            self._arm()

    def _arm(self) -> None:
        """Schedule the next round: now if the loop idled since the last one, else later."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        since = time.perf_counter() - self._last_round
        if since >= BUSY_GAP or since >= self.delay:
            # The loop idled since the last round: the hub keeps up, write now.
            self._handle = loop.call_soon(self.run)
        else:
            # Busy: let publications gather until FLUSH_DELAY after the last round.
            self._handle = loop.call_later(self.delay - since, self.run)

    def run(self) -> None:
        """One round: flush every connection woken since the last one."""
        self._handle = None
        pending, self.pending = self.pending, []
        start = 0
        if self.rotate and len(pending) > 1:
            start = int(self._start * len(pending))
            self._start = (self._start + START_STEP) % 1.0
        self.writer.write_round(pending, start)
        self.rounds += 1
        if self.woken_at is not None:
            self.write_latency.observe(time.perf_counter() - self.woken_at)
            self.woken_at = None
        self._last_round = time.perf_counter()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

"""One flusher per hub (so per event loop): writes every woken connection.

Woken connections are written together in one loop callback, each with
everything queued for it in ONE write. When is that callback run?

- An idle hub writes at once: the callback runs on the next loop turn.
- A busy hub coalesces: if the previous round ended less than FLUSH_DELAY
  ago, the next round waits until FLUSH_DELAY after it. Publications that
  arrive one per loop turn (one HTTP request, one client frame each) then
  share one write per subscriber instead of costing a syscall each: the
  write (~6-10 µs on a VM) is the price of a delivery, and this divides it by
  the number of publications in the window. The delay is bounded, so latency
  is bounded too (centrifuge's write delay, but only when it pays).

Also runs the heartbeat: every HEARTBEAT seconds each connection's transport
may ping an idle peer (SSE comment, app-level WS ping on ASGI).
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .telemetry import LatencyHistogram

if TYPE_CHECKING:
    from .connection import Connection


class Flusher:
    def __init__(self, delay: float) -> None:
        self.delay = delay  # seconds (HUBBUB_FLUSH_DELAY is in milliseconds)
        self.pending: list[Connection] = []
        self._handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_round = float("-inf")
        self.rounds = 0
        # Publish-to-write latency, one observation per round: the hub stamps
        # ``woken_at`` when a publication wakes the first writer of a round,
        # the round observes how long ago that was once it has written.
        self.woken_at: float | None = None
        self.write_latency = LatencyHistogram()

    def schedule(self, conn: "Connection") -> None:
        self.pending.append(conn)
        if self._handle is None:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            due = self._last_round + self.delay
            if loop.time() >= due:
                self._handle = loop.call_soon(self.run)
            else:
                self._handle = loop.call_at(due, self.run)

    def run(self) -> None:
        """One round: flush every connection woken since the last one."""
        self._handle = None
        pending, self.pending = self.pending, []
        for conn in pending:
            conn.flush()
        self.rounds += 1
        if self.woken_at is not None:
            self.write_latency.observe(time.perf_counter() - self.woken_at)
            self.woken_at = None
        if self._loop is not None:  # None: run by hand before anything was scheduled
            self._last_round = self._loop.time()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

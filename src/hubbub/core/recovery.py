"""The id space and what a client can resume from (SPEC 4, 5, 10).

An event id is ``{epoch}-{seq}``: the backplane names the epoch (its id
space) and numbers publications fleet-wide. ``Recovery`` keeps the history
of this node, knows the newest seq it delivered, and answers a resume: the
kept publications after an id (``replay``, all or nothing), or ``Gap`` when
history no longer covers it. Ids compare only within one epoch.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from .history import HISTORY_GAP, Gap, History, Kept

if TYPE_CHECKING:
    from ..backplane import Broker
    from ..config import Config
    from .codec import Publication
    from .connection import Connection
    from .counters import Counters

MAX_SEQ_DIGITS = 19  # a sequence fits in 63 bits
# How long a resume waits for this node to deliver an id it has not seen yet
# (the client reached it before the publication did; see ``caught_up``).
FUTURE_ID_WAIT = 1.0


class Recovery:
    def __init__(self, config: "Config", broker: "Broker", counters: "Counters") -> None:
        self.config = config
        self.broker = broker
        self.counters = counters
        self.history = History(config.history_size, config.history_ttl)
        self.event_seq = 0  # the newest seq delivered here
        self._catching_up: list[tuple[int, asyncio.Future]] = []  # resumes waiting for a seq

    @property
    def epoch(self) -> str:
        """The id space: the backplane's, shared by every node of the fleet."""
        return self.broker.epoch

    @property
    def last_event_id(self) -> str:
        """The id of the newest kept publication (or of none yet): a resume point for 'now'."""
        return f"{self.epoch}-{self.event_seq}"

    # -- as publications are delivered -----------------------------------------
    def keep(self, pub: "Publication", seq: int, event_id: str, frames: tuple) -> None:
        # Aged from when it was published, so a backfilled entry expires
        # when it would have on the node that published it.
        expires = time.monotonic() + self.config.history_ttl - max(0.0, time.time() - pub.ts / 1000)
        self.history.append(pub.topic, Kept(seq, event_id, frames, pub.tags, expires))

    def delivered(self, seq: int) -> None:
        self.event_seq = seq
        if self._catching_up:
            for wanted, waiter in self._catching_up:
                if wanted <= seq and not waiter.done():
                    waiter.set_result(None)

    def forget_upto(self, upto: int) -> None:
        """Publications up to ``upto`` that were not delivered here never will be."""
        self.history.forgotten_upto = max(self.history.forgotten_upto, upto)  # history_gap below it
        self.event_seq = max(self.event_seq, upto)

    def new_epoch(self) -> None:
        """The backplane lost its data: old ids can no longer be resumed from."""
        self.history = History(self.config.history_size, self.config.history_ttl)
        self.event_seq = 0

    # -- resuming -----------------------------------------------------------------
    async def caught_up(self, event_id: Any, timeout: float = FUTURE_ID_WAIT) -> None:
        """Wait (at most ``timeout``) until this node delivered ``event_id``.

        A client may resume here with an id another node gave it before the
        publication reached this node (its publish ack, or a message read
        from a faster node). Resuming before it arrived would replay nothing
        and then deliver, live, publications the client already has; so the
        resume waits for delivery to catch up. An id still ahead after the
        wait is treated as covered (see ``parse_event_id``).
        """
        if self.broker.synchronous:
            return
        seq = self._own_seq(event_id)
        if seq is None or seq <= self.event_seq:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._catching_up.append((seq, waiter))
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            if not waiter.done():
                waiter.cancel()
            self._catching_up = [(s, w) for s, w in self._catching_up if not w.done()]

    def parse_event_id(self, event_id: Any) -> int:
        """The sequence inside an id this hub gave out; Gap for any other id.

        An id from another epoch (this hub restarted without shared history),
        a malformed id or one from the future cannot be resumed from.
        """
        seq = self._own_seq(event_id)
        if seq is None:
            raise Gap(HISTORY_GAP)
        if seq > self.event_seq and self.broker.synchronous:
            # From the future. Alone, no hub gave it out. In a fleet, another
            # node may have (the resume already waited in ``caught_up``):
            # it is covered, and replay has nothing after it yet.
            raise Gap(HISTORY_GAP)
        return seq

    def _own_seq(self, event_id: Any) -> int | None:
        """The seq of an id of this epoch; None for anything else."""
        if not isinstance(event_id, str):
            return None
        epoch, _, seq = event_id.rpartition("-")
        # ASCII digits only, and no longer than any sequence this hub can
        # reach: str.isdigit() also accepts Unicode digits that int() rejects,
        # and a 5,000-digit number is no id of ours either.
        if (epoch != self.epoch or not seq or len(seq) > MAX_SEQ_DIGITS or not seq.isascii()
                or not seq.isdigit()):
            return None
        return int(seq)

    def replay(self, conn: "Connection", patterns: list[str], since: Any) -> list[Kept]:
        """Kept publications after ``since`` for these subscriptions of ``conn``.

        All or nothing: raises Gap when history does not cover ``since`` or the
        replay would exceed RECOVERY_MAX. Called in the same step as the
        subscribe, so no live publication can fall between replay and live.
        """
        try:
            seq = self.parse_event_id(since)
            subscriptions = [(p, conn.subscriptions[p].filter) for p in patterns if p in conn.subscriptions]
            kept = self.history.recover(subscriptions, seq, self.config.recovery_max)
        except Gap as gap:
            self.counters.reset(gap.reason)
            raise
        self.counters.replayed(len(kept))
        return kept

    def history_of(self, topic: str, since: Any, limit: int) -> tuple[list[Kept], bool]:
        """Kept publications of ``topic`` after ``since`` (None: the newest
        ``limit``), oldest first, and whether more follow; Gap when ``since``
        is no longer covered (another epoch, or evicted). Raises nothing else."""
        seq = None if since is None else self.parse_event_id(since)
        return self.history.of_topic(topic, seq, limit)

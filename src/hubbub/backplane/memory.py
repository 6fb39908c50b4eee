"""The in-process broker: one hub, no shared state (BACKPLANE=memory).

``publish`` assigns the next seq and calls ``on_publication`` before it
returns, in the caller's own step: no task hop, no queue, the same cost as
delivering directly.
"""
from __future__ import annotations

import secrets
import time
from typing import Any

from .base import (BackplaneUnavailable, Broker, NodePresence, OnEpochChange, OnEvent, OnGap,
                   OnPublication, Reservation)
from .expiring_keys import ExpiringKeys


class MemoryBroker(Broker):
    synchronous = True

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or secrets.token_hex(4)  # ids from an earlier run never match
        self.healthy = True
        self.seq = 0
        self._on_publication: OnPublication | None = None
        self._presence = NodePresence()
        self._idempotency = ExpiringKeys()

    async def start(self, on_publication: OnPublication, *, backfill: int = 0,
                    on_epoch_change: OnEpochChange | None = None,
                    on_gap: OnGap | None = None, on_event: OnEvent | None = None) -> None:
        # Nothing outlives the process, so there is nothing to backfill and
        # the epoch never changes while it runs.
        self.attach(on_publication)

    def attach(self, on_publication: OnPublication) -> None:
        """``start`` without the await: a hub may publish before it was started."""
        self._on_publication = on_publication

    async def publish(self, payload: bytes, ephemeral: bool = False,
                      deadline: float | None = None) -> tuple[str, int] | None:
        return self.publish_now(payload, ephemeral)

    async def publish_all(self, items: list[tuple[Any, bool]], deadline: float | None = None,
                          reservation: Reservation | None = None) -> list[tuple[str, int] | None]:
        """In this step, no await: nothing can come between the check and the publish."""
        if reservation is not None and self._idempotency.get(reservation.key) != reservation.marker:
            raise BackplaneUnavailable("the Idempotency-Key reservation expired before the"
                                       " publish; nothing was published")
        numbered = [self.publish_now(payload, ephemeral) for payload, ephemeral in items]
        if reservation is not None:
            self._idempotency.set(reservation.key, [None if n is None else f"{n[0]}-{n[1]}" for n in numbered],
                       reservation.ttl)
        return numbered

    def publish_now(self, payload: Any, ephemeral: bool = False) -> tuple[str, int] | None:
        """``payload`` never leaves the process: the hub passes its object as is."""
        if self._on_publication is None:
            raise RuntimeError("MemoryBroker.publish before start")
        if ephemeral:
            self._on_publication(None, payload)
            return None
        self.seq += 1
        self._on_publication(self.seq, payload)
        return self.epoch, self.seq

    async def stop(self) -> None:
        self._on_publication = None

    async def claim_idempotency(self, reservation: Reservation, deadline: float) -> Any:
        kept = self._idempotency.get(reservation.key)
        if kept is not None:
            return kept
        self._idempotency.set(reservation.key, reservation.marker, max(0.0, deadline - time.monotonic()))
        return None

    async def release_idempotency(self, reservation: Reservation) -> None:
        if self._idempotency.get(reservation.key) == reservation.marker:
            self._idempotency.delete(reservation.key)

    async def broadcast(self, event: list) -> None:
        return None  # no other node

    async def presence_update(self, topic: str, user: str, info: Any,
                              delta: int) -> tuple[str, Any] | None:
        users = self._presence.topics.get(topic)
        old = users.get(user) if users else None
        old_info = old[1] if old else None
        entry = self._presence.update(topic, user, info, delta)
        if old is None and entry is not None:
            return "join", info
        if old is not None and entry is None:
            return "leave", old_info
        return None

    async def presence_list(self, topic: str) -> dict[str, dict[str, Any]]:
        return self._presence.listing(topic)

    async def topic_counts(self, prefix: str = "") -> dict[str, int]:
        return self._count_topics(prefix)  # one node: its own counts are all there is

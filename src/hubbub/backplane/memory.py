"""The in-process broker: one hub, no shared state (BACKPLANE=memory).

``publish`` assigns the next seq and calls ``on_publication`` before it
returns, in the caller's own step: no task hop, no queue, the same cost as
delivering directly.
"""
from __future__ import annotations

import heapq
import secrets
import time
from typing import Any

from .base import Broker, NodePresence, OnEpochChange, OnEvent, OnGap, OnPublication


class MemoryBroker(Broker):
    synchronous = True

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or secrets.token_hex(4)  # ids from an earlier run never match
        self.healthy = True
        self.seq = 0
        self._on_publication: OnPublication | None = None
        self._presence = NodePresence()
        self._idempotency: dict[str, tuple[float, list]] = {}
        self._idempotency_expiry: list[tuple[float, str]] = []  # heap of (expires, key)

    async def start(self, on_publication: OnPublication, *, backfill: int = 0,
                    on_epoch_change: OnEpochChange | None = None,
                    on_gap: OnGap | None = None, on_event: OnEvent | None = None) -> None:
        # Nothing outlives the process, so there is nothing to backfill and
        # the epoch never changes while it runs.
        self.attach(on_publication)

    def attach(self, on_publication: OnPublication) -> None:
        """``start`` without the await: a hub may publish before it was started."""
        self._on_publication = on_publication

    async def publish(self, payload: bytes, ephemeral: bool = False) -> tuple[str, int] | None:
        return self.publish_now(payload, ephemeral)

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

    async def remember_idempotency(self, key: str, ids: list, ttl: float) -> list | None:
        now = time.monotonic()
        expiry = self._idempotency_expiry
        while expiry and expiry[0][0] <= now:  # memory follows the keys still live
            _, old = heapq.heappop(expiry)
            kept = self._idempotency.get(old)
            if kept is not None and kept[0] <= now:
                del self._idempotency[old]
        kept = self._idempotency.get(key)
        if kept is not None and kept[0] > now:
            return kept[1]
        self._idempotency[key] = (now + ttl, list(ids))
        heapq.heappush(expiry, (now + ttl, key))
        return None

    async def settle_idempotency(self, key: str, ids: list, ttl: float) -> None:
        kept = self._idempotency.get(key)
        if kept is not None:
            self._idempotency[key] = (kept[0], list(ids))

    async def release_idempotency(self, key: str) -> None:
        self._idempotency.pop(key, None)

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

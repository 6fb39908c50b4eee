"""``POST /publish``'s Idempotency-Key, kept by the broker so it holds across nodes."""
from __future__ import annotations

import asyncio
import time

from ..errors import HubError
from .base import Broker

PENDING = ["pending"]  # no real id list looks like this (ids are "epoch-seq" or null)
IN_FLIGHT_WAIT = 2.0  # seconds a retry waits for the first request with its key to finish
IN_FLIGHT_POLL = 0.05


class IdempotencyGuard:
    """Reserve the key before publishing, so two nodes never both publish.

    ``claim`` returns None when this request owns the key (publish, then
    ``settle`` with the ids or ``release`` on failure) or the ids stored by
    the request that did. A request that finds the key still reserved waits
    up to IN_FLIGHT_WAIT for the first one to settle, then gets 409.

    What remains: if a node dies between publishing and ``settle`` the key
    stays reserved until its TTL and retries get 409, never a second publish.
    """

    def __init__(self, broker: Broker, ttl: float) -> None:
        self.broker = broker
        self.ttl = ttl

    async def claim(self, key: str) -> list | None:
        deadline = time.monotonic() + IN_FLIGHT_WAIT
        while True:
            kept = await self.broker.remember_idempotency(key, PENDING, self.ttl)
            if kept != PENDING:
                return kept
            if time.monotonic() >= deadline:
                raise HubError(409, "a request with this Idempotency-Key is still in progress")
            await asyncio.sleep(IN_FLIGHT_POLL)

    async def settle(self, key: str, ids: list) -> None:
        await self.broker.settle_idempotency(key, ids, self.ttl)

    async def release(self, key: str) -> None:
        try:
            await self.broker.release_idempotency(key)
        except HubError:
            pass  # unreachable: the reservation expires with its TTL

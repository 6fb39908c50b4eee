"""``POST /publish``'s Idempotency-Key, kept by the broker so it holds across nodes."""
from __future__ import annotations

import asyncio
import secrets
import time

from ..errors import HubError
from .base import Broker, Reservation

IN_FLIGHT_POLL = 0.05  # seconds between looks at a key another request holds


class IdempotencyGuard:
    """Reserve the key before publishing, so two nodes never both publish.

    ``claim`` returns ``(reservation, None)`` when this request holds the key
    (publish with it; ``release`` it on failure), or ``(None, ids)`` with the
    ids stored by the request that published. A request that finds the key
    reserved by another waits for it while it still could publish itself
    (until half of ``timeout`` before its deadline), then gets 409.

    A reservation lasts only until its request's deadline, and the publish
    stores the ids in the step that publishes, so a node that dies at any
    point leaves either the ids (retries replay them) or nothing that
    outlives the deadline (a retry publishes, once).
    """

    def __init__(self, broker: Broker, ttl: float, timeout: float) -> None:
        self.broker = broker
        self.ttl = ttl
        self.timeout = timeout
        self._releasing: set[asyncio.Task] = set()

    async def claim(self, key: str, deadline: float) -> tuple[Reservation | None, list | None]:
        reservation = Reservation(key, {"pending": secrets.token_hex(8)}, self.ttl)
        last_try = deadline - self.timeout / 2  # a claim sent later would reach Redis too late
        while True:
            kept = await self.broker.claim_idempotency(reservation, deadline)
            if kept is None:
                return reservation, None
            if isinstance(kept, list):
                return None, kept
            if time.monotonic() + IN_FLIGHT_POLL >= last_try:
                raise HubError(409, "a request with this Idempotency-Key is still in progress")
            await asyncio.sleep(IN_FLIGHT_POLL)

    def release(self, reservation: Reservation) -> None:
        """Let a retry publish: in the background, so the 503 is answered at once
        (a reservation that cannot be released expires with its request's deadline)."""
        task = asyncio.ensure_future(self._release(reservation))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, reservation: Reservation) -> None:
        try:
            await self.broker.release_idempotency(reservation)
        except HubError:
            pass  # unreachable: the reservation expires by itself

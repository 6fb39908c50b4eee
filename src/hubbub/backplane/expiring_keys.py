"""Keys that expire, as Redis keeps them with PX: the Idempotency-Keys of the
brokers that keep them in a process (memory, and the local broker's server)."""
from __future__ import annotations

import heapq
import time
from typing import Any


class ExpiringKeys:
    def __init__(self) -> None:
        self._values: dict[str, tuple[float, Any]] = {}
        self._expiry: list[tuple[float, str]] = []  # heap of (expires, key)

    def get(self, key: str) -> Any:
        """What ``key`` holds, None once expired; forgets the expired keys on the way."""
        now = time.monotonic()
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:  # memory follows the keys still live
            _, old = heapq.heappop(expiry)
            kept = self._values.get(old)
            if kept is not None and kept[0] <= now:
                del self._values[old]
        kept = self._values.get(key)
        return kept[1] if kept is not None and kept[0] > now else None

    def set(self, key: str, value: Any, seconds: float) -> None:
        expires = time.monotonic() + seconds
        self._values[key] = (expires, value)
        heapq.heappush(self._expiry, (expires, key))

    def delete(self, key: str) -> None:
        self._values.pop(key, None)

"""Rate limits: a token bucket per connection for client publishes, and one per
client IP for connection attempts (SPEC 1: CLIENT_PUBLISH_RATE, burst 2x)."""
from __future__ import annotations

import time


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else 2 * rate
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class PerKeyLimiter:
    """One bucket per key (client IP), forgetting idle keys so the map stays small."""

    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.buckets: dict[str, TokenBucket] = {}

    def allow(self, key: str | None) -> bool:
        if key is None:
            return True
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self._forget_full()
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket.take()

    def _forget_full(self) -> None:
        # A bucket back at full burst carries no information: drop those.
        now = time.monotonic()
        for key in [k for k, b in self.buckets.items()
                    if b.tokens + (now - b.stamp) * b.rate >= b.burst]:
            del self.buckets[key]
        while len(self.buckets) >= self.max_keys:
            del self.buckets[next(iter(self.buckets))]


class AbuseCounter:
    """Refusals within a sliding window; too many means persistent abuse (close 1008)."""

    __slots__ = ("limit", "window", "events")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.events: list[float] = []

    def strike(self) -> bool:
        now = time.monotonic()
        self.events = [t for t in self.events if now - t < self.window]
        self.events.append(now)
        return len(self.events) > self.limit

"""What the hub core counts, as plain integers bumped where things happen.

Nothing here runs per delivery beyond an addition: ``services.telemetry``
reads these when someone asks (a scrape, the dashboard's tick) and adds
them up across workers.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import Counter

# Upper bounds (seconds) of the latency histograms' buckets; the last bucket is +Inf.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)


class LatencyHistogram:
    """Bucket counts, a sum and a count: ``observe`` is a bisect and two additions."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: over every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def as_dict(self) -> dict:
        return {"counts": list(self.counts), "sum": self.sum}


class Counters:
    """The core's counters; one per hub."""

    def __init__(self) -> None:
        self.published = 0  # accepted here (workers' and nodes' counts add up)
        self.delivered = 0  # publications queued to a subscriber
        self.dropped_closed = 0  # drops counted on connections already gone
        self.disconnect_drops = 0  # messages lost by connections closed as slow consumers (4408)
        self.closes: Counter[tuple[int, str, int]] = Counter()  # (code, port, fmt) -> closed
        self.recoveries = 0  # replays served (resume from an id history still covers)
        self.recovered_messages = 0
        self.resets: Counter[str] = Counter()  # reason -> recoveries answered with a reset
        # Publications per topic since the telemetry's last one-second sample
        # (the dashboard's busiest topics); the sampler swaps it for a new dict.
        self.topic_publications: dict[str, int] = {}

    def closed(self, code: int | None, port: str, fmt: int) -> None:
        self.closes[(code or 0, port, fmt)] += 1

    def replayed(self, count: int) -> None:
        self.recoveries += 1
        self.recovered_messages += count

    def reset(self, reason: str) -> None:
        self.resets[reason] += 1

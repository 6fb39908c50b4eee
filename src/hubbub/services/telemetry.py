"""What the hub counts, and how the counts of several workers add up.

Counting stays off the hot path's budget: the hub, its connections and its
flusher keep plain integers (``core.counters``, ``outbox.dropped_total``,
``flusher.write_latency`` ...) and nothing here runs per message. A
``snapshot`` reads them when someone asks (a Prometheus scrape, the
dashboard's one-second tick): one pass over the connections for the gauges
(connections by port and transport, outbox depths), the rest is copied.

A snapshot is a plain JSON-able dict, so snapshots add up (``merge``):
numbers and histogram bucket lists are summed, ``outbox_max`` takes the
maximum and ``backplane_up`` the minimum (one worker with its backplane down
is a hub with its backplane down).

Workers of one machine (``hubbub serve --workers N``): each Granian worker is
its own process with its own hub, and a scrape reaches whichever worker the
kernel picks. So with ``HUBBUB_METRICS_DIR`` set (``hubbub serve`` sets it to
a fresh temporary folder when N > 1), every worker writes its snapshot to
``worker-<pid>.json`` there once a second (write, then rename: a reader never
sees half a file), and whoever answers ``/metrics`` or the dashboard sums its
own live snapshot with the files of the other workers written in the last
``STALE_AFTER`` seconds. A worker that stops removes its file; one that died
is ignored once its file is stale, so its counters leave the sum, which
Prometheus' ``rate()`` reads as a counter reset, as for any restarted
process. (prometheus_client's own multiprocess mode was not used: it needs
every value to go through its metric objects, a call per message on the hot
path, and it cannot sum the gauges a collector computes at scrape time.)

The inbox reports every store call's latency through ``observe_store(op,
seconds)`` (the app wires it; ``store_timer(op)`` is the same as a context
manager); the metric appears once something was observed. ``backplane_up``
is the broker's own ``healthy``, read at snapshot time.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import orjson

from ..core.counters import LatencyHistogram
from ..wire import POLL, SSE, WS

if TYPE_CHECKING:
    from ..backplane import Broker
    from ..config import Config
    from ..core.hub import HubCore

log = logging.getLogger("hubbub.telemetry")

SAMPLE_PERIOD = 1.0  # seconds between a worker's samples (busiest topics, shared snapshot)
STALE_AFTER = 5.0  # seconds after which another worker's snapshot no longer counts
BUSIEST_TOPICS = 10
TRANSPORTS = {WS: "ws", SSE: "sse", POLL: "poll"}
# The connection kinds each listener serves (the fast port has no long-poll).
CONNECTION_KINDS = tuple(f"{port}|{name}" for port, names in (("asgi", ("ws", "sse", "poll")),
                                                              ("native", ("ws", "sse"))) for name in names)
DROP_REASONS = ("drop_oldest", "disconnect")
MAX_KEYS = frozenset({"outbox_max"})
MIN_KEYS = frozenset({"backplane_up"})


class Telemetry:
    """One per hub: store latencies, the busiest topics and the shared snapshot."""

    def __init__(self, core: "HubCore", config: "Config", broker: "Broker") -> None:
        self.core = core
        self.broker = broker
        self.store_latency: dict[str, LatencyHistogram] = {}
        self.busiest: dict[str, int] = {}  # the last sample's publications per topic (top N)
        self.started_at = time.time()
        self._sampler: asyncio.Task | None = None
        directory = config.metrics_dir
        self.shared_dir = Path(directory) if directory else None
        self.own_file = self.shared_dir / f"worker-{os.getpid()}.json" if self.shared_dir else None

    def observe_store(self, operation: str, seconds: float) -> None:
        histogram = self.store_latency.get(operation)
        if histogram is None:
            histogram = self.store_latency[operation] = LatencyHistogram()
        histogram.observe(seconds)

    @contextlib.contextmanager
    def store_timer(self, operation: str) -> Iterator[None]:
        """``with telemetry.store_timer("create"): await store.create(...)``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_store(operation, time.perf_counter() - start)

    # -- sampling -----------------------------------------------------------------
    def start(self) -> None:
        if self._sampler is None:
            self._sampler = asyncio.ensure_future(self._sample_forever())

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        if self.own_file is not None:
            with contextlib.suppress(OSError):
                self.own_file.unlink()

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_PERIOD)
            try:
                self.sample()
            except Exception:  # a full disk must not stop the sampling for good
                log.exception("metrics sample failed")

    def sample(self) -> None:
        """Once a second: the busiest topics of the last second, and the shared snapshot."""
        counters = self.core.counters
        counts, counters.topic_publications = counters.topic_publications, {}
        top = sorted(counts.items(), key=lambda item: item[1], reverse=True)[:BUSIEST_TOPICS]
        self.busiest = dict(top)
        if self.own_file is not None:
            self.shared_dir.mkdir(parents=True, exist_ok=True)
            temporary = self.own_file.with_suffix(".tmp")
            temporary.write_bytes(orjson.dumps(self.snapshot()))
            temporary.replace(self.own_file)

    # -- reading ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """This worker's numbers, as a JSON-able dict that ``merge`` can add up."""
        core = self.core
        counters = core.counters
        connections = dict.fromkeys(CONNECTION_KINDS, 0)
        queued = queued_bytes = deepest = dropped = 0
        for conn in core.connections.values():
            key = f"{conn.port}|{TRANSPORTS.get(conn.fmt, '?')}"
            connections[key] = connections.get(key, 0) + 1
            outbox = conn.outbox
            queued += outbox.count
            queued_bytes += outbox.nbytes
            dropped += outbox.dropped_total
            if outbox.count > deepest:
                deepest = outbox.count
        history = core.recovery.history
        return {
            "workers": 1,
            "connections": connections,
            "subscriptions": len(core.trie),
            "history_topics": history.topics,
            "history_messages": len(history),
            "published": counters.published,
            "delivered": counters.delivered,
            "dropped": {"drop_oldest": counters.dropped_closed + dropped,
                        "disconnect": counters.disconnect_drops},
            "closes": {f"{code}|{port}|{TRANSPORTS.get(fmt, '?')}": n
                       for (code, port, fmt), n in counters.closes.items()},
            "outbox_messages": queued,
            "outbox_bytes": queued_bytes,
            "outbox_max": deepest,
            "write_latency": core.flusher.write_latency.as_dict(),
            "flush_rounds": core.flusher.rounds,
            "recoveries": counters.recoveries,
            "recovered_messages": counters.recovered_messages,
            "resets": dict(counters.resets),
            "store_latency": {op: h.as_dict() for op, h in self.store_latency.items()},
            "backplane_up": int(self.broker.healthy),
            "draining": int(core.draining),
            "busiest": dict(self.busiest),
            "started_at": self.started_at,
        }

    def aggregate(self) -> dict[str, Any]:
        """This worker's live snapshot plus the fresh ones the other workers wrote."""
        total = self.snapshot()
        if self.shared_dir is None:
            return total
        now = time.time()
        for path in self.shared_dir.glob("worker-*.json"):
            if path == self.own_file:
                continue
            try:
                if now - path.stat().st_mtime > STALE_AFTER:
                    continue
                other = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # removed or being replaced just now: counted next time
            total = merge(total, other)
        return total


def merge(a: Any, b: Any, key: str = "") -> Any:
    """Add two snapshots (or parts of them) up; see the module docstring for the rules."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for name, value in b.items():
            out[name] = merge(out[name], value, name) if name in out else value
        return out
    if isinstance(a, list) and isinstance(b, list):
        return [x + y for x, y in zip(a, b)]
    if key in MAX_KEYS:
        return max(a, b)
    if key in MIN_KEYS:
        return min(a, b)
    if key == "started_at":
        return min(a, b)
    return a + b

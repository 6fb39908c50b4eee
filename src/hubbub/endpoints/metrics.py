"""``GET /metrics``: the hub's numbers in Prometheus' text format (SPEC 10).

A custom prometheus_client ``Collector`` turns one aggregated snapshot
(``services/telemetry.py``: every worker of this machine summed) into metric
families at scrape time; nothing calls prometheus_client per message. The
route itself is ``operations.py``'s.

Metrics (counters end in ``_total``):

- ``hubbub_connections{port, transport}``: open connections, port ``asgi``
  or ``native`` (the fast listener), transport ``ws``, ``sse`` or ``poll``
- ``hubbub_subscriptions``, ``hubbub_history_topics``, ``hubbub_history_messages``
- ``hubbub_publications_total``, ``hubbub_deliveries_total``
- ``hubbub_dropped_messages_total{reason}``: ``drop_oldest`` (shed from a
  full queue) or ``disconnect`` (a slow consumer's backlog, lost with it)
- ``hubbub_closes_total{code, port, transport}``: connections closed, by close code
  (SSE and poll streams end with the code the hub would give a WebSocket;
  every answered long-poll ends with 1001)
- ``hubbub_outbox_messages`` / ``hubbub_outbox_bytes`` (summed over
  connections), ``hubbub_outbox_max_messages`` (the deepest one)
- ``hubbub_publish_to_write_seconds``: histogram, from a publication waking
  an idle writer to the end of the flush round that wrote it (one
  observation per round: its oldest publication)
- ``hubbub_flush_rounds_total``
- ``hubbub_recoveries_total``, ``hubbub_recovered_messages_total``,
  ``hubbub_resets_total{reason}``
- ``hubbub_backplane_up{backplane}``: 1 when the backplane is reachable
- ``hubbub_store_latency_seconds{operation}``: histogram of the inbox store's
  calls, once the store reports any
- ``hubbub_workers``: the worker snapshots summed into this answer;
  ``hubbub_draining``: workers draining
"""
from __future__ import annotations

from typing import Any, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..core.counters import LATENCY_BUCKETS
from ..services.telemetry import DROP_REASONS


class HubCollector:
    """Collects from ``snapshot()`` (a callable returning an aggregated snapshot)."""

    def __init__(self, snapshot, backplane: str) -> None:
        self.snapshot = snapshot
        self.backplane = backplane.split(":", 1)[0]  # never the URL: it may carry a password

    def collect(self) -> Iterable[Any]:
        s = self.snapshot()

        connections = GaugeMetricFamily("hubbub_connections", "Open connections",
                                        labels=["port", "transport"])
        for key, value in sorted(s["connections"].items()):
            connections.add_metric(key.split("|"), value)
        yield connections

        yield _gauge("hubbub_subscriptions", "Subscriptions (connection x pattern)", s["subscriptions"])
        yield _gauge("hubbub_history_topics", "Topics with kept history", s["history_topics"])
        yield _gauge("hubbub_history_messages", "Publications kept in history", s["history_messages"])
        yield _counter("hubbub_publications", "Publications accepted", s["published"])
        yield _counter("hubbub_deliveries", "Publications queued to a subscriber", s["delivered"])

        dropped = CounterMetricFamily("hubbub_dropped_messages", "Messages a subscriber will not get",
                                      labels=["reason"])
        for reason in DROP_REASONS:
            dropped.add_metric([reason], s["dropped"].get(reason, 0))
        yield dropped

        closes = CounterMetricFamily("hubbub_closes", "Connections closed, by close code",
                                     labels=["code", "port", "transport"])
        for key, value in sorted(s["closes"].items()):
            closes.add_metric(key.split("|"), value)
        yield closes

        yield _gauge("hubbub_outbox_messages", "Messages queued, all connections", s["outbox_messages"])
        yield _gauge("hubbub_outbox_bytes", "Bytes queued, all connections", s["outbox_bytes"])
        yield _gauge("hubbub_outbox_max_messages", "Messages queued on the deepest outbox",
                     s["outbox_max"])
        yield _histogram("hubbub_publish_to_write_seconds",
                         "From a publication waking a writer to the flush round that wrote it",
                         s["write_latency"])
        yield _counter("hubbub_flush_rounds", "Write rounds of the flusher", s["flush_rounds"])
        yield _counter("hubbub_recoveries", "Recoveries served from history", s["recoveries"])
        yield _counter("hubbub_recovered_messages", "Publications replayed by recoveries",
                       s["recovered_messages"])
        resets = CounterMetricFamily("hubbub_resets", "Recoveries answered with reset", labels=["reason"])
        for reason, value in sorted(s["resets"].items()):
            resets.add_metric([reason], value)
        yield resets

        backplane = GaugeMetricFamily("hubbub_backplane_up", "1 when the backplane is reachable",
                                      labels=["backplane"])
        backplane.add_metric([self.backplane], s["backplane_up"])
        yield backplane

        if s["store_latency"]:
            store = HistogramMetricFamily("hubbub_store_latency_seconds",
                                          "Latency of the notification store's calls",
                                          labels=["operation"])
            for operation, histogram in sorted(s["store_latency"].items()):
                buckets, total = _buckets(histogram)
                store.add_metric([operation], buckets, total)
            yield store

        yield _gauge("hubbub_workers", "Worker snapshots summed in this answer", s["workers"])
        yield _gauge("hubbub_draining", "Workers draining", s["draining"])


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _buckets(histogram: dict) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le, count) pairs from the snapshot's per-bucket counts."""
    buckets = []
    running = 0
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), histogram["counts"]):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return buckets, histogram["sum"]


def _histogram(name: str, doc: str, histogram: dict) -> HistogramMetricFamily:
    buckets, total = _buckets(histogram)
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)

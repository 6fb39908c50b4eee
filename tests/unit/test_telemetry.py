"""Snapshots add up across workers, and the store-latency hook reaches the exposition."""
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hubbub import Hub
from hubbub.endpoints.metrics import HubCollector
from hubbub.core.counters import LATENCY_BUCKETS, LatencyHistogram
from hubbub.services.telemetry import merge


def test_merge_sums_counts_and_keeps_the_deepest_outbox_and_the_worst_backplane():
    a = {"workers": 1, "published": 5, "outbox_max": 7, "backplane_up": 1,
         "connections": {"asgi|ws": 2}, "write_latency": {"counts": [1, 0, 2], "sum": 0.5}}
    b = {"workers": 1, "published": 3, "outbox_max": 2, "backplane_up": 0,
         "connections": {"asgi|ws": 1, "native|sse": 4}, "write_latency": {"counts": [0, 1, 1], "sum": 0.25}}
    assert merge(a, b) == {"workers": 2, "published": 8, "outbox_max": 7, "backplane_up": 0,
                           "connections": {"asgi|ws": 3, "native|sse": 4},
                           "write_latency": {"counts": [1, 1, 3], "sum": 0.75}}


def test_histogram_buckets_are_upper_bounds():
    histogram = LatencyHistogram()
    for seconds in (0.0, LATENCY_BUCKETS[0], LATENCY_BUCKETS[0] * 1.01, 999.0):
        histogram.observe(seconds)
    assert histogram.counts[0] == 2 and histogram.counts[1] == 1 and histogram.counts[-1] == 1


def test_store_latency_hook_shows_in_the_exposition():
    hub = Hub.from_env(dev=True)
    with hub.telemetry.store_timer("create"):
        pass
    hub.telemetry.observe_store("list", 0.003)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub.telemetry.aggregate, hub.config.backplane))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    counts = {s.labels["operation"]: s.value for s in families["hubbub_store_latency_seconds"].samples
              if s.name.endswith("_count")}
    assert counts == {"create": 1, "list": 1}

"""GET /metrics through a real ``hubbub serve``: who may scrape, and that the numbers
follow what clients do (connect, publish, recover, fall behind, close)."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from .server import HubProcess, ws_connect, ws_messages
from .test_slow_consumers import stalled_socket, ws_upgrade
from .tokens import API_KEY, AUDIENCE, SECRET

KEY = {"x-api-key": API_KEY}
PAD = "x" * 4000


def scrape(hub: HubProcess, headers=KEY) -> dict[tuple, float]:
    """{(sample name, ((label, value), ...)): value} of one scrape."""
    response = httpx.get(hub.base + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels) -> float:
    """Sum of ``name`` over every label set that includes ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and all((k, w) in ls for k, w in labels.items()))


def publish_in_batches(hub, publications, size=200):
    for i in range(0, len(publications), size):
        response = httpx.post(hub.base + "/publish", json=publications[i:i + size], headers=KEY, timeout=30)
        assert response.status_code == 200, response.text


def wait_for(hub, check, timeout: float = 10.0):
    """Scrape until ``check(samples)`` holds; returns the samples (the last ones on failure)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(hub)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    process = HubProcess(dev=False, env={"HUBBUB_JWT_SECRET": SECRET, "HUBBUB_JWT_AUDIENCE": AUDIENCE,
                                         "HUBBUB_API_KEY": API_KEY, "HUBBUB_ACCESS_LOG": "1"})
    process.start(tmp_path_factory.mktemp("metrics"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def metered(tmp_path_factory):
    """A dev hub whose queues fill fast, with an API key so /metrics needs it even from loopback."""
    process = HubProcess(env={"HUBBUB_QUEUE_MAX_MESSAGES": "64", "HUBBUB_HEARTBEAT": "30",
                              "HUBBUB_API_KEY": API_KEY})
    process.start(tmp_path_factory.mktemp("metered"))
    yield process
    process.stop()


# -- who may scrape -------------------------------------------------------------------
def test_metrics_need_the_api_key(secured):
    url = secured.base + "/metrics"
    missing = httpx.get(url, timeout=10)
    assert missing.status_code == 401
    assert missing.json() == {"code": 401, "reason": "API key required"}
    assert missing.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url, headers={"x-api-key": "wrong"}, timeout=10).status_code == 401
    assert httpx.get(url + f"?key={API_KEY}", timeout=10).status_code == 401  # a header, not the query
    for headers in ({"x-api-key": API_KEY}, {"authorization": f"Bearer {API_KEY}"}):
        assert httpx.get(url, headers=headers, timeout=10).status_code == 200
    wrong_method = httpx.post(url, headers=KEY, timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET"
    # The fast port serves only /ws and /sse.
    assert httpx.get(secured.url("native", "/metrics"), headers=KEY, timeout=10).status_code == 404


def test_metrics_public_setting_drops_the_key(make_hub):
    hub = make_hub(dev=False, env={"HUBBUB_JWT_SECRET": SECRET, "HUBBUB_API_KEY": API_KEY,
                                   "HUBBUB_METRICS_PUBLIC": "1"})
    samples = scrape(hub, headers={})
    assert value(samples, "hubbub_workers") == 1
    assert value(samples, "hubbub_backplane_up", backplane="memory") == 1


def test_metrics_public_must_be_a_boolean():
    from .test_cli import run

    result = run(["config"], env={"HUBBUB_METRICS_PUBLIC": "maybe"})
    assert result.returncode == 2
    assert "HUBBUB_METRICS_PUBLIC" in result.stderr


def test_dashboard_needs_the_key_and_the_log_never_shows_it(secured):
    base = secured.base
    assert httpx.get(base + "/dashboard", timeout=10).status_code == 401
    assert httpx.get(base + "/dashboard?key=wrong", timeout=10).status_code == 401
    assert httpx.get(base + "/dashboard/stream", timeout=10).status_code == 401
    page = httpx.get(base + f"/dashboard?key={API_KEY}", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "<canvas" in page.text and "http://" not in page.text and "https://" not in page.text
    assert httpx.get(base + "/dashboard", headers=KEY, timeout=10).status_code == 200
    with httpx.stream("GET", base + f"/dashboard/stream?key={API_KEY}", timeout=10) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = []
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
            if line.startswith("data: ") and events[-1] == "stats":
                stats = json.loads(line[6:])
                break
    assert events == ["hello", "stats"]
    assert stats["workers"] == 1 and "connections" in stats and "busiest" in stats
    time.sleep(0.2)
    log = secured.output()
    assert "/dashboard?key=[REDACTED]" in log
    assert API_KEY not in log


# -- the numbers follow the clients ---------------------------------------------------------
async def test_connections_publications_and_closes(metered):
    topic = "m" + uuid.uuid4().hex[:8]
    before = scrape(metered)
    async with ws_connect(metered.url("asgi", f"/ws?topic={topic}", "ws")) as ws_asgi, \
            ws_connect(metered.url("native", f"/ws?topic={topic}", "ws")) as ws_native, \
            httpx.AsyncClient(timeout=10) as client, \
            client.stream("GET", metered.url("native", f"/sse?topic={topic}")) as sse:
        assert sse.status_code == 200
        samples = await asyncio.to_thread(wait_for, metered, lambda s: total(s, "hubbub_connections") == 3)
        assert value(samples, "hubbub_connections", port="asgi", transport="ws") == 1
        assert value(samples, "hubbub_connections", port="native", transport="ws") == 1
        assert value(samples, "hubbub_connections", port="native", transport="sse") == 1
        assert value(samples, "hubbub_subscriptions") >= 3

        await asyncio.to_thread(publish_in_batches, metered, [{"topic": topic, "data": n} for n in range(10)])
        await ws_messages(ws_asgi, 10)
        await ws_messages(ws_native, 10)
        after = await asyncio.to_thread(
            wait_for, metered, lambda s: value(s, "hubbub_deliveries_total")
            - value(before, "hubbub_deliveries_total") >= 30)
    assert value(after, "hubbub_publications_total") - value(before, "hubbub_publications_total") == 10
    assert value(after, "hubbub_deliveries_total") - value(before, "hubbub_deliveries_total") == 30
    assert value(after, "hubbub_history_topics") >= 1
    # Every round that wrote them was timed.
    latency = "hubbub_publish_to_write_seconds"
    assert value(after, latency + "_count") > value(before, latency + "_count")
    assert value(after, latency + "_bucket", le="+Inf") == value(after, latency + "_count")

    # The three closed: each is counted once under its port and transport.
    closed = await asyncio.to_thread(wait_for, metered, lambda s: total(s, "hubbub_connections") == 0)
    for port, transport in (("asgi", "ws"), ("native", "ws"), ("native", "sse")):
        assert total(closed, "hubbub_closes_total", port=port, transport=transport) \
            - total(before, "hubbub_closes_total", port=port, transport=transport) == 1, (port, transport)

    # A refused token closes 4401, and that code is counted.
    with pytest.raises(websockets.ConnectionClosed) as refused:
        async with ws_connect(metered.url("asgi", "/ws?token=not-a-jwt", "ws")) as ws:
            await ws.recv()
    assert refused.value.rcvd.code == 4401
    samples = scrape(metered)
    assert total(samples, "hubbub_closes_total", code="4401") - total(before, "hubbub_closes_total",
                                                                        code="4401") == 1


async def test_recoveries_and_resets_are_counted(metered):
    topic = "r" + uuid.uuid4().hex[:8]
    ids = metered.publish(*({"topic": topic, "data": n} for n in range(3)), headers=KEY)
    before = scrape(metered)
    async with httpx.AsyncClient(base_url=metered.base, timeout=10) as client:
        replay = (await client.get("/poll", params={"topic": topic, "since": ids[0], "timeout": 0})).json()
        assert [m["id"] for m in replay["messages"]] == ids[1:]
        reset = (await client.get("/poll", params={"topic": topic, "since": "nope-1", "timeout": 0})).json()
        assert "reset" in reset
    after = scrape(metered)
    assert value(after, "hubbub_recoveries_total") - value(before, "hubbub_recoveries_total") == 1
    assert value(after, "hubbub_recovered_messages_total") - value(before, "hubbub_recovered_messages_total") == 2
    reason = reset["reset"]["reason"]
    assert value(after, "hubbub_resets_total", reason=reason) - value(before, "hubbub_resets_total",
                                                                      reason=reason) == 1


def test_a_stalled_client_shows_as_queue_depth_and_drop_oldest(metered):
    topic = "s" + uuid.uuid4().hex[:8]
    before = scrape(metered)
    stalled = stalled_socket(metered.fast_port, ws_upgrade(f"/ws?topic={topic}"))
    try:
        wait_for(metered, lambda s: value(s, "hubbub_connections", port="native", transport="ws") >= 1)
        publish_in_batches(metered, [{"topic": topic, "data": {"n": n, "pad": PAD}} for n in range(3000)])
        samples = wait_for(metered, lambda s: value(s, "hubbub_outbox_max_messages") == 64)
        # Its queue is full (QUEUE_MAX_MESSAGES=64): the rest was shed, oldest first.
        assert value(samples, "hubbub_outbox_max_messages") == 64
        assert value(samples, "hubbub_outbox_messages") >= 64
        assert value(samples, "hubbub_outbox_bytes") >= 64 * len(PAD)
        dropped = value(samples, "hubbub_dropped_messages_total", reason="drop_oldest") \
            - value(before, "hubbub_dropped_messages_total", reason="drop_oldest")
        assert dropped > 1000
        assert value(samples, "hubbub_dropped_messages_total", reason="disconnect") == \
            value(before, "hubbub_dropped_messages_total", reason="disconnect")
    finally:
        stalled.close()
    # Gone, its drops still count (counters never go back).
    after = wait_for(metered, lambda s: value(s, "hubbub_outbox_messages") == 0)
    assert value(after, "hubbub_dropped_messages_total", reason="drop_oldest") >= \
        value(samples, "hubbub_dropped_messages_total", reason="drop_oldest")


def test_slow_consumer_disconnect_counts_4408_and_its_lost_backlog(make_hub):
    hub = make_hub(env={"HUBBUB_QUEUE_MAX_MESSAGES": "64", "HUBBUB_HEARTBEAT": "30",
                        "HUBBUB_SLOW_CONSUMER": "disconnect"})
    topic = "d" + uuid.uuid4().hex[:8]
    stalled = stalled_socket(hub.port, f"GET /sse?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        wait_for(hub, lambda s: value(s, "hubbub_connections", port="asgi", transport="sse") == 1)
        publish_in_batches(hub, [{"topic": topic, "data": {"n": n, "pad": PAD}} for n in range(3000)])
        samples = wait_for(hub, lambda s: total(s, "hubbub_closes_total", code="4408") == 1)
    finally:
        stalled.close()
    assert value(samples, "hubbub_closes_total", code="4408", port="asgi", transport="sse") == 1
    assert value(samples, "hubbub_dropped_messages_total", reason="disconnect") >= 65  # a full queue + 1
    assert value(samples, "hubbub_connections", port="asgi", transport="sse") == 0


# -- workers of one machine add up ------------------------------------------------------------
async def test_two_workers_add_up(make_hub, shared):
    url, prefix = shared  # workers of one machine are one hub only over a backplane (SPEC 1)
    hub = make_hub(args=["--workers", "2"], env={"HUBBUB_API_KEY": API_KEY, "HUBBUB_BACKPLANE": url,
                                                 "HUBBUB_BACKPLANE_PREFIX": prefix})
    topic = "w" + uuid.uuid4().hex[:8]
    sockets = [await ws_connect(hub.url("native", f"/ws?topic={topic}", "ws")) for _ in range(8)]
    try:
        ids = [hub.publish({"topic": topic, "data": n}, headers=KEY)[0] for n in range(6)]
        assert len(ids) == 6

        def settled(s):
            return (value(s, "hubbub_workers") == 2 and total(s, "hubbub_connections") == 8
                    and value(s, "hubbub_publications_total") == 6)
        # Whichever worker answers, the scrape is the sum of both.
        for _ in range(6):
            samples = await asyncio.to_thread(wait_for, hub, settled)
            assert settled(samples), {k: v for k, v in samples.items() if "seconds" not in k[0]}
    finally:
        for ws in sockets:
            await ws.close()

"""GET /metrics tells the truth, through a real ``hubbub serve`` (SPEC 10).

- ``hubbub_backplane_up`` follows the Redis backplane: 1 while Redis answers,
  0 soon after it dies (SIGKILL), 1 again once it is back, in step with
  ``/healthz`` (503 while down, 200 after). The test runs its own
  ``redis-server`` on a free port (``redis_server`` in tests/conftest.py):
  missing, the test is skipped with the reason, or fails under CI=true.
- ``hubbub_store_latency_seconds{operation}`` fills from the inbox store's real
  calls (operations named after the store's methods: ``create``, ``list``,
  ``unread_count``, ...), on SQLite and on the real PostgreSQL (a fresh schema;
  unreachable: skipped with the reason, or a failure under CI=true).

Every wait is bounded; every socket is on loopback.
"""
from __future__ import annotations

import secrets
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .helpers_user import KEY, SECURED_ENV, bearer, postgres_schema
from .server import HubProcess
from .tokens import API_KEY, token

# A heartbeat every PRESENCE_TTL / 3 = 1 s notices a Redis that went quiet;
# a killed one closes the subscription's socket, noticed at once.
PRESENCE_TTL = 3
DOWN_WITHIN = 3.0  # seconds from the kill: within a heartbeat period (1 s), with slack for a busy machine
# The subscriber reconnects with backoff doubling up to 5 s (jittered), then catches up.
BACK_WITHIN = 15.0
POLL_EVERY = 0.1


# -- reading /metrics and /healthz ---------------------------------------------------
def families(hub: HubProcess) -> dict:
    """{family name: Metric} of one scrape (with the API key)."""
    response = httpx.get(hub.base + "/metrics", headers=KEY, timeout=5)
    assert response.status_code == 200, response.text
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def backplane_up(hub: HubProcess) -> dict[str, float]:
    """{backplane label: value} of every ``hubbub_backplane_up`` sample."""
    family = families(hub).get("hubbub_backplane_up")
    assert family is not None, "no hubbub_backplane_up in /metrics"
    return {sample.labels.get("backplane"): sample.value for sample in family.samples
            if sample.name == "hubbub_backplane_up"}


def health(hub: HubProcess) -> int:
    try:
        return httpx.get(hub.base + "/healthz", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def poll(read, predicate, until: float, what: str):
    """Call ``read()`` every POLL_EVERY s until ``predicate`` holds of its value,
    at the latest by ``until`` (a time.monotonic() deadline); returns that value."""
    while True:
        value = read()
        if predicate(value):
            return value
        if time.monotonic() > until:
            raise AssertionError(f"{what}: still {value!r} at the deadline")
        time.sleep(POLL_EVERY)


# -- hubbub_backplane_up follows Redis ---------------------------------------------------
def test_backplane_up_follows_redis(redis_server, make_hub):
    hub = make_hub(env={"HUBBUB_BACKPLANE": redis_server.url,
                        "HUBBUB_BACKPLANE_PREFIX": f"hubbub-test-{secrets.token_hex(4)}:",
                        "HUBBUB_PRESENCE_TTL": str(PRESENCE_TTL), "HUBBUB_HEARTBEAT": "1",
                        "HUBBUB_API_KEY": API_KEY})
    # Up: make_hub waited for /healthz 200.
    assert backplane_up(hub) == {"redis": 1}
    assert health(hub) == 200

    redis_server.kill()  # SIGKILL: no goodbye on any socket
    killed = time.monotonic()
    poll(lambda: health(hub), lambda status: status == 503, killed + DOWN_WITHIN,
         "/healthz after Redis was killed")
    poll(lambda: backplane_up(hub), lambda up: up == {"redis": 0}, killed + DOWN_WITHIN,
         "hubbub_backplane_up after Redis was killed (and /healthz said 503)")
    assert health(hub) == 503  # still down: Redis is still dead

    redis_server.start()  # the same port, empty
    restarted = time.monotonic()
    poll(lambda: health(hub), lambda status: status == 200, restarted + BACK_WITHIN,
         "/healthz after Redis was restarted")
    poll(lambda: backplane_up(hub), lambda up: up == {"redis": 1}, restarted + BACK_WITHIN,
         "hubbub_backplane_up after Redis was restarted (and /healthz said 200)")
    assert health(hub) == 200


# -- hubbub_store_latency_seconds fills from real store calls --------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def inbox_hub(request, make_hub):
    """A secured hub whose store is SQLite (in the test's own data dir) or a fresh
    PostgreSQL schema (dropped after the hub stops)."""
    if request.param == "sqlite":
        yield make_hub(dev=False, env=SECURED_ENV)
        return
    with postgres_schema() as url:
        hub = make_hub(dev=False, env={**SECURED_ENV, "HUBBUB_STORE": url})
        yield hub
        hub.stop()  # before the schema goes


def store_counts(hub: HubProcess) -> dict[str, float]:
    """{operation: observations} of ``hubbub_store_latency_seconds``; checks each
    histogram adds up (+Inf bucket == count)."""
    family = families(hub).get("hubbub_store_latency_seconds")
    if family is None:
        return {}
    assert family.type == "histogram", family.type
    counts, infinite = {}, {}
    for sample in family.samples:
        operation = sample.labels["operation"]
        if sample.name == "hubbub_store_latency_seconds_count":
            counts[operation] = sample.value
        elif sample.name == "hubbub_store_latency_seconds_bucket" and sample.labels["le"] == "+Inf":
            infinite[operation] = sample.value
    assert infinite == counts, (infinite, counts)
    return counts


def test_store_latency_fills_from_real_store_calls(inbox_hub):
    hub = inbox_hub
    user = f"mt-{secrets.token_hex(4)}"
    before = store_counts(hub)

    created = 3
    for i in range(created):  # each: one store.create (and an unread_count for the live event)
        response = httpx.post(hub.base + "/notifications", headers=KEY, timeout=10,
                              json={"user": user, "title": f"n{i}", "message": "timed"})
        assert response.status_code == 201, response.text
    listed = 2
    for query in ("", "?limit=1"):  # each: one store.list and one store.unread_count
        response = httpx.get(hub.base + "/notifications" + query, headers=bearer(token(user)), timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["unread_count"] == created

    after = store_counts(hub)
    grown = {op: after[op] - before.get(op, 0) for op in after}
    assert {op for op, n in grown.items() if n > 0} >= {"create", "list"}, \
        f"store operations timed: {after} (before the requests: {before})"
    assert grown["create"] >= created and grown["list"] >= listed, grown

"""RedisBroker deadlines: a frozen Redis is noticed, and a 503 is never delivered.

Each test owns a ``redis-server`` (``redis_server`` in tests/conftest.py)
and freezes it with SIGSTOP: its sockets stay open and nothing answers, as
with a network partition that keeps TCP up. Times are checked against the
broker's ``timeout`` plus SLACK, for a busy 2-core machine.
"""
from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio

from hubbub.backplane import BackplaneUnavailable
from hubbub.backplane.idempotency import Reservation

from .helpers import Node, wait_until

TIMEOUT = 1.0
SLACK = 0.5  # seconds a loaded machine may add to any bound


async def test_a_frozen_redis_turns_unhealthy_within_the_timeout_with_nobody_publishing(redis_server):
    node = await Node(redis_server.url, "z:", timeout=TIMEOUT).start()
    try:
        await asyncio.sleep(2 * node.broker.probe_every)  # some heartbeats went through
        assert node.broker.healthy
        redis_server.pause()
        frozen = time.monotonic()
        await wait_until(lambda: not node.broker.healthy, timeout=TIMEOUT + SLACK,
                         what="healthy to turn False within the timeout")
        noticed = time.monotonic() - frozen
        await asyncio.sleep(TIMEOUT)
        assert not node.broker.healthy, "healthy again while Redis is still frozen"
        redis_server.resume()
        await wait_until(lambda: node.broker.healthy, timeout=10, what="healthy again after SIGCONT")
        assert noticed <= TIMEOUT + SLACK
    finally:
        redis_server.resume()
        await node.broker.stop()


async def test_publishes_caught_in_a_freeze_answer_503_in_time_and_are_never_delivered(redis_server):
    a = await Node(redis_server.url, "z:", timeout=TIMEOUT).start()
    b = await Node(redis_server.url, "z:", timeout=TIMEOUT).start()
    # A plain subscriber that keeps its connection through the freeze (the
    # nodes drop theirs): it hears anything Redis announces once resumed.
    listener = redis.asyncio.Redis.from_url(redis_server.url).pubsub()
    await listener.subscribe("z:publications")
    heard: list[bytes] = []

    async def listen() -> None:
        async for message in listener.listen():
            if message["type"] == "message":
                heard.append(message["data"].split(b":", 2)[2])

    listening = asyncio.ensure_future(listen())
    try:
        # Concurrent publishes open pooled connections: those caught in the
        # freeze below then reach Redis's sockets rather than wait to connect.
        await asyncio.gather(*(a.broker.publish(b"before/%d" % i) for i in range(12)))
        await wait_until(lambda: len(b.received) == 12, what="the publications before")
        redis_server.pause()
        answers: list[tuple[str, float]] = []

        async def publish(i: int, ephemeral: bool) -> None:
            started = time.monotonic()
            try:
                await a.broker.publish(b"frozen/%d" % i, ephemeral=ephemeral)
                answers.append(("ok", time.monotonic() - started))
            except BackplaneUnavailable as error:
                assert error.code == 503
                answers.append(("503", time.monotonic() - started))

        await asyncio.gather(*(publish(i, ephemeral=i % 3 == 0) for i in range(12)))
        assert {status for status, _ in answers} == {"503"}
        assert max(took for _, took in answers) <= TIMEOUT + SLACK, answers
        await asyncio.sleep(0.5)
        redis_server.resume()  # Redis now runs every script it was sent: each must do nothing
        await wait_until(lambda: a.broker.healthy and b.broker.healthy, timeout=10, what="reconnects")
        assert (await a.broker.publish(b"after"))[1] == 13, "a late script took a seq"
        await wait_until(lambda: b"after" in heard, what="the listener hears the publication after")
        for node in (a, b):
            await wait_until(lambda node=node: node.received[-1][2] == b"after",
                             what="the publication after the freeze")
        before = [b"before/%d" % i for i in range(12)]
        for got in (heard, *([p for _, _, p in node.received] for node in (a, b))):
            assert sorted(got) == sorted(before + [b"after"]), "a 503'd publication was delivered"
        stream = [fields[b"p"] for _, fields in redis_server.client().xrange("z:stream")]
        assert sorted(stream) == sorted(before + [b"after"])
    finally:
        redis_server.resume()
        listening.cancel()
        await listener.aclose()
        await a.broker.stop()
        await b.broker.stop()


async def test_a_script_that_reaches_redis_after_its_deadline_does_nothing(redis_server):
    node = await Node(redis_server.url, "d:", timeout=TIMEOUT).start()
    try:
        measured = node.broker.clock_offset
        node.broker.clock_offset = measured - 10  # as if Redis ran every script 10 s late
        with pytest.raises(BackplaneUnavailable, match="after its deadline"):
            await node.broker.publish(b"late")
        with pytest.raises(BackplaneUnavailable, match="after its deadline"):
            await node.broker.publish(b"late", ephemeral=True)
        reservation = Reservation("k", {"pending": "t"}, ttl=5)
        with pytest.raises(BackplaneUnavailable, match="after its deadline"):
            await node.broker.claim_idempotency(reservation, time.monotonic() + TIMEOUT)
        client = redis_server.client()
        assert client.get("d:seq") is None and client.get("d:idempotency:k") is None
        node.broker.clock_offset = measured
        assert (await node.broker.publish(b"in time"))[1] == 1
        await wait_until(lambda: len(node.received) == 1, what="the publication in time")
        assert node.received[0][2] == b"in time"
    finally:
        await node.broker.stop()


async def test_the_clock_offset_comes_from_the_heartbeat_within_half_its_round_trip(redis_server):
    node = await Node(redis_server.url, "o:", timeout=TIMEOUT).start()
    client = redis_server.client()
    try:
        await asyncio.sleep(2 * node.broker.probe_every)
        before = time.monotonic()
        seconds, micros = client.time()
        after = time.monotonic()
        offset = seconds + micros / 1e6 - (before + after) / 2
        assert node.broker.clock_error < 0.1
        # Both are off by at most half their round trip (plus 1 ms of clock resolution).
        assert abs(node.broker.clock_offset - offset) <= \
            node.broker.clock_error + (after - before) / 2 + 0.001
    finally:
        client.close()
        await node.broker.stop()


async def test_a_publish_waiting_for_a_pooled_connection_counts_that_wait(redis_server):
    # One pooled connection, held by a publish stuck in the freeze: the one
    # queued behind it must still answer by its own deadline.
    node = await Node(redis_server.url, "q:", timeout=TIMEOUT, pool_size=1).start()
    try:
        redis_server.pause()
        started = time.monotonic()
        results = await asyncio.gather(node.broker.publish(b"first"), node.broker.publish(b"queued"),
                                       return_exceptions=True)
        took = time.monotonic() - started
        assert all(isinstance(r, BackplaneUnavailable) for r in results), results
        assert took <= TIMEOUT + SLACK
    finally:
        redis_server.resume()
        await node.broker.stop()

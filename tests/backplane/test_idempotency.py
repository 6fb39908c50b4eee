"""Idempotency-Key reservations, the same on both brokers, and through a Redis freeze.

A key holds one request's reservation until that request publishes (then,
in the same step, the ids) or gives up (then nothing, once released or past
its deadline). A release or a publish never touches what another request
did with the key.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from hubbub.backplane import BackplaneUnavailable, MemoryBroker
from hubbub.backplane.idempotency import IdempotencyGuard, Reservation
from hubbub.backplane.local import LocalBroker
from hubbub.errors import HubError

from .helpers import Node, wait_until

TIMEOUT = 1.0
SLACK = 0.5  # seconds a loaded machine may add to any bound


@pytest.fixture(params=["memory", "redis", "local"])
async def broker(request):
    """A started broker and what it delivered: [(seq, payload)]."""
    received: list = []
    if request.param == "memory":
        broker = MemoryBroker()
        await broker.start(lambda seq, payload: received.append((seq, payload)))
    elif request.param == "local":  # the broker of `hubbub serve --workers N` without Redis
        broker = LocalBroker(request.getfixturevalue("local_broker")().path, timeout=TIMEOUT)
        await broker.start(lambda seq, payload: received.append((seq, payload)))
    else:
        node = await Node(request.getfixturevalue("shared_redis"),
                          request.getfixturevalue("prefix"), timeout=TIMEOUT).start()
        broker = node.broker
        received = node.received
    broker.received = received
    yield broker
    await broker.stop()


def reservation(key: str = "k", ttl: float = 5.0) -> Reservation:
    return Reservation(key, {"pending": f"{key}/{time.monotonic()}"}, ttl)


def soon() -> float:
    return time.monotonic() + TIMEOUT


async def test_the_publish_stores_its_ids_under_the_key_in_the_same_step(broker):
    mine, other = reservation(), reservation()
    assert await broker.claim_idempotency(mine, soon()) is None
    assert await broker.claim_idempotency(other, soon()) == mine.marker  # in flight
    numbered = await broker.publish_all([(b"a", False), (b"typing", True)], soon(), mine)
    assert numbered == [(broker.epoch, 1), None]
    assert await broker.claim_idempotency(other, soon()) == [f"{broker.epoch}-1", None]


async def test_a_release_forgets_only_its_own_reservation(broker):
    mine, other = reservation(), reservation()
    assert await broker.claim_idempotency(mine, soon()) is None
    await broker.release_idempotency(other)  # not the holder: nothing happens
    assert await broker.claim_idempotency(other, soon()) == mine.marker
    await broker.release_idempotency(mine)
    assert await broker.claim_idempotency(other, soon()) is None
    await broker.publish_all([(b"a", False)], soon(), other)
    await broker.release_idempotency(other)  # too late: the ids stay
    assert await broker.claim_idempotency(mine, soon()) == [f"{broker.epoch}-1"]


async def test_a_reservation_lasts_until_its_requests_deadline_and_the_ids_their_ttl(broker):
    mine, other = reservation(), reservation(ttl=0.3)
    assert await broker.claim_idempotency(mine, time.monotonic() + 0.6) is None
    await asyncio.sleep(0.7)  # its request gave up, and could not release it
    with pytest.raises(BackplaneUnavailable) as refused:  # nor publish with it any more
        await broker.publish_all([(b"a", False)], soon(), mine)
    assert refused.value.code == 503
    assert await broker.claim_idempotency(other, soon()) is None
    await broker.publish_all([(b"b", False)], soon(), other)
    assert await broker.claim_idempotency(mine, soon()) == [f"{broker.epoch}-1"]
    await asyncio.sleep(0.4)
    assert await broker.claim_idempotency(mine, soon()) is None  # the ids expired with their TTL
    await wait_until(lambda: broker.received, what="the publication")
    assert [entry[-1] for entry in broker.received] == [b"b"]


async def test_a_second_request_waits_for_the_first_then_replays_or_gets_409(broker):
    guard = IdempotencyGuard(broker, ttl=5.0, timeout=TIMEOUT)
    first, none = await guard.claim("k", soon())
    assert none is None

    async def publish_later() -> None:
        await asyncio.sleep(0.1)
        await broker.publish_all([(b"a", False)], soon(), first)

    publishing = asyncio.ensure_future(publish_later())
    assert await guard.claim("k", soon()) == (None, [f"{broker.epoch}-1"])
    await publishing

    await guard.claim("other", soon())  # held, and never published nor released
    started = time.monotonic()
    with pytest.raises(HubError) as caught:
        await guard.claim("other", soon())
    assert caught.value.code == 409
    assert time.monotonic() - started <= TIMEOUT / 2 + SLACK  # while it could still publish


async def test_a_keyed_publish_caught_in_a_freeze_leaves_the_key_free_and_publishes_nothing(redis_server):
    node = await Node(redis_server.url, "i:", timeout=TIMEOUT).start()
    guard = IdempotencyGuard(node.broker, ttl=60.0, timeout=TIMEOUT)
    try:
        await asyncio.gather(*(node.broker.publish(b"warm") for _ in range(4)))  # pooled connections
        deadline = soon()
        mine, _ = await guard.claim("order-1", deadline)
        redis_server.pause()
        with pytest.raises(BackplaneUnavailable):
            await node.broker.publish_all([(b"frozen", False)], deadline, mine)
        assert time.monotonic() <= deadline + SLACK
        guard.release(mine)  # in the background; Redis is frozen, so it cannot yet
        await asyncio.sleep(0.5)
        redis_server.resume()  # the publish script runs now, late: it must do nothing
        await wait_until(lambda: node.broker.healthy, timeout=10, what="the reconnect")
        retry, replayed = await guard.claim("order-1", soon())
        assert replayed is None, "the key still names a publication that was answered 503"
        (numbered,) = await node.broker.publish_all([(b"retried", False)], soon(), retry)
        await wait_until(lambda: node.received[-1][2] == b"retried", what="the retry")
        assert [p for _, _, p in node.received] == [b"warm"] * 4 + [b"retried"]
        assert await guard.claim("order-1", soon()) == (None, [f"{numbered[0]}-{numbered[1]}"])
    finally:
        redis_server.resume()
        await node.broker.stop()

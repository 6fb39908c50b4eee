"""The Redis broker batches both ways (issue #21).

Writes: publications made in the same loop turn go to Redis in one script
call, still numbered one by one in one fleet-wide order, each caller's
publications all-or-none. Reads: everything one socket read brings is
delivered in that read's callback, so a burst reaches the hub in one loop turn.

Each test owns its redis-server, so the command counts it reads are its own.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from hubbub.backplane import BackplaneUnavailable

from .helpers import Node, wait_until

PREFIX = "batching:"


async def warmed(node: Node) -> Node:
    """The node, after its first publish: redis-py loads a script on first use
    (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA), which would count twice."""
    await node.broker.publish(b"warm-up")
    await wait_until(lambda: len(node.received) == 1, what="the warm-up publication")
    node.received.clear()
    return node


def script_calls(server) -> int:
    """Scripts clients sent (EVALSHA); the commands a script runs are not counted."""
    return server.client().info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


async def test_publications_of_one_loop_turn_share_one_round_trip(redis_server):
    # Heartbeats and reaps are scripts too: a long timeout and presence TTL keep
    # them out of the few milliseconds this test counts.
    node = await warmed(await Node(redis_server.url, PREFIX, timeout=30.0, presence_ttl=600.0).start())
    try:
        before = script_calls(redis_server)
        numbered = await asyncio.gather(*(node.broker.publish(b"p%d" % i) for i in range(50)))
        calls = script_calls(redis_server) - before
        assert calls == 1, f"50 publications of one loop turn took {calls} script calls"
        seqs = [seq for _, seq in numbered]
        assert seqs == list(range(seqs[0], seqs[0] + 50)), "not numbered in the order published"
        await wait_until(lambda: len(node.received) >= 50, what="every publication delivered")
        assert [payload for _, _, payload in node.received] == [b"p%d" % i for i in range(50)]
    finally:
        await node.broker.stop()


async def test_each_callers_batch_stays_whole_and_in_order(redis_server):
    node = await warmed(await Node(redis_server.url, PREFIX, timeout=30.0, presence_ttl=600.0).start())
    try:
        batches = [[(b"%d/%d" % (caller, i), i == 1) for i in range(3)] for caller in range(20)]
        before = script_calls(redis_server)
        answers = await asyncio.gather(*(node.broker.publish_all(batch) for batch in batches))
        assert script_calls(redis_server) - before == 1
        for answer in answers:
            assert len(answer) == 3 and answer[1] is None  # the ephemeral one has no id
            assert answer[2][1] == answer[0][1] + 1  # a caller's kept ones are consecutive
    finally:
        await node.broker.stop()


async def test_a_cancelled_caller_does_not_cancel_the_others(redis_server):
    node = await Node(redis_server.url, PREFIX, timeout=30.0, presence_ttl=600.0).start()
    try:
        kept = asyncio.ensure_future(node.broker.publish(b"kept"))
        gone = asyncio.ensure_future(node.broker.publish(b"gone"))
        await asyncio.sleep(0)  # both are queued for the same script call
        gone.cancel()
        epoch, seq = await kept
        assert epoch == node.broker.epoch
        # The cancelled caller's publication went out with the batch: it was sent before it gave up.
        await wait_until(lambda: len(node.received) >= 2, what="both publications delivered")
        assert sorted(p for _, _, p in node.received) == [b"gone", b"kept"]
    finally:
        await node.broker.stop()


async def test_every_caller_of_a_batch_gets_the_503_when_redis_is_gone(redis_server):
    node = await Node(redis_server.url, PREFIX, timeout=1.0).start()
    try:
        publishes = [asyncio.ensure_future(node.broker.publish(b"x%d" % i)) for i in range(5)]
        redis_server.kill()  # before the batch is sent on the next loop turn
        results = await asyncio.gather(*publishes, return_exceptions=True)
        assert all(isinstance(r, BackplaneUnavailable) for r in results), results
    finally:
        await node.broker.stop()


async def test_a_burst_from_redis_reaches_the_hub_in_one_loop_turn(redis_server):
    """Node B hears node A's 200-publication batch: all of it is delivered
    before B's event loop runs anything else (one fan-out round, one write
    per subscriber), as a burst published in-process would be."""
    a = await Node(redis_server.url, PREFIX).start()
    b = await Node(redis_server.url, PREFIX).start()
    turns = 0
    delivered_at_turn: list[int] = []

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    b.broker._on_publication = lambda seq, payload: delivered_at_turn.append(turns)
    counter = asyncio.ensure_future(count_turns())
    try:
        await a.broker.publish_all([(b"burst %d" % i + b"." * 200, False) for i in range(200)])
        await wait_until(lambda: len(delivered_at_turn) >= 200, what="the burst on node B")
        # 200 x ~230 bytes arrive in one or a few socket reads; each read's
        # messages are delivered together, never one per loop turn.
        spread = len(set(delivered_at_turn))
        assert spread <= 5, f"200 publications reached node B over {spread} loop turns"
    finally:
        counter.cancel()
        await a.broker.stop()
        await b.broker.stop()


@pytest.mark.parametrize("channel_data", [b"no-colons", b"abc:not-a-number:x"])
async def test_a_foreign_message_on_the_channel_is_ignored(redis_server, channel_data):
    node = await Node(redis_server.url, PREFIX).start()
    try:
        redis_server.client().publish(f"{PREFIX}publications", channel_data)
        epoch, seq = await node.broker.publish(b"after")
        await wait_until(lambda: any(s == seq for _, s, _ in node.received), what="the next publication")
        assert [p for _, _, p in node.received] == [b"after"]
        assert node.broker.healthy
    finally:
        await node.broker.stop()


async def test_a_gap_in_the_subscription_is_filled_from_the_stream_in_order(redis_server):
    """A publication the subscription never heard (in the stream, not on the
    channel) is read from the stream when the next one shows the gap; what
    arrives meanwhile waits its turn, so the order stays the seq order."""
    node = await warmed(await Node(redis_server.url, PREFIX).start())
    try:
        client = redis_server.client()
        silent = client.incr(f"{PREFIX}seq")
        client.xadd(f"{PREFIX}stream", {"p": b"silent"}, id=f"{silent}-0")
        loud = await asyncio.gather(*(node.broker.publish(b"loud %d" % i) for i in range(20)))
        await wait_until(lambda: len(node.received) >= 21, what="the gap and what followed it")
        assert [seq for _, seq, _ in node.received] == list(range(silent, silent + 21))
        assert [p for _, _, p in node.received] == [b"silent"] + [b"loud %d" % i for i in range(20)]
        assert loud[0][1] == silent + 1 and node.gaps == []
    finally:
        await node.broker.stop()


async def test_a_caller_out_of_time_is_refused_alone_not_with_its_batch(redis_server):
    """A publish whose deadline is too near to send (less than timeout/2 left)
    is answered 503 by itself; the batch it would have joined keeps the other
    callers' deadlines and publishes."""
    node = await warmed(await Node(redis_server.url, PREFIX, timeout=2.0).start())
    try:
        hurried = asyncio.ensure_future(node.broker.publish(b"hurried", deadline=time.monotonic() + 0.5))
        patient = asyncio.ensure_future(node.broker.publish(b"patient"))
        with pytest.raises(BackplaneUnavailable):
            await hurried
        epoch, seq = await patient
        await wait_until(lambda: len(node.received) >= 1, what="the patient publication")
        assert [p for _, _, p in node.received] == [b"patient"]
    finally:
        await node.broker.stop()

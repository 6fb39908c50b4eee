"""RedisBroker against the machine's Redis: fleet-wide order, backfill, idempotency, presence."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubbub.backplane import BackplaneUnavailable
from hubbub.backplane.idempotency import Reservation
from hubbub.backplane.redis_broker import RedisBroker, masked

from .helpers import Node, wait_until

NODE = str(Path(__file__).with_name("node.py"))


async def test_two_nodes_publishing_concurrently_each_see_everything_once_in_order(shared_redis, prefix):
    a = await Node(shared_redis, prefix).start()
    b = await Node(shared_redis, prefix).start()
    try:
        async def publish_many(node: Node, name: str, count: int) -> list[int]:
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> int:
                async with sem:
                    epoch, seq = await node.broker.publish(f"{name}/{i}".encode())
                    assert epoch == node.broker.epoch
                    return seq

            return await asyncio.gather(*(one(i) for i in range(count)))

        acked_a, acked_b = await asyncio.gather(publish_many(a, "a", 400), publish_many(b, "b", 400))
        acked = set(acked_a) | set(acked_b)
        assert len(acked) == 800, "two publications got the same seq"
        for node in (a, b):
            await wait_until(lambda node=node: len(node.received) >= 800, what="every publication")
            seqs = node.seqs()
            assert seqs == sorted(acked), "not every publication exactly once in seq order"
            payloads = {p for _, _, p in node.received}
            assert payloads == {f"{n}/{i}".encode() for n in "ab" for i in range(400)}
        assert a.received == b.received  # same order, same epoch, same payload for each seq
        assert a.gaps == b.gaps == [] and a.epochs == b.epochs == []
    finally:
        await a.broker.stop()
        await b.broker.stop()


async def test_nodes_in_separate_processes_see_every_publication_once_in_order(shared_redis, prefix):
    count, nodes = 300, 3
    procs = [subprocess.Popen([sys.executable, NODE, shared_redis, prefix, "publish", str(count),
                               str(count * nodes)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(nodes)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "started"
        for proc in procs:  # go together: the publishers overlap
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=60)[0]) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    acked = sorted(seq for r in results for seq in r["acked"])
    assert acked == list(range(acked[0], acked[0] + count * nodes)), "seqs are not one fleet-wide sequence"
    first = results[0]["received"]
    assert [seq for _, seq, _ in first] == acked
    assert len({payload for _, _, payload in first}) == count * nodes
    for other in results[1:]:
        assert other["received"] == first


async def test_ephemeral_publications_reach_every_node_without_a_seq(shared_redis, prefix):
    a = await Node(shared_redis, prefix).start()
    b = await Node(shared_redis, prefix).start()
    try:
        assert await a.broker.publish(b"typing", ephemeral=True) is None
        assert (await a.broker.publish(b"kept"))[1] == 1  # ephemeral ones take no seq
        await wait_until(lambda: len(b.received) == 2, what="both publications")
        assert [(seq, p) for _, seq, p in b.received] == [(None, b"typing"), (1, b"kept")]
    finally:
        await a.broker.stop()
        await b.broker.stop()


async def test_a_node_that_starts_late_gets_the_newest_kept_publications_first(shared_redis, prefix):
    a = await Node(shared_redis, prefix).start()
    try:
        for i in range(50):
            await a.broker.publish(f"early/{i}".encode())
        late = await Node(shared_redis, prefix).start(backfill=20)
        try:
            # Before start() returned: seqs 31..50, after saying 1..30 will not come.
            assert late.gaps == [30]
            assert late.seqs() == list(range(31, 51))
            assert late.received[0][2] == b"early/30"
            assert late.broker.epoch == a.broker.epoch
            await a.broker.publish(b"live")
            await wait_until(lambda: len(late.received) == 21, what="the live publication")
            assert late.received[-1][1:] == (51, b"live")
        finally:
            await late.broker.stop()
        fresh = await Node(shared_redis, prefix).start()  # no backfill: only what comes next
        try:
            assert fresh.gaps == [51] and fresh.received == []
        finally:
            await fresh.broker.stop()
    finally:
        await a.broker.stop()


async def test_backfill_past_what_the_stream_keeps_reports_the_gap(shared_redis, prefix):
    a = await Node(shared_redis, prefix, stream_length=10).start()
    try:
        for i in range(500):
            await a.broker.publish(b"x" * 10)
        late = await Node(shared_redis, prefix).start(backfill=1000)
        try:
            seqs = late.seqs()
            assert 1 < seqs[0] and seqs[-1] == 500, "the stream is trimmed (MAXLEN ~ 10)"
            assert seqs == list(range(seqs[0], 501))
            assert late.gaps == [seqs[0] - 1]  # said before the first delivery
        finally:
            await late.broker.stop()
    finally:
        await a.broker.stop()


async def test_presence_is_summed_across_nodes_and_a_stopped_node_leaves_at_once(shared_redis, prefix):
    a = RedisBroker(shared_redis, prefix=prefix)
    b = RedisBroker(shared_redis, prefix=prefix)
    await a.start(lambda seq, payload: None)
    await b.start(lambda seq, payload: None)
    try:
        await a.presence_update("chat.1", "alice", {"name": "Alice"}, 1)
        await b.presence_update("chat.1", "alice", {"name": "Alice"}, 1)
        await b.presence_update("chat.1", "bob", None, 1)
        await b.presence_update("chat.2", "carol", None, 1)
        expected = {"alice": {"info": {"name": "Alice"}, "connections": 2},
                    "bob": {"info": None, "connections": 1}}
        assert await a.presence_list("chat.1") == expected
        assert await b.presence_list("chat.1") == expected
        await b.presence_update("chat.1", "bob", None, -1)
        assert "bob" not in await a.presence_list("chat.1")
        await b.stop()
        assert await a.presence_list("chat.1") == {"alice": {"info": {"name": "Alice"}, "connections": 1}}
        assert await a.presence_list("chat.2") == {}
    finally:
        await a.stop()
        await b.stop()


async def test_a_killed_node_leaves_presence_within_the_presence_ttl(shared_redis, prefix):
    a = RedisBroker(shared_redis, prefix=prefix, presence_ttl=1.5)
    await a.start(lambda seq, payload: None)
    proc = subprocess.Popen([sys.executable, NODE, shared_redis, prefix, "present", "room", "dave", "1.5"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert (await a.presence_list("room"))["dave"]["connections"] == 1
        await asyncio.sleep(2.0)  # the node heart-beats: still present past one TTL
        assert "dave" in await a.presence_list("room")
        proc.kill()  # SIGKILL: no goodbye
        proc.wait()
        loop = asyncio.get_running_loop()
        killed = loop.time()
        while "dave" in await a.presence_list("room"):
            assert loop.time() - killed < 1.5 + 0.5, "a killed node stayed in presence past PRESENCE_TTL"
            await asyncio.sleep(0.05)
    finally:
        proc.kill()
        await a.stop()


async def test_join_and_leave_are_fleet_wide_and_every_other_node_hears_them(shared_redis, prefix):
    heard: dict[str, list] = {"a": [], "b": [], "c": []}
    a, b, c = (RedisBroker(shared_redis, prefix=prefix, presence_ttl=1.5) for _ in range(3))
    for name, broker in zip("abc", (a, b, c)):
        await broker.start(lambda seq, payload: None, on_event=heard[name].append)
    try:
        assert await a.presence_update("room", "alice", {"n": 1}, 1) == ("join", {"n": 1})
        assert await b.presence_update("room", "alice", {"n": 2}, 1) is None  # a second tab, elsewhere
        assert await a.presence_update("room", "alice", None, -1) is None  # b still holds one
        assert await b.presence_update("room", "alice", None, -1) == ("leave", {"n": 2})
        await wait_until(lambda: len(heard["c"]) == 2, what="c hears the join and the leave")
        assert heard["c"] == [["join", "room", "alice", {"n": 1}], ["leave", "room", "alice", {"n": 2}]]
        assert heard["a"] == [["leave", "room", "alice", {"n": 2}]]  # never its own join
        assert heard["b"] == [["join", "room", "alice", {"n": 1}]]

        await c.broadcast(["user", "alice", "unread_count", {"count": 3}])
        await wait_until(lambda: len(heard["a"]) == 2 and len(heard["b"]) == 2, what="the user event")
        assert heard["a"][-1] == heard["b"][-1] == ["user", "alice", "unread_count", {"count": 3}]
        assert len(heard["c"]) == 2  # the sender handles its own

        # A node that stops says goodbye for its users present nowhere else.
        mark = len(heard["a"])
        await c.presence_update("room", "bob", {"b": True}, 1)
        await c.presence_update("room", "alice", None, 1)
        await a.presence_update("room", "alice", None, 1)
        await c.stop()
        await wait_until(lambda: ["leave", "room", "bob", {"b": True}] in heard["a"], what="bob's leave")
        await asyncio.sleep(0.3)
        assert heard["a"][mark:] == [["join", "room", "bob", {"b": True}], ["join", "room", "alice", None],
                                     ["leave", "room", "bob", {"b": True}]]  # alice is still on a
    finally:
        for broker in (a, b, c):
            await broker.stop()


async def test_an_unreachable_backplane_refuses_to_start_with_a_clear_error():
    broker = RedisBroker("redis://:s3cret@127.0.0.1:1/0", timeout=1)
    with pytest.raises(BackplaneUnavailable) as caught:
        await broker.start(lambda seq, payload: None)
    assert caught.value.code == 503
    assert "127.0.0.1:1" in caught.value.reason and "s3cret" not in caught.value.reason
    assert masked("rediss://user:pw@h:6380/1") == "rediss://user:***@h:6380/1"


async def test_every_key_stays_under_the_prefix(redis_server):
    broker = RedisBroker(redis_server.url, prefix="ns1:")
    await broker.start(lambda seq, payload: None)
    try:
        await broker.publish(b"p")
        reservation = Reservation("k", {"pending": "t"}, ttl=5)
        await broker.claim_idempotency(reservation, time.monotonic() + broker.timeout)
        await broker.presence_update("t", "u", None, 1)
        keys = sorted(k.decode() for k in redis_server.client().keys("*"))
    finally:
        await broker.stop()
    assert keys == ["ns1:epoch", "ns1:idempotency:k", "ns1:nodes", f"ns1:presence-topics:{broker.node}",
                    f"ns1:presence:{broker.node}:t", "ns1:seq", "ns1:stream"]

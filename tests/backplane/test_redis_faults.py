"""RedisBroker under faults, on a redis-server each test owns and kills.

The server keeps nothing on disk, so a restart loses every key: the epoch
must change. A killed subscription (or one Redis drops for falling behind)
must catch up from the stream with nothing lost and nothing twice.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubbub.backplane import BackplaneUnavailable

from .helpers import Node, wait_until

NODE = str(Path(__file__).with_name("node.py"))


async def test_outage_fails_publishes_spends_no_cpu_and_recovers_in_a_new_epoch(redis_server):
    node = await Node(redis_server.url, "f:", timeout=1.0).start()
    try:
        for i in range(3):
            await node.broker.publish(b"before")
        old_epoch = node.broker.epoch
        redis_server.kill()
        await wait_until(lambda: not node.broker.healthy, timeout=2, what="healthy to turn False")
        with pytest.raises(BackplaneUnavailable) as caught:
            await node.broker.publish(b"during")
        assert caught.value.code == 503
        with pytest.raises(BackplaneUnavailable):
            await node.broker.presence_list("t")
        await node.broker.presence_update("t", "u", None, 1)  # kept locally, written back later

        cpu_before = time.process_time()
        await asyncio.sleep(2.0)
        cpu = time.process_time() - cpu_before
        assert cpu < 0.2, f"{cpu:.2f} s of CPU in 2 s of outage: a busy loop"

        redis_server.start()  # empty: Redis lost its data
        await wait_until(lambda: node.broker.healthy, timeout=10, what="the reconnect")
        assert node.broker.epoch != old_epoch
        assert node.epochs == [node.broker.epoch]
        assert await node.broker.publish(b"after") == (node.broker.epoch, 1)
        await wait_until(lambda: node.seqs() == [1], what="the first publication of the new epoch")
        assert node.seqs(old_epoch) == [1, 2, 3]
        assert node.broker.reconnects == 1

        second_epoch = node.broker.epoch  # a second loss must not reuse any earlier epoch
        redis_server.kill()
        await wait_until(lambda: not node.broker.healthy, timeout=2, what="healthy to turn False")
        redis_server.start()
        await wait_until(lambda: node.broker.healthy, timeout=10, what="the second reconnect")
        assert node.broker.epoch not in (old_epoch, second_epoch)
        assert node.epochs == [second_epoch, node.broker.epoch]
    finally:
        await node.broker.stop()


async def test_presence_is_written_again_after_redis_lost_it(redis_server):
    node = await Node(redis_server.url, "p:", presence_ttl=0.9, timeout=1.0).start()
    other = Node(redis_server.url, "p:", presence_ttl=0.9, timeout=1.0)
    try:
        await node.broker.presence_update("room", "alice", {"a": 1}, 1)
        redis_server.kill()
        await wait_until(lambda: not node.broker.healthy, timeout=2, what="healthy to turn False")
        await node.broker.presence_update("room", "bob", None, 1)  # while Redis is down
        redis_server.start()
        await wait_until(lambda: node.broker.healthy, timeout=10, what="the reconnect")
        await other.start()
        await asyncio.sleep(0.6)  # one heartbeat (every 0.3 s here)
        assert await other.broker.presence_list("room") == {
            "alice": {"info": {"a": 1}, "connections": 1}, "bob": {"info": None, "connections": 1}}
    finally:
        await node.broker.stop()
        await other.broker.stop()


async def test_redis_restarted_mid_stream_two_nodes_keep_order_and_lose_nothing_acknowledged(redis_server):
    a = await Node(redis_server.url, "m:", timeout=1.0).start()
    b = await Node(redis_server.url, "m:", timeout=1.0).start()
    acked: dict[str, list[int]] = {}
    refused = 0
    stop = asyncio.Event()

    async def publisher(node: Node, name: str) -> None:
        nonlocal refused
        i = 0
        while not stop.is_set():
            try:
                epoch, seq = await node.broker.publish(f"{name}/{i}".encode())
                acked.setdefault(epoch, []).append(seq)
            except BackplaneUnavailable:
                refused += 1
                await asyncio.sleep(0.02)
            i += 1
            await asyncio.sleep(0.002)

    tasks = [asyncio.ensure_future(publisher(a, "a")), asyncio.ensure_future(publisher(b, "b"))]
    try:
        await asyncio.sleep(0.5)
        redis_server.kill()
        await asyncio.sleep(0.5)
        redis_server.start()
        await wait_until(lambda: a.broker.healthy and b.broker.healthy, timeout=10, what="reconnects")
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        old, new = list(acked)
        assert refused > 0 and a.broker.epoch == b.broker.epoch == new
        for node in (a, b):
            await wait_until(lambda node=node: node.seqs(new) == sorted(acked[new]),
                             what="every publication acknowledged after the restart")
            assert node.epochs == [new]
            before = node.seqs(old)  # what reached this node before Redis died: 1..k, no hole
            assert before == list(range(1, len(before) + 1))
            assert len(before) >= len(acked[old]) - 32, "acknowledged publications missing"
    finally:
        stop.set()
        await a.broker.stop()
        await b.broker.stop()


async def test_a_lost_subscription_catches_up_from_the_stream_exactly_once(redis_server):
    a = await Node(redis_server.url, "c:", timeout=1.0).start()
    b = await Node(redis_server.url, "c:", timeout=1.0).start()
    acked: list[int] = []

    async def publisher() -> None:
        for i in range(600):
            while True:
                try:
                    acked.append((await a.broker.publish(b"%d" % i))[1])
                    break
                except BackplaneUnavailable:
                    await asyncio.sleep(0.01)
            if i % 10 == 0:
                await asyncio.sleep(0.001)

    task = asyncio.ensure_future(publisher())
    try:
        await wait_until(lambda: len(acked) > 200, what="publications before the kill")
        killed = redis_server.client().client_kill_filter(_type="pubsub")
        assert killed == 2
        await task
        for node in (a, b):
            await wait_until(lambda node=node: len(node.received) >= 600, what="every publication")
            assert node.seqs() == acked == list(range(1, 601))
            assert node.gaps == [] and node.epochs == []
            assert node.broker.reconnects == 1
    finally:
        task.cancel()
        await a.broker.stop()
        await b.broker.stop()


async def test_a_node_too_slow_for_redis_is_dropped_and_catches_up(redis_server):
    # Redis drops a subscriber whose unread output passes 256 KiB: the node's
    # own memory never holds the backlog, and it reads what it missed from the stream.
    redis_server.client().config_set("client-output-buffer-limit", "pubsub 262144 131072 1")
    slow = Node(redis_server.url, "s:", timeout=2.0)
    original = slow._on_publication

    def sluggish(seq, payload):
        if len(slow.received) < 200:
            time.sleep(0.002)  # a node whose event loop is busy for a while
        original(seq, payload)

    slow._on_publication = sluggish
    await slow.start()
    try:
        count = 3000  # 24 MB: more than the socket buffers and Redis's limit can hold
        proc = await asyncio.create_subprocess_exec(
            sys.executable, NODE, redis_server.url, "s:", "blast", str(count), "8192",
            stdout=subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        acked = sorted(json.loads(out))
        assert acked == list(range(1, count + 1))
        await wait_until(lambda: len(slow.received) >= count, timeout=30, what="the catch-up")
        assert slow.seqs() == acked and slow.gaps == []
        assert slow.broker.reconnects >= 1, "Redis never dropped the slow subscriber"
    finally:
        await slow.broker.stop()


async def test_a_hung_redis_turns_unhealthy_and_recovers_without_loss(redis_server):
    node = await Node(redis_server.url, "h:", presence_ttl=1.5, timeout=0.5).start()
    try:
        await node.broker.publish(b"one")
        redis_server.pause()  # SIGSTOP: sockets stay open, nothing answers
        await wait_until(lambda: not node.broker.healthy, timeout=3, what="healthy to turn False")
        started = time.monotonic()
        with pytest.raises(BackplaneUnavailable):
            await node.broker.publish(b"refused")
        assert time.monotonic() - started < 0.1, "an unhealthy broker must refuse at once"
        redis_server.resume()
        await wait_until(lambda: node.broker.healthy, timeout=10, what="the reconnect")
        assert await node.broker.publish(b"two") == (node.broker.epoch, 2)
        await wait_until(lambda: node.seqs() == [1, 2], what="both publications")
        assert node.epochs == [] and node.gaps == []
    finally:
        await node.broker.stop()

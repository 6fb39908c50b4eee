"""MemoryBroker: the single-process backplane keeps today's synchronous delivery."""
from __future__ import annotations

from hubbub.backplane import MemoryBroker


async def test_delivers_before_publish_returns_in_seq_order():
    broker = MemoryBroker()
    got = []
    await broker.start(lambda seq, payload: got.append((seq, payload)))
    ids = [await broker.publish(b"a"), await broker.publish(b"b")]
    assert got == [(1, b"a"), (2, b"b")]
    assert ids == [(broker.epoch, 1), (broker.epoch, 2)]
    assert await broker.publish(b"typing", ephemeral=True) is None
    assert got[-1] == (None, b"typing")
    assert await broker.publish(b"c") == (broker.epoch, 3)  # ephemeral ones take no seq


async def test_each_broker_has_its_own_epoch():
    assert MemoryBroker().epoch != MemoryBroker().epoch


async def test_presence_counts_connections_per_user():
    broker = MemoryBroker()
    await broker.presence_update("room", "alice", {"name": "A"}, 1)
    await broker.presence_update("room", "alice", {"name": "A2"}, 1)
    await broker.presence_update("room", "bob", None, 1)
    assert await broker.presence_list("room") == {
        "alice": {"info": {"name": "A2"}, "connections": 2},
        "bob": {"info": None, "connections": 1}}
    await broker.presence_update("room", "alice", None, -1)
    await broker.presence_update("room", "bob", None, -1)
    assert await broker.presence_list("room") == {"alice": {"info": {"name": "A2"}, "connections": 1}}
    await broker.presence_update("room", "alice", None, -1)
    assert await broker.presence_list("room") == {}

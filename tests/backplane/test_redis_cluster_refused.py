"""A Redis Cluster node named as the backplane is refused at start, in words.

The broker's scripts keep a publication's id, history and pub/sub message
together on one instance; a cluster node refuses them (CROSSSLOT, MOVED,
"Hash slot not served"). The broker says what is wrong instead, and does not
start: ``hubbub serve`` exits with that reason (tests/integration/test_cli.py).
"""
from __future__ import annotations

import pytest

from hubbub.backplane import BackplaneUnavailable

from .helpers import Node


async def test_a_cluster_node_is_refused_with_the_reason(cluster_node_redis):
    node = Node(cluster_node_redis.url, "cluster:")
    with pytest.raises(BackplaneUnavailable) as refused:
        await node.start()
    reason = refused.value.reason
    assert "is a Redis Cluster node" in reason and "Redis Cluster is not supported" in reason, reason
    assert "CROSSSLOT" not in reason and "slot" not in reason.lower(), reason
    with cluster_node_redis.client() as client:  # refused before writing anything
        assert client.dbsize() == 0


async def test_a_standalone_redis_still_starts(redis_server):
    node = await Node(redis_server.url, "standalone:").start()
    try:
        assert node.broker.healthy
    finally:
        await node.broker.stop()

"""``GET /topics`` across a fleet (SPEC 10 "Server API": subscriber counts of
"the fleet with a backplane"), on real Redis: two secured nodes, subscribers
on both ports of each; either node answers the fleet's counts, a SIGKILLed
node's counts leave within PRESENCE_TTL, with Redis down the answer is a 503
with the reason rather than this node's counts passed off as the fleet's, and
once Redis is back (empty) the other nodes' counts are there again.

Under CI=true a missing Redis (or redis-server) fails with the reason.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time

import httpx
import pytest

from .helpers_user import KEY, SECURED_ENV, SSEReader
from .server import HubProcess, stop_all, ws_connect
from .tokens import token

PRESENCE_TTL = 3  # seconds: snapshots every second, a dead node gone within 3 s


def node_env(url: str, prefix: str) -> dict:
    return {**SECURED_ENV, "HUBBUB_BACKPLANE": url, "HUBBUB_BACKPLANE_PREFIX": prefix,
            "HUBBUB_PRESENCE_TTL": str(PRESENCE_TTL)}


@pytest.fixture
def two_nodes(tmp_path, shared):
    url, prefix = shared
    procs = [HubProcess(dev=False, env=node_env(url, prefix)) for _ in range(2)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda proc: proc.start(tmp_path), procs))
    yield procs
    stop_all(procs)


async def topics(hub: HubProcess, prefix: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(hub.base + "/topics", params={"prefix": prefix}, headers=KEY)


async def until_topics(hub: HubProcess, prefix: str, expected: dict, timeout: float,
                       recovering: bool = False) -> float:
    """Poll /topics until it lists ``expected`` ({pattern: count}); the seconds it
    took. ``recovering``: 503s are expected until the backplane is back."""
    started = time.monotonic()
    while True:
        response = await topics(hub, prefix)
        got = None
        if not (recovering and response.status_code == 503):
            assert response.status_code == 200, response.text
            got = {t["topic"]: t["subscribers"] for t in response.json()["topics"]}
        if got == expected:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{hub.base}: {got}, not {expected}"
        await asyncio.sleep(0.1)


async def test_topics_counts_the_fleet_and_a_killed_nodes_counts_leave(two_nodes):
    a, b = two_nodes
    jwt = token("fleet-topics")
    x, y, z = "public.ft.x", "public.ft.y", "public.ft.z"
    async with httpx.AsyncClient(timeout=10) as client, \
            ws_connect(a.url("asgi", f"/ws?token={jwt}&topic={x}&topic={y}", "ws")), \
            ws_connect(a.url("native", f"/ws?token={jwt}&topic={x}", "ws")), \
            ws_connect(b.url("asgi", f"/ws?token={jwt}&topic={z}", "ws")), \
            SSEReader(client, b.url("native", f"/sse?topic={x}&token={jwt}")):
        fleet = {x: 3, y: 1, z: 1}
        # Another node's counts arrive with its next snapshot (every PRESENCE_TTL/3).
        for node in (a, b):
            await until_topics(node, "public.ft.", fleet, timeout=10)
        await until_topics(a, "public.ft.x", {x: 3}, timeout=1)  # the prefix filters the fleet's too
        await until_topics(b, "public.nothing.", {}, timeout=1)
        # A node's snapshot follows its changes: patterns come, counts change, patterns go.
        async with ws_connect(b.url("native", f"/ws?token={jwt}&topic={y}&topic=public.ft.w", "ws")):
            await until_topics(a, "public.ft.", {**fleet, y: 2, "public.ft.w": 1}, timeout=10)
        await until_topics(a, "public.ft.", fleet, timeout=10)

        os.killpg(b.proc.pid, signal.SIGKILL)  # no goodbye: only its heartbeat runs out
        b.proc.wait(5)
        # Its heartbeat counted it live until PRESENCE_TTL - 1 s after the last one.
        await until_topics(a, "public.ft.", {x: 2, y: 1}, timeout=PRESENCE_TTL + 1)


async def test_topics_is_a_503_while_redis_is_down_and_the_fleets_again_after(redis_server, tmp_path):
    """Redis restarts empty: each node writes its snapshot again (its unchanged
    counts are found missing), so the fleet's counts come back, not just this node's."""
    nodes: list[HubProcess] = []
    jwt = token("fleet-down")
    try:
        for _ in range(2):
            nodes.append(HubProcess(dev=False, env=node_env(redis_server.url, "ftd:")).start(tmp_path))
        a, b = nodes
        async with ws_connect(a.url("native", f"/ws?token={jwt}&topic=public.fd", "ws")), \
                ws_connect(b.url("asgi", f"/ws?token={jwt}&topic=public.fd", "ws")):
            await until_topics(a, "public.fd", {"public.fd": 2}, timeout=10)
            await asyncio.to_thread(redis_server.kill)
            deadline = time.monotonic() + 10
            while (response := await topics(a, "public.fd")).status_code == 200:
                assert time.monotonic() < deadline, "still 200 with Redis down"
                await asyncio.sleep(0.1)
            assert response.status_code == 503, response.text
            assert "backplane unavailable" in response.json()["reason"], response.text
            await asyncio.to_thread(redis_server.start)  # back, with no keys at all
            await until_topics(a, "public.fd", {"public.fd": 2}, timeout=20, recovering=True)
    finally:
        for node in nodes:
            node.stop()

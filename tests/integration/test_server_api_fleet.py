"""The server API across a fleet (SPEC 10 "Server API", SPEC 13): two secured
``hubbub serve`` nodes on the machine's Redis under a key prefix of the test's
own. A disconnect or unsubscribe asked of one node reaches the user's
connections on the other; each node's count is its own.

Under CI=true a missing Redis fails with the reason; elsewhere it is skipped.
"""
from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from .helpers_user import KEY, SECURED_ENV, SSEReader, ws_next
from .server import HubProcess, stop_all, ws_connect
from .test_server_api import closed_with, sse_ends_after, wait_for_connections
from .tokens import token


@pytest.fixture
def two_nodes(tmp_path, shared):
    url, prefix = shared
    procs = [HubProcess(dev=False, env={**SECURED_ENV, "HUBBUB_BACKPLANE": url,
                                        "HUBBUB_BACKPLANE_PREFIX": prefix}) for _ in range(2)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda proc: proc.start(tmp_path), procs))
    yield procs
    stop_all(procs)


async def test_disconnect_on_one_node_closes_the_users_connections_on_every_node(two_nodes):
    a, b = two_nodes
    alice = token("fleet-dis")
    async with httpx.AsyncClient(timeout=10) as client, \
            ws_connect(a.url("native", f"/ws?token={alice}", "ws")) as ws_a, \
            ws_connect(b.url("asgi", f"/ws?token={alice}", "ws")) as ws_b, \
            SSEReader(client, b.url("native", f"/sse?topic=public.fd&token={alice}")) as sse_b:
        await wait_for_connections(a, 1)
        await wait_for_connections(b, 2)
        response = httpx.post(a.base + "/disconnect", json={"user": "fleet-dis", "code": 4001,
                                                            "reason": "fleet"}, headers=KEY, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json() == {"closed": 1}  # this node's
        assert await closed_with(ws_a) == (4001, "fleet")
        assert await closed_with(ws_b) == (4001, "fleet")
        assert await sse_ends_after(sse_b, "disconnect") == {"code": 4001, "reason": "fleet"}


async def test_unsubscribe_on_one_node_reaches_the_users_connections_on_every_node(two_nodes):
    a, b = two_nodes
    alice = token("fleet-uns")
    topics = "topic=public.fu.room&topic=public.fu.other"
    async with httpx.AsyncClient(timeout=10) as client, \
            ws_connect(a.url("asgi", f"/ws?token={alice}&{topics}", "ws")) as ws_a, \
            ws_connect(b.url("native", f"/ws?token={alice}&{topics}", "ws")) as ws_b, \
            SSEReader(client, b.url("asgi", f"/sse?{topics}&token={alice}")) as sse_b:
        await wait_for_connections(a, 1)
        await wait_for_connections(b, 2)
        response = httpx.post(a.base + "/unsubscribe", json={"user": "fleet-uns", "topic": "public.fu.room"},
                              headers=KEY, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json() == {"unsubscribed": 1}
        for ws in (ws_a, ws_b):
            assert (await ws_next(ws, "unsubscribed"))["topic"] == "public.fu.room"
        assert (await sse_b.next("unsubscribed"))[1] == {"topic": "public.fu.room"}
        assert httpx.get(b.base + "/topics?prefix=public.fu.", headers=KEY, timeout=10).json() == {
            "topics": [{"topic": "public.fu.other", "subscribers": 2}]}
        a.publish({"topic": "public.fu.room", "data": "gone"}, {"topic": "public.fu.other", "data": "kept"},
                  headers=KEY)
        for ws in (ws_a, ws_b):
            assert (await ws_next(ws, "message", timeout=10))["data"] == "kept"
        assert (await sse_b.next("message", timeout=10))[1]["data"] == "kept"

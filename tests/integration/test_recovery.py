"""History and recovery (SPEC 4, 5, 6, 10) through the real server: nothing lost
across a reconnect within the history window, and a reset when it cannot be so."""
import asyncio
import json
import threading
import time
import uuid

import httpx
import pytest
from httpx_sse import aconnect_sse

from .server import HubProcess, ws_connect, ws_messages, ws_until


def prefix() -> str:
    return "h" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def small_hub(tmp_path_factory):
    """History of 6 per topic, replays of at most 8: gaps are easy to reach."""
    process = HubProcess(env={"HUBBUB_HISTORY_SIZE": "6", "HUBBUB_RECOVERY_MAX": "8"})
    process.start(tmp_path_factory.mktemp("small"))
    yield process
    process.stop()


async def test_ws_subscribe_since_replays_in_order_then_live(hub, port_kind):
    p = prefix()
    ids = hub.publish(*({"topic": f"{p}.{i % 3}", "data": i} for i in range(10)))
    async with ws_connect(hub.url(port_kind, "/ws", "ws")) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": f"{p}.*", "since": ids[3], "id": 1,
                                  "filter": None}))
        got = await ws_messages(ws, 7)
        assert got[0]["op"] == "ack" and got[0]["id"] == 1
        assert [m["data"] for m in got[1:]] == [4, 5, 6, 7, 8, 9]
        hub.publish({"topic": f"{p}.1", "data": "live"})
        assert (await ws_messages(ws, 1))[0]["data"] == "live"


async def test_query_since_at_connect_merges_topics_in_id_order(hub, port_kind):
    p = prefix()
    ids = hub.publish(*({"topic": f"{p}.{'abc'[i % 3]}", "data": i} for i in range(9)))
    url = hub.url(port_kind, f"/ws?topic={p}.a&topic={p}.c&since={ids[0]}", "ws")
    async with ws_connect(url) as ws:
        got = await ws_messages(ws, 5)
    assert [m["data"] for m in got] == [2, 3, 5, 6, 8]


async def test_sse_last_event_id_and_filters(hub, port_kind):
    p = prefix()
    ids = hub.publish(*({"topic": f"{p}.x", "data": i, "tags": {"k": "even" if i % 2 == 0 else "odd"}}
                        for i in range(8)))
    async with httpx.AsyncClient(timeout=10) as client:
        url = hub.url(port_kind, f"/sse?topic={p}.%3E&filter=k:even")
        async with aconnect_sse(client, "GET", url, headers={"Last-Event-ID": ids[1]}) as source:
            got = []
            async with asyncio.timeout(5):
                async for event in source.aiter_sse():
                    if event.event == "message" and event.data:
                        got.append((event.id, json.loads(event.data)["data"]))
                        if len(got) == 3:
                            break
    assert got == [(ids[2], 2), (ids[4], 4), (ids[6], 6)]


async def test_ephemeral_publications_are_not_kept(hub, port_kind):
    p = prefix()
    ids = hub.publish({"topic": p, "data": "kept-0"}, {"topic": p, "data": "typing", "ephemeral": True},
                      {"topic": p, "data": "kept-1"})
    assert ids[1] is None
    async with ws_connect(hub.url(port_kind, f"/ws?topic={p}&since={ids[0]}", "ws")) as ws:
        hub.publish({"topic": p, "data": "end"})
        got = await ws_until(ws, lambda m: m.get("data") == "end")
    assert [m["data"] for m in got] == ["kept-1", "end"]


async def test_gap_and_recovery_limit_send_reset(small_hub, port_kind):
    p = prefix()
    ids = small_hub.publish(*({"topic": f"{p}.a", "data": i} for i in range(10)))
    async with ws_connect(small_hub.url(port_kind, "/ws", "ws")) as ws:
        # ids[2] was evicted (only the last 6 are kept): not covered.
        await ws.send(json.dumps({"op": "subscribe", "topic": f"{p}.a", "since": ids[2], "id": 1}))
        ack, reset = await ws_messages(ws, 2)
        assert ack["op"] == "ack" and ack["id"] == 1 and ack["position"] == ids[-1]
        assert reset == {"op": "reset", "topic": f"{p}.a", "reason": "history_gap", "position": ids[-1]}
        # ids[3] is the newest evicted one: everything after it is kept.
        await ws.send(json.dumps({"op": "subscribe", "topic": f"{p}.a", "since": ids[3], "id": 2}))
        got = await ws_messages(ws, 7)
        assert [m["data"] for m in got[1:]] == [4, 5, 6, 7, 8, 9]
    q = prefix()
    ids = small_hub.publish(*({"topic": f"{q}.{i % 3}", "data": i} for i in range(12)))
    async with ws_connect(small_hub.url(port_kind, "/ws", "ws")) as ws:
        # 10 kept publications after ids[1], over the replay limit of 8: reset, no partial replay.
        await ws.send(json.dumps({"op": "subscribe", "topic": f"{q}.*", "since": ids[1], "id": 1}))
        got = await ws_messages(ws, 2)
        assert got[1] == {"op": "reset", "topic": f"{q}.*", "reason": "recovery_limit", "position": ids[-1]}
        small_hub.publish({"topic": f"{q}.0", "data": "live"})
        assert (await ws_messages(ws, 1))[0]["data"] == "live"


async def test_a_foreign_or_malformed_id_is_a_reset(hub, port_kind):
    async with httpx.AsyncClient(timeout=10) as client:
        for since in ("zzzz-1", "garbage", "-", hub.publish({"topic": "f.a", "data": 1})[0] + "999"):
            url = hub.url(port_kind, f"/sse?topic=f.a&since={since}")
            async with aconnect_sse(client, "GET", url) as source:
                async with asyncio.timeout(5):
                    async for event in source.aiter_sse():
                        if event.event == "reset":
                            assert json.loads(event.data)["reason"] == "history_gap"
                            break


async def test_no_gap_and_no_duplicate_at_the_seam(hub, port_kind):
    """Reconnect (with since) while a publisher keeps publishing: the replay
    and the live stream join exactly."""
    p = prefix()
    stop = threading.Event()
    published: list[str] = []

    def publisher():
        with httpx.Client(base_url=hub.base, timeout=10) as client:
            n = 0
            while not stop.is_set() and n < 3000:
                response = client.post("/publish", json=[{"topic": f"{p}.{n % 2}", "data": n + i}
                                                         for i in range(5)])
                published.extend(response.json()["ids"])
                n += 5

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        seen: list[str] = []
        for _ in range(8):
            since = seen[-1] if seen else None
            query = f"/ws?topic={p}.*" + (f"&since={since}" if since else "")
            async with ws_connect(hub.url(port_kind, query, "ws")) as ws:
                got = await ws_messages(ws, 40)
            assert all(m["op"] == "message" for m in got)
            seen.extend(m["id"] for m in got)
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    start = published.index(seen[0])
    assert seen == published[start:start + len(seen)]  # in order, no gap, no duplicate


async def test_poll_answers_at_once_waits_and_wakes(hub):
    p = prefix()
    async with httpx.AsyncClient(base_url=hub.base, timeout=30) as client:
        ids = hub.publish({"topic": f"{p}.a", "data": 1}, {"topic": f"{p}.b", "data": 2})
        started = time.monotonic()
        now = (await client.get("/poll", params={"topic": f"{p}.*", "since": ids[0]})).json()
        assert time.monotonic() - started < 2
        assert [m["data"] for m in now["messages"]] == [2] and now["last_id"] == ids[1]
        assert now["messages"][0]["topic"] == f"{p}.b" and now["messages"][0]["id"] == ids[1]

        started = time.monotonic()
        empty = (await client.get("/poll", params={"topic": f"{p}.*", "since": ids[1],
                                                    "timeout": "0.5"})).json()
        assert 0.4 < time.monotonic() - started < 5
        assert empty == {"messages": [], "last_id": ids[1]}

        waiting = asyncio.ensure_future(client.get("/poll", params={"topic": f"{p}.*", "since": ids[1],
                                                                     "timeout": "20"}))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        started = time.monotonic()
        [woke_id] = hub.publish({"topic": f"{p}.c", "data": 3})
        woke = (await waiting).json()
        assert time.monotonic() - started < 2
        assert [m["data"] for m in woke["messages"]] == [3] and woke["last_id"] == woke_id


async def test_poll_without_since_and_errors(hub):
    p = prefix()
    async with httpx.AsyncClient(base_url=hub.base, timeout=30) as client:
        first = (await client.get("/poll", params={"topic": p, "timeout": "0"})).json()
        assert first["messages"] == []
        hub.publish({"topic": p, "data": "after"})
        later = (await client.get("/poll", params={"topic": p, "since": first["last_id"]})).json()
        assert [m["data"] for m in later["messages"]] == ["after"]
        for params, fragment in (({}, "at least one topic"), ({"topic": "a..b"}, "empty segment"),
                                 ({"topic": p, "timeout": "soon"}, "timeout must be a number"),
                                 ({"topic": p, "timeout": "61"}, "between 0 and 60")):
            response = await client.get("/poll", params=params)
            assert response.status_code == 400 and fragment in response.json()["reason"]
        gap = (await client.get("/poll", params={"topic": p, "since": "other-1"})).json()
        assert gap["reset"] == {"topics": [p], "reason": "history_gap"} and gap["messages"] == []


async def test_reconnect_storm_of_500_clients(hub, port_kind):
    p = prefix()
    first = hub.publish({"topic": f"{p}.a", "data": "before"})[0]
    ids = hub.publish(*({"topic": f"{p}.{'ab'[i % 2]}", "data": i} for i in range(20)))

    async def reconnect():
        async with ws_connect(hub.url(port_kind, f"/ws?topic={p}.*&since={first}", "ws")) as ws:
            return [m["id"] for m in await ws_messages(ws, 20, timeout=60)]

    results = await asyncio.gather(*(reconnect() for _ in range(500)))
    assert all(r == ids for r in results)

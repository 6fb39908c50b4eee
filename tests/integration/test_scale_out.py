"""Scale-out (SPEC 1 ``--workers``, SPEC 13): real ``hubbub serve`` processes over real Redis.

Nodes share the machine's Redis (127.0.0.1:6379) under a key prefix of the
test's own (HUBBUB_BACKPLANE_PREFIX), deleted afterwards; the outage test
runs its own ``redis-server`` on a free port and kills it. Under CI=true a
missing Redis fails the test with the reason; elsewhere it is skipped.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import time

import httpx
import psutil
import pytest
import redis


from .server import HubProcess, stop_all, ws_connect

PRESENCE_TTL = 3  # seconds: a dead node leaves the fleet's heartbeats within it


# -- fixtures -------------------------------------------------------------------
@pytest.fixture
def nodes(tmp_path):
    """Start N nodes of one fleet at once; each is stopped (or already killed) at the end."""
    started: list[HubProcess] = []

    def start(url: str, prefix: str, count: int = 1, args=(), env=None) -> list[HubProcess]:
        procs = [HubProcess(env={"HUBBUB_BACKPLANE": url, "HUBBUB_BACKPLANE_PREFIX": prefix,
                                 "HUBBUB_CLIENT_PUBLISH_RATE": "1000",
                                 "HUBBUB_PRESENCE_TTL": str(PRESENCE_TTL), **(env or {})},
                            args=list(args)) for _ in range(count)]
        started.extend(procs)
        # In parallel; each retries on fresh ports if another process took its own.
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda proc: proc.start(tmp_path), procs))

    yield start
    stop_all(started)


# -- helpers -------------------------------------------------------------------
async def read(ws, count: int, timeout: float = 20.0, keep=("message", "reset")) -> list[dict]:
    """The next ``count`` messages whose op is in ``keep`` (pings and acks are skipped)."""
    out: list[dict] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            frame = await ws.recv()
            for line in frame.split("\n"):
                msg = json.loads(line)
                if msg.get("op") in keep:
                    out.append(msg)
    return out


async def subscribe(ws, topic: str, **fields) -> None:
    await ws.send(json.dumps({"op": "subscribe", "topic": topic, "id": "s", **fields}))
    await read(ws, 1, keep=("ack",))


def seq(event_id: str) -> int:
    return int(event_id.rpartition("-")[2])


def assert_in_id_order_once(got: list[dict]) -> None:
    ids = [m["id"] for m in got]
    assert len({i.rpartition("-")[0] for i in ids}) == 1, "one epoch"
    seqs = [seq(i) for i in ids]
    assert seqs == sorted(set(seqs)), "strictly increasing ids: no duplicate, no reordering"


async def publish_many(base: str, items: list[dict]) -> list[str]:
    async with httpx.AsyncClient(timeout=10) as client:
        ids = []
        for item in items:
            response = await client.post(base + "/publish", json=item)
            assert response.status_code == 200, response.text
            ids.extend(response.json()["ids"])
        return ids


def group_cpu(proc: HubProcess) -> float:
    """CPU seconds used so far by a node's processes (Granian's main and its workers)."""
    main = psutil.Process(proc.proc.pid)
    total = 0.0
    for p in [main, *main.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def health_status(proc: HubProcess) -> int:
    try:
        return httpx.get(proc.base + "/healthz", timeout=2).status_code
    except httpx.HTTPError:
        return 0


# (--workers N without Redis shares one hub through the local broker:
#  tests/integration/test_workers_local.py)


# -- cross-node delivery ------------------------------------------------------------
async def test_every_subscriber_on_every_node_gets_every_publication_once_in_id_order(shared, nodes):
    fleet = nodes(*shared, count=3)
    per_node = 40
    sockets = []
    try:
        for proc in fleet:  # one wildcard subscriber per node on each port
            for kind in ("native", "asgi"):
                ws = await ws_connect(proc.url(kind, "/ws", "ws"))
                await subscribe(ws, "fleet.>")
                sockets.append(ws)
        items = [[{"topic": f"fleet.n{n}.{i % 3}", "data": {"n": n, "i": i}} for i in range(per_node)]
                 for n in range(len(fleet))]
        # A concurrent publisher on every node.
        acked = await asyncio.gather(*(publish_many(proc.base, items[n]) for n, proc in enumerate(fleet)))
        everything = {(n, i) for n in range(len(fleet)) for i in range(per_node)}
        id_of = {(n, i): acked[n][i] for n in range(len(fleet)) for i in range(per_node)}
        for ws in sockets:
            got = await read(ws, len(everything))
            assert_in_id_order_once(got)
            assert {(m["data"]["n"], m["data"]["i"]) for m in got} == everything
            assert all(id_of[(m["data"]["n"], m["data"]["i"])] == m["id"] for m in got)
            for n in range(len(fleet)):  # each publisher's own order is kept
                assert [m["data"]["i"] for m in got if m["data"]["n"] == n] == list(range(per_node))
    finally:
        for ws in sockets:
            await ws.close()


async def test_ws_client_publish_goes_through_the_fleet(shared, nodes):
    a, b = nodes(*shared, count=2)
    async with ws_connect(b.url("native", "/ws", "ws")) as listener, \
            ws_connect(a.url("asgi", "/ws", "ws")) as publisher:
        await subscribe(listener, "chat.>")
        for i in range(5):
            await publisher.send(json.dumps({"op": "publish", "topic": "chat.room", "data": i, "id": i}))
        acks = await read(publisher, 5, keep=("ack",))
        assert [a["id"] for a in acks] == list(range(5))  # acknowledged in the order sent
        got = await read(listener, 5)
        assert [m["data"] for m in got] == list(range(5))
        assert [m["id"] for m in got] == [a["event_id"] for a in acks]


# -- recovery from another node, including one that started late --------------------
async def test_reconnect_to_another_node_recovers_wildcards_and_filters(shared, nodes, tmp_path):
    a, b = nodes(*shared, count=2)

    def batch(start: int) -> list[dict]:
        return [{"topic": f"rc.{'xy'[i % 2]}", "data": i, "tags": {"k": "even" if i % 4 < 2 else "odd"}}
                for i in range(start, start + 12)]

    async with ws_connect(a.url("native", "/ws?topic=rc.*&filter=k:even", "ws")) as ws:
        await ws.send(json.dumps({"op": "ping", "id": 1}))
        await read(ws, 1, keep=("pong",))  # subscribed before anything is published
        await publish_many(b.base, batch(0))
        seen = await read(ws, 6)
    assert [m["data"] for m in seen] == [0, 1, 4, 5, 8, 9]
    last = seen[-1]["id"]

    await publish_many(a.base, batch(12) + [{"topic": "noise.x", "data": "no"}])
    missed = [12, 13, 16, 17, 20, 21]
    (late,) = nodes(*shared, count=1)  # started after those were published

    for proc, kind in ((late, "native"), (b, "asgi"), (late, "asgi")):
        url = proc.url(kind, f"/ws?topic=rc.*&filter=k:even&since={last}", "ws")
        async with ws_connect(url) as ws:
            assert [m["data"] for m in await read(ws, 6)] == missed
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", late.url("asgi", "/sse?topic=rc.%2A&filter=k:even"),
                                 headers={"Last-Event-ID": last}) as response:
            data, buffered = [], ""
            async with asyncio.timeout(10):
                async for chunk in response.aiter_text():
                    buffered += chunk
                    while "\n\n" in buffered:
                        event, buffered = buffered.split("\n\n", 1)
                        for line in event.splitlines():
                            if line.startswith("data: ") and '"topic"' in line:
                                data.append(json.loads(line[6:])["data"])
                    if len(data) >= 6:
                        break
    assert data == missed

    # An id of another id space (another fleet, or before Redis lost its data): a clean reset.
    async with ws_connect(late.url("native", "/ws?topic=rc.*&since=0000-5", "ws")) as ws:
        (reset,) = await read(ws, 1)
    position = reset.pop("position")  # the newest id, in this fleet's id space
    assert reset == {"op": "reset", "topic": "rc.*", "reason": "history_gap"}
    assert position.rpartition("-")[0] == last.rpartition("-")[0] and seq(position) > seq(last)


async def test_resume_with_an_id_this_node_has_not_delivered_yet_is_not_a_reset(shared, nodes):
    a, b = nodes(*shared, count=2)
    # An id from "the future" of the same fleet: b has delivered nothing past it yet only
    # if it is slow; the resume waits for it (or takes it as covered), never resets.
    # The id reaches b while the handshake waits for it (as SSE's answer does).
    (first,) = await publish_many(a.base, [{"topic": "fu.t", "data": 0}])
    ahead = f"{first.rpartition('-')[0]}-{seq(first) + 1}"
    connecting = asyncio.ensure_future(ws_connect(b.url("native", f"/ws?topic=fu.t&since={ahead}", "ws")))
    await asyncio.sleep(0.2)
    await publish_many(a.base, [{"topic": "fu.t", "data": 1}, {"topic": "fu.t", "data": 2}])
    async with await connecting as ws:
        got = await read(ws, 1)
    assert got[0]["op"] == "message" and got[0]["data"] == 2  # after the id it resumed from


# -- faults -----------------------------------------------------------------------------
async def test_a_sigkilled_node_leaves_the_others_serving_and_its_clients_recover_elsewhere(shared, nodes):
    url, prefix = shared
    a, b = nodes(url, prefix, count=2)
    async with ws_connect(a.url("native", "/ws", "ws")) as on_a, \
            ws_connect(b.url("native", "/ws", "ws")) as on_b:
        await subscribe(on_a, "k.>")
        await subscribe(on_b, "k.>")
        acked: list[tuple[int, str]] = []
        async with httpx.AsyncClient(timeout=5) as client:
            for i in range(60):
                target = a if i % 2 == 0 and i < 30 else b
                if i == 30:
                    os.killpg(a.proc.pid, signal.SIGKILL)  # mid-stream, no goodbye
                response = await client.post(target.base + "/publish", json={"topic": "k.t", "data": i})
                assert response.status_code == 200, response.text
                acked.append((i, response.json()["ids"][0]))
        got_b = await read(on_b, 60)
        assert_in_id_order_once(got_b)
        assert [(m["data"], m["id"]) for m in got_b] == acked

        got_a: list[dict] = []
        with pytest.raises(Exception):  # its node is gone: the socket ends
            while True:
                got_a.extend(await read(on_a, 1, timeout=5))
    # What the killed node delivered is a prefix; the rest is recovered from the other node.
    assert [m["data"] for m in got_a] == list(range(len(got_a)))
    since = got_a[-1]["id"] if got_a else acked[0][1]
    rest = [i for i, _ in acked if i > (got_a[-1]["data"] if got_a else 0)]
    async with ws_connect(b.url("asgi", f"/ws?topic=k.%3E&since={since}", "ws")) as ws:
        assert [m["data"] for m in await read(ws, len(rest))] == rest

    # The killed node stops counting as live within PRESENCE_TTL (its heartbeat runs out).
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + PRESENCE_TTL + 2
        while True:
            now = float(client.time()[0])
            live = [m for m, expiry in client.zrange(f"{prefix}nodes", 0, -1, withscores=True)
                    if expiry > now]
            if len(live) == 1:
                break
            assert time.monotonic() < deadline, f"{len(live)} live nodes after PRESENCE_TTL"
            await asyncio.sleep(0.2)
    finally:
        client.close()


async def test_redis_restart_mid_stream(redis_server, nodes):
    a, b = nodes(redis_server.url, "r:", count=2)
    async with ws_connect(a.url("native", "/ws", "ws")) as on_a, \
            ws_connect(b.url("asgi", "/ws", "ws")) as on_b:
        await subscribe(on_a, "rr.>")
        await subscribe(on_b, "rr.>")
        before = await publish_many(a.base, [{"topic": "rr.t", "data": i} for i in range(5)])
        for ws in (on_a, on_b):
            assert [m["id"] for m in await read(ws, 5)] == before

        redis_server.kill()
        await wait_for(lambda: health_status(a) == 503 and health_status(b) == 503, 10,
                       "/healthz 503 on both nodes")
        for proc in (a, b):
            response = httpx.post(proc.base + "/publish", json={"topic": "rr.t", "data": "lost?"})
            assert response.status_code == 503, response.text
        await on_a.send(json.dumps({"op": "publish", "topic": "rr.t", "data": "lost?", "id": "p"}))
        (refused,) = await read(on_a, 1, keep=("error",))
        assert refused["code"] == 503 and refused["id"] == "p"

        cpu = [group_cpu(p) for p in (a, b)]
        await asyncio.sleep(2.0)
        # The connections stay up and answer while Redis is down.
        for ws in (on_a, on_b):
            await ws.send(json.dumps({"op": "ping", "id": "alive"}))
            await read(ws, 1, timeout=5, keep=("pong",))
        used = [group_cpu(p) - c for p, c in zip((a, b), cpu)]
        assert max(used) < 0.5, f"CPU seconds while Redis was down, over 2 s: {used} (a busy loop?)"

        redis_server.start()  # empty: Redis lost everything, so a new epoch
        await wait_for(lambda: health_status(a) == 200 and health_status(b) == 200, 15,
                       "/healthz 200 again")
        resets = [(await read(ws, 1))[0] for ws in (on_a, on_b)]  # told that what they hold may have a hole
        after = await publish_many(b.base, [{"topic": "rr.t", "data": "after"}])
        new_epoch = after[0].rpartition("-")[0]
        assert new_epoch != before[0].rpartition("-")[0]
        # Each resumes from the start of the new epoch: the old ids can never be resumed from.
        assert resets == [{"op": "reset", "topic": "rr.>", "reason": "history_gap",
                           "position": f"{new_epoch}-0"}] * 2
        for ws in (on_a, on_b):
            (msg,) = await read(ws, 1)
            assert msg["id"] == after[0] and msg["data"] == "after"

    # An id of the lost epoch gets a clean reset; one of the new epoch recovers.
    async with ws_connect(a.url("native", f"/ws?topic=rr.%3E&since={before[-1]}", "ws")) as ws:
        assert (await read(ws, 1))[0] == {"op": "reset", "topic": "rr.>", "reason": "history_gap",
                                          "position": after[0]}
    more = await publish_many(a.base, [{"topic": "rr.t", "data": i} for i in range(3)])
    async with ws_connect(b.url("native", f"/ws?topic=rr.%3E&since={after[0]}", "ws")) as ws:
        assert [m["id"] for m in await read(ws, 3)] == more


# -- --workers 2 on one port ----------------------------------------------------------
async def test_two_workers_on_one_port_are_one_hub(shared, nodes):
    (proc,) = nodes(*shared, count=1, args=["--workers", "2"])
    sockets = []
    try:
        for i in range(12):
            ws = await ws_connect(proc.url("native" if i % 2 else "asgi", "/ws", "ws"))
            await subscribe(ws, "w.*")
            sockets.append(ws)
        # Both workers hold subscribers (each /healthz is answered by one of them).
        # Async requests: a blocking call would stall the subscribers' own loop
        # past a liveness period, and the hub would drop them as silent.
        per_worker: dict[int, int] = {}
        async with httpx.AsyncClient(timeout=5, headers={"connection": "close"}) as client:
            for _ in range(60):
                body = (await client.get(proc.base + "/healthz")).json()
                per_worker[body["worker"]] = body["connections"]
                if len(per_worker) == 2:
                    break
            assert len(per_worker) == 2 and sum(per_worker.values()) == 12, per_worker

            ids = []
            for i in range(30):  # a new HTTP connection each: publishes land on either worker
                response = await client.post(proc.base + "/publish", json={"topic": "w.t", "data": i})
                assert response.status_code == 200, response.text
                ids.extend(response.json()["ids"])
        for ws in sockets:
            got = await read(ws, 30)
            assert [m["id"] for m in got] == ids and [m["data"] for m in got] == list(range(30))
    finally:
        for ws in sockets:
            await ws.close()

    for i in range(6):  # recovery, whichever worker the reconnect lands on
        url = proc.url("native" if i % 2 else "asgi", f"/ws?topic=w.*&since={ids[19]}", "ws")
        async with ws_connect(url) as ws:
            assert [m["data"] for m in await read(ws, 10)] == list(range(20, 30))


# -- Idempotency-Key across nodes ---------------------------------------------------------
async def test_one_idempotency_key_sent_to_two_nodes_at_once_publishes_once(shared, nodes):
    a, b = nodes(*shared, count=2)
    async with ws_connect(a.url("native", "/ws", "ws")) as ws:
        await subscribe(ws, "idem.t")
        async with httpx.AsyncClient(timeout=10) as client:
            responses = await asyncio.gather(*(
                client.post(proc.base + "/publish", json={"topic": "idem.t", "data": "once"},
                            headers={"idempotency-key": "k-1"}) for proc in (a, b, a, b)))
        assert {r.status_code for r in responses} == {200}
        assert len({tuple(r.json()["ids"]) for r in responses}) == 1  # every answer names the one id
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 3
        await publish_many(b.base, [{"topic": "idem.t", "data": "next"}])
        assert [m["data"] for m in await read(ws, 2)] == ["once", "next"]

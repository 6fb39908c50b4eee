"""``hubbub serve --workers 2`` with no Redis (SPEC 1, issue 21): the workers are one hub
through the local broker process that ``serve`` starts (backplane/local_server.py).

Real processes: Granian's workers, the broker, WebSocket and HTTP clients.
Connections and requests land on either worker (SO_REUSEPORT); each test
first makes sure both workers hold some of them (each /healthz is answered
by one worker and names it).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from .helpers_user import KEY, SECURED_ENV
from .server import HubProcess, stop_all, ws_connect
from .test_scale_out import assert_in_id_order_once, read, subscribe
from .test_server_api import closed_with
from .tokens import token

NO_REDIS = {"HUBBUB_BACKPLANE": "memory", "HUBBUB_CLIENT_PUBLISH_RATE": "1000"}
SECURED = {**SECURED_ENV, "HUBBUB_HEARTBEAT": "15"}  # no pings to answer while a test reads


@pytest.fixture
def serve(tmp_path):
    """Start ``hubbub serve`` (2 workers, no Redis by default); stopped at the end."""
    started: list[HubProcess] = []

    def start(workers: int = 2, env=None, dev: bool = True) -> HubProcess:
        proc = HubProcess(env={**NO_REDIS, **(env or {})}, dev=dev, args=["--workers", str(workers)])
        started.append(proc)
        return proc.start(tmp_path)

    yield start
    stop_all(started)


def socket_folder(broker: psutil.Process) -> Path:
    """The private folder of a broker's socket: ``-m hubbub.backplane.local_server SOCKET ...``."""
    cmdline = broker.cmdline()
    return Path(cmdline[cmdline.index("hubbub.backplane.local_server") + 1]).parent


def broker_processes(proc: HubProcess) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.proc.pid).children(recursive=True)
            if "hubbub.backplane.local_server" in " ".join(p.cmdline())]


async def connections_per_worker(proc: HubProcess, total: int, headers=None) -> dict[int, int]:
    """{worker pid: connections} once both workers answered and they hold ``total`` in all."""
    seen: dict[int, int] = {}
    deadline = time.monotonic() + 10
    async with httpx.AsyncClient(timeout=5, headers={"connection": "close", **(headers or {})}) as client:
        while time.monotonic() < deadline:
            body = (await client.get(proc.base + "/healthz")).json()
            seen[body["worker"]] = body["connections"]
            if len(seen) == 2 and sum(seen.values()) == total:
                return seen
            await asyncio.sleep(0.02)
    raise AssertionError(f"both workers never answered with {total} connections: {seen}")


async def on_both_workers(proc: HubProcess, open_one, count: int) -> list:
    """At least ``count`` connections made by ``open_one(i)``, more until both workers
    hold some (SO_REUSEPORT spreads them at random)."""
    opened = []
    while True:
        while len(opened) < count:
            opened.append(await open_one(len(opened)))
        if all((await connections_per_worker(proc, len(opened))).values()):
            return opened
        assert count < 40, "every connection went to one worker"
        count += 2


async def post_each_new_connection(base: str, bodies: list[dict], headers=None) -> list:
    """POST /publish once per body, each on a new connection (so on either worker)."""
    async with httpx.AsyncClient(timeout=10, headers={"connection": "close"}) as client:
        responses = []
        for body in bodies:
            responses.append(await client.post(base + "/publish", json=body, headers=headers))
        return responses


async def test_two_workers_without_redis_are_one_hub(serve):
    proc = serve()
    (broker,) = broker_processes(proc)
    sockets = []
    try:
        async def subscriber(i: int):
            ws = await ws_connect(proc.url("native" if i % 2 else "asgi", "/ws", "ws"))
            sockets.append(ws)
            await subscribe(ws, "w.*")
            return ws

        await on_both_workers(proc, subscriber, 12)

        # Three concurrent publishers, a new connection per request: either worker publishes.
        async def publisher(n: int) -> list[str]:
            bodies = [{"topic": "w.t", "data": [n, i]} for i in range(20)]
            responses = await post_each_new_connection(proc.base, bodies)
            assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
            return [r.json()["ids"][0] for r in responses]

        acked = [i for ids in await asyncio.gather(*(publisher(n) for n in range(3))) for i in ids]
        in_order = sorted(acked, key=lambda i: int(i.rpartition("-")[2]))
        assert len(set(acked)) == 60 and len({i.rpartition("-")[0] for i in acked}) == 1
        first = None
        for ws in sockets:
            got = await read(ws, 60)
            assert_in_id_order_once(got)
            assert [m["id"] for m in got] == in_order, "every publication, once, in the one order"
            first = first or got
            assert [m["data"] for m in got] == [m["data"] for m in first]
    finally:
        for ws in sockets:
            await ws.close()

    for i in range(6):  # recovery with since=, whichever worker the reconnect lands on
        url = proc.url("native" if i % 2 else "asgi", f"/ws?topic=w.*&since={in_order[39]}", "ws")
        async with ws_connect(url) as ws:
            assert [m["id"] for m in await read(ws, 20)] == in_order[40:]
    assert broker.is_running()


async def test_an_idempotency_key_sent_to_both_workers_publishes_once(serve):
    proc = serve()
    async with ws_connect(proc.url("native", "/ws", "ws")) as ws:
        await subscribe(ws, "idem.t")
        bodies = {"topic": "idem.t", "data": "once"}
        async with httpx.AsyncClient(timeout=10, headers={"connection": "close"}) as client:
            first = await asyncio.gather(*(client.post(proc.base + "/publish", json=bodies,
                                                       headers={"idempotency-key": "k-1"})
                                           for _ in range(4)))
            # Retries, one after another on new connections: both workers replay the one id.
            retries = [await client.post(proc.base + "/publish", json=bodies,
                                         headers={"idempotency-key": "k-1"}) for _ in range(8)]
            workers = {(await client.get(proc.base + "/healthz")).json()["worker"] for _ in range(20)}
        responses = first + retries
        assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
        assert len({tuple(r.json()["ids"]) for r in responses}) == 1
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 11
        assert len(workers) == 2, "new connections reach both workers"
        (await post_each_new_connection(proc.base, [{"topic": "idem.t", "data": "next"}]))
        assert [m["data"] for m in await read(ws, 2)] == ["once", "next"]


async def test_presence_join_and_leave_cross_workers(serve):
    proc = serve(env=SECURED, dev=False)
    topic = "public.room.lw"
    watchers = []
    try:
        async def watcher(i: int):
            ws = await ws_connect(proc.url("native" if i % 2 else "asgi",
                                           f"/ws?token={token(f'watcher{i}')}", "ws"))
            watchers.append(ws)
            await subscribe(ws, topic, presence=True)
            return ws

        await on_both_workers(proc, watcher, 8)
        for i, ws in enumerate(watchers):  # the joins of the watchers that came after it
            await read(ws, len(watchers) - 1 - i, keep=("join",))
        alice = token("alice", info={"name": "Alice"})
        tabs = []
        for i in range(4):  # alice's tabs, on both ports
            tab = await ws_connect(proc.url("native" if i % 2 else "asgi", f"/ws?token={alice}", "ws"))
            await subscribe(tab, topic)
            tabs.append(tab)
        for ws in watchers:  # one join, on every worker, for her first tab only
            (join,) = await read(ws, 1, keep=("join",))
            assert join == {"op": "join", "topic": topic, "user": "alice", "info": {"name": "Alice"}}
        listing = httpx.get(proc.base + f"/presence/{topic}", headers=KEY, timeout=10).json()
        assert listing["count"] == len(watchers) + 1
        assert listing["connections"] == len(watchers) + 4
        for tab in tabs:
            await tab.close()
        for ws in watchers:
            (leave,) = await read(ws, 1, keep=("join", "leave"))
            assert leave == {"op": "leave", "topic": topic, "user": "alice", "info": {"name": "Alice"}}
    finally:
        for ws in watchers:
            await ws.close()


async def test_the_server_apis_disconnect_reaches_the_users_connections_on_both_workers(serve):
    proc = serve(env=SECURED, dev=False)
    alice = token("dis-alice")
    tabs = []

    async def tab(i: int):
        tabs.append(await ws_connect(proc.url("native" if i % 2 else "asgi", f"/ws?token={alice}", "ws")))
        return tabs[-1]

    try:
        await on_both_workers(proc, tab, 8)
        response = httpx.post(proc.base + "/disconnect", headers=KEY, timeout=10,
                              json={"user": "dis-alice", "code": 4001, "reason": "bye"})
        assert response.status_code == 200, response.text
        assert 0 < response.json()["closed"] < len(tabs)  # the answering worker's own
        for tab in tabs:
            assert await closed_with(tab) == (4001, "bye")
    finally:
        for tab in tabs:
            await tab.close()


async def test_sigterm_drains_and_leaves_nothing_running(serve):
    proc = serve()
    (broker,) = broker_processes(proc)
    folder = socket_folder(broker)
    assert folder.is_dir() and oct(folder.stat().st_mode & 0o777) == "0o700"
    async with ws_connect(proc.url("asgi", "/ws?topic=d.t", "ws")) as ws:
        proc.publish({"topic": "d.t", "data": "before"})
        assert [m["data"] for m in await read(ws, 1)] == ["before"]  # attached: the drain sees it
        proc.proc.send_signal(signal.SIGTERM)
        assert await closed_with(ws) == (1001, "hub shutting down")  # drained, not cut
    assert proc.proc.wait(15) == 0
    broker.wait(5)
    assert not broker.is_running()
    assert not folder.exists(), "the socket's folder is removed"


async def test_a_dead_broker_stops_serve_with_a_reason(serve):
    proc = serve()
    (broker,) = broker_processes(proc)
    workers = [p for p in psutil.Process(proc.proc.pid).children() if p.pid != broker.pid]
    assert len(workers) == 2
    broker.kill()
    assert proc.proc.wait(15) == 1
    assert "the local broker" in proc.output() and "cannot be one hub" in proc.output()
    for worker in workers:
        worker.wait(5)  # gone (reaped by serve), not left serving as a hub of its own
        assert not worker.is_running()


def test_one_worker_without_redis_starts_no_broker(serve):
    proc = serve(workers=1)
    assert broker_processes(proc) == []
    assert proc.publish({"topic": "one.t", "data": 1})[0].endswith("-1")


async def test_a_killed_serve_takes_its_broker_and_the_socket_with_it(serve):
    proc = serve()
    (broker,) = broker_processes(proc)
    workers = [p for p in psutil.Process(proc.proc.pid).children() if p.pid != broker.pid]
    folder = socket_folder(broker)
    try:
        proc.proc.kill()  # SIGKILL: serve cleans nothing up itself
        proc.proc.wait(5)
        broker.wait(5)  # it noticed its parent is gone
        assert not folder.exists(), "the broker removed its socket and folder on the way out"
    finally:
        for worker in workers:  # Granian's workers are not this feature's to reap
            if worker.is_running():
                worker.kill()


async def test_sigterm_to_the_whole_group_drains_and_the_broker_outlives_the_workers(serve):
    """systemd's KillMode=control-group, Ctrl-C: the broker gets the signal too, and
    ignores it, so the workers keep their hub until they are done draining."""
    proc = serve(env={"HUBBUB_DRAIN_GRACE": "1"})
    (broker,) = broker_processes(proc)
    async with ws_connect(proc.url("native", "/ws?topic=g.t", "ws")) as ws:
        proc.publish({"topic": "g.t", "data": "before"})
        assert [m["data"] for m in await read(ws, 1)] == ["before"]
        os.killpg(proc.proc.pid, signal.SIGTERM)
        await asyncio.sleep(0.3)  # in the grace: the workers still deliver, through the broker
        assert broker.is_running()
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.post(proc.base + "/publish", json={"topic": "g.t", "data": 1})
        assert response.status_code == 200, response.text  # the grace still publishes
        assert [m["data"] for m in await read(ws, 1)] == [1]
        assert await closed_with(ws) == (1001, "hub shutting down")
    assert proc.proc.wait(15) == 0
    broker.wait(5)


async def test_ws_client_publishes_on_either_worker_reach_subscribers_on_both(serve):
    proc = serve()
    listeners, publishers = [], []

    async def listener(i: int):
        ws = await ws_connect(proc.url("native" if i % 2 else "asgi", "/ws", "ws"))
        listeners.append(ws)
        await subscribe(ws, "chat.>")
        return ws

    try:
        await on_both_workers(proc, listener, 6)
        for i in range(4):  # each lands on either worker
            publishers.append(await ws_connect(proc.url("asgi" if i % 2 else "native", "/ws", "ws")))
        for n, ws in enumerate(publishers):
            for i in range(5):
                await ws.send(json.dumps({"op": "publish", "topic": "chat.room", "data": [n, i],
                                          "id": i}))
        acked = [a["event_id"] for ws in publishers for a in await read(ws, 5, keep=("ack",))]
        in_order = sorted(acked, key=lambda i: int(i.rpartition("-")[2]))
        for ws in listeners:
            got = await read(ws, 20)
            assert [m["id"] for m in got] == in_order
    finally:
        for ws in listeners + publishers:
            await ws.close()


async def test_a_stalled_broker_turns_both_workers_unready_and_publishes_503_in_time(serve):
    timeout = 1.0
    proc = serve(env={"HUBBUB_BACKPLANE_TIMEOUT": str(timeout)})
    (broker,) = broker_processes(proc)
    async with httpx.AsyncClient(timeout=10, headers={"connection": "close"}) as client:
        async def ready_answers(count: int = 10) -> set[int]:
            return {(await client.get(proc.base + "/readyz")).status_code for _ in range(count)}

        async with ws_connect(proc.url("native", "/ws?topic=st.t", "ws")) as ws:
            broker.suspend()  # SIGSTOP: its socket stays open and says nothing
            try:
                started = time.monotonic()
                response = await client.post(proc.base + "/publish", json={"topic": "st.t", "data": 0})
                assert response.status_code == 503 and "local broker" in response.json()["reason"], response.text
                assert time.monotonic() - started < timeout + 1.0  # bounded by the timeout
                deadline = time.monotonic() + timeout + 2.0
                while (answers := await ready_answers()) != {503}:  # every worker, not one
                    assert time.monotonic() < deadline, answers
            finally:
                broker.resume()
            deadline = time.monotonic() + timeout + 2.0
            while (answers := await ready_answers()) != {200}:
                assert time.monotonic() < deadline, answers
            await post_each_new_connection(proc.base, [{"topic": "st.t", "data": 1}])
            assert [m["data"] for m in await read(ws, 1)] == [1]  # the 503'd one never came


async def test_get_topics_counts_both_workers_subscribers_whichever_answers(serve):
    proc = serve(env={**SECURED, "HUBBUB_PRESENCE_TTL": "3"}, dev=False)  # snapshots every 1 s
    jwt = token("topics")
    sockets = []

    async def subscriber(i: int):
        topics = "topic=public.lt.x" + ("&topic=public.lt.y" if i % 3 == 0 else "")
        sockets.append(await ws_connect(proc.url("native" if i % 2 else "asgi",
                                                 f"/ws?token={jwt}&{topics}", "ws")))
        return sockets[-1]

    try:
        await on_both_workers(proc, subscriber, 6)
        expected = {"public.lt.x": len(sockets), "public.lt.y": len(range(0, len(sockets), 3))}
        deadline = time.monotonic() + 10
        agreed = 0
        async with httpx.AsyncClient(timeout=10, headers={"connection": "close", **KEY}) as client:
            while agreed < 10:  # ten answers in a row, from either worker, all the whole count
                response = await client.get(proc.base + "/topics", params={"prefix": "public.lt."})
                assert response.status_code == 200, response.text
                got = {t["topic"]: t["subscribers"] for t in response.json()["topics"]}
                agreed = agreed + 1 if got == expected else 0
                assert time.monotonic() < deadline, f"{got}, not {expected}"
    finally:
        for ws in sockets:
            await ws.close()

"""Presence and the inbox's live events across nodes (SPEC 13, issue 12): real
``hubbub serve`` processes, secured (JWT users), over the machine's Redis under
a key prefix of the test's own, and for the inbox one PostgreSQL schema shared
by the nodes (two SQLite files would be two inboxes).

Under CI=true a missing Redis or PostgreSQL fails with the reason; elsewhere
the test is skipped.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid

import httpx
import pytest

from .helpers_user import KEY, SECURED_ENV, bearer, postgres_schema, ws_next, ws_quiet
from .server import HubProcess, stop_all, ws_connect
from .tokens import token

PRESENCE_TTL = 3.0  # a killed node's users leave within it
PRESENCE_EVENTS = ("join", "leave")


@pytest.fixture
def fleet(tmp_path, shared):
    """Start secured nodes of one fleet (one by one); each stopped (or already killed) at the end."""
    url, prefix = shared
    started: list[HubProcess] = []

    def start(count: int, env: dict | None = None) -> list[HubProcess]:
        procs = []
        for _ in range(count):
            settings = {**SECURED_ENV, "HUBBUB_BACKPLANE": url, "HUBBUB_BACKPLANE_PREFIX": prefix,
                        "HUBBUB_PRESENCE_TTL": str(PRESENCE_TTL), **(env or {})}
            proc = HubProcess(dev=False, env=settings)  # retries on fresh ports if one was taken
            started.append(proc)
            procs.append(proc.start(tmp_path))
        return procs

    yield start
    stop_all(started)


def room() -> str:
    return "public.fleet" + uuid.uuid4().hex[:8]


async def subscribe(ws, topic: str, **options) -> None:
    await ws.send(json.dumps({"op": "subscribe", "topic": topic, "id": "sub", **options}))
    assert (await ws_next(ws, "ack"))["id"] == "sub"


async def next_about(ws, op: str, user: str, me: str) -> dict:
    """The next ``op`` event about ``user``, skipping others; never one about ``me``."""
    while True:
        message = await ws_next(ws, op)
        assert message["user"] != me, f"{me} was told of its own {op}"
        if message["user"] == user:
            return message


def members(proc: HubProcess, topic: str) -> dict:
    response = httpx.get(proc.base + f"/presence/{topic}", headers=KEY, timeout=10)
    assert response.status_code == 200, response.text
    answer = response.json()
    return {u["user"]: (u["connections"], u["info"]) for u in answer["users"]}


async def members_become(proc: HubProcess, topic: str, expected: dict, timeout: float = 5.0) -> None:
    """Presence changes reach Redis a round trip after the subscribe's ack: wait for them."""
    deadline = time.monotonic() + timeout
    while (seen := members(proc, topic)) != expected:
        assert time.monotonic() < deadline, f"presence of {topic} stayed {seen}, not {expected}"
        await asyncio.sleep(0.05)


async def test_presence_lists_every_node_and_joins_and_leaves_reach_every_node(fleet):
    a, b = fleet(2)
    topic = room()
    alice = token("alice", info={"name": "Alice"})
    async with ws_connect(b.url("native", f"/ws?token={token('watcher-b')}", "ws")) as on_b, \
            ws_connect(a.url("asgi", f"/ws?token={token('watcher-a')}", "ws")) as on_a:
        await subscribe(on_a, topic, presence=True)
        await subscribe(on_b, topic, presence=True)
        # watcher-b joined on b after on_a watched: a hears it. (Whether on_b hears
        # watcher-a's join depends on whether it arrived before on_b watched.)
        await next_about(on_a, "join", "watcher-b", me="watcher-a")

        tab1 = await ws_connect(a.url("native", f"/ws?token={alice}", "ws"))
        await subscribe(tab1, topic)
        join = {"op": "join", "topic": topic, "user": "alice", "info": {"name": "Alice"}}
        assert await next_about(on_b, "join", "alice", me="watcher-b") == join  # joined on a; b hears it
        assert await next_about(on_a, "join", "alice", me="watcher-a") == join

        tab2 = await ws_connect(b.url("asgi", f"/ws?token={alice}", "ws"))
        await subscribe(tab2, topic)
        await ws_quiet(on_b, 0.5, PRESENCE_EVENTS)  # a second tab, on another node, is no new join
        await ws_quiet(on_a, 0.1, PRESENCE_EVENTS)

        # Every node lists every node's users, connections summed.
        for proc in (a, b):
            await members_become(proc, topic, {"alice": (2, {"name": "Alice"}), "watcher-a": (1, None),
                                               "watcher-b": (1, None)})
        await on_a.send(json.dumps({"op": "presence", "topic": topic, "id": 9}))
        reply = await ws_next(on_a, "presence")
        assert reply["id"] == 9 and reply["count"] == 3 and reply["connections"] == 4

        await tab2.close()  # alice still has her tab on a: no leave anywhere
        await ws_quiet(on_a, 0.5, PRESENCE_EVENTS)
        await ws_quiet(on_b, 0.1, PRESENCE_EVENTS)
        await tab1.close()  # her last connection in the fleet
        leave = {"op": "leave", "topic": topic, "user": "alice", "info": {"name": "Alice"}}
        assert await ws_next(on_b, "leave") == leave
        assert await ws_next(on_a, "leave") == leave
        for proc in (a, b):
            assert "alice" not in members(proc, topic)


async def test_a_sigkilled_nodes_users_leave_on_the_others_within_presence_ttl(fleet):
    a, b = fleet(2)
    topic = room()
    async with ws_connect(b.url("native", f"/ws?token={token('watcher')}", "ws")) as watcher, \
            ws_connect(a.url("native", f"/ws?token={token('carol')}", "ws")) as carol, \
            ws_connect(a.url("native", f"/ws?token={token('dave')}", "ws")) as dave_on_a, \
            ws_connect(b.url("native", f"/ws?token={token('dave')}", "ws")) as dave_on_b:
        await subscribe(watcher, topic, presence=True)
        for ws in (carol, dave_on_a, dave_on_b):
            await subscribe(ws, topic)
        joined = {(await ws_next(watcher, "join"))["user"] for _ in range(2)}
        assert joined == {"carol", "dave"}
        await members_become(b, topic, {"carol": (1, None), "dave": (2, None), "watcher": (1, None)})

        os.killpg(a.proc.pid, signal.SIGKILL)  # no goodbye
        killed = time.monotonic()
        leave = await ws_next(watcher, "leave", timeout=PRESENCE_TTL + 3)
        took = time.monotonic() - killed
        assert leave == {"op": "leave", "topic": topic, "user": "carol", "info": None}
        # Within PRESENCE_TTL, plus a little for a busy machine's scheduling.
        assert took < PRESENCE_TTL + 1.0, f"the leave came {took:.2f}s after the kill"
        await ws_quiet(watcher, 1.0, PRESENCE_EVENTS)  # dave still has a connection on b: no leave for him
        assert members(b, topic) == {"dave": (1, None), "watcher": (1, None)}


async def test_a_notification_made_on_one_node_reaches_the_users_tabs_on_every_node(fleet):
    with postgres_schema() as store:
        a, b = fleet(2, env={"HUBBUB_STORE": store})
        user = "fleet-" + uuid.uuid4().hex[:6]
        alice = token(user)
        async with ws_connect(b.url("native", f"/ws?token={alice}", "ws")) as on_b, \
                ws_connect(a.url("asgi", f"/ws?token={alice}", "ws")) as on_a, \
                ws_connect(b.url("native", f"/ws?token={token('bystander')}", "ws")) as bystander:
            for ws in (on_a, on_b, bystander):
                assert (await ws_next(ws, "unread_count"))["data"] == {"count": 0}  # on connect

            created = httpx.post(a.base + "/notifications", headers=KEY, timeout=10,
                                 json={"user": user, "title": "Payment", "message": "Received"})
            assert created.status_code == 201, created.text
            record = created.json()
            for ws in (on_b, on_a):  # the other node's tab as well as this node's
                assert (await ws_next(ws, "notification"))["data"] == record
                assert (await ws_next(ws, "unread_count"))["data"] == {"count": 1}

            listing = httpx.get(b.base + "/notifications", headers=bearer(alice), timeout=10).json()
            assert [n["id"] for n in listing["notifications"]] == [record["id"]]
            assert listing["unread_count"] == 1

            # A change made on b reaches the tab on a, in order.
            read = httpx.post(b.base + f"/notifications/{record['id']}/read", headers=bearer(alice),
                              timeout=10)
            assert read.status_code == 200
            assert (await ws_next(on_a, "unread_count"))["data"] == {"count": 0}
            gone = httpx.delete(b.base + f"/notifications/{record['id']}", headers=bearer(alice),
                                timeout=10)
            assert gone.status_code == 200
            assert (await ws_next(on_a, "notification_deleted"))["data"] == {"id": record["id"]}
            assert (await ws_next(on_a, "unread_count"))["data"] == {"count": 0}
            await ws_quiet(bystander, 0.5)  # another user's connections heard nothing

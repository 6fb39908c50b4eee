"""Presence (SPEC 6, 10), typing and read receipts, and the --dev auth upgrade,
through the real server on both ports."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import websockets

from .helpers_user import KEY, SECURED_ENV, SSEReader, bearer, ws_next, ws_quiet
from .server import HubProcess, ws_connect, ws_messages
from .tokens import token

PRESENCE_TTL = 3.0


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    process = HubProcess(dev=False, env={**SECURED_ENV, "HUBBUB_PRESENCE_TTL": str(PRESENCE_TTL)})
    process.start(tmp_path_factory.mktemp("presence"))
    yield process
    process.stop()


def room() -> str:
    return "public.room" + uuid.uuid4().hex[:8]


def presence(hub, topic: str, headers=KEY) -> httpx.Response:
    return httpx.get(hub.base + f"/presence/{topic}", headers=headers, timeout=10)


async def subscribe(ws, topic: str, **options) -> None:
    await ws.send(json.dumps({"op": "subscribe", "topic": topic, "id": "sub", **options}))
    assert (await ws_next(ws, "ack"))["id"] == "sub"


async def test_tabs_of_one_user_are_one_entry_and_events_go_to_askers_only(secured, port_kind):
    hub, topic = secured, room()
    alice = token("alice", info={"name": "Alice"})
    async with httpx.AsyncClient(timeout=30) as client:
        async with ws_connect(hub.url(port_kind, f"/ws?token={token('watcher')}", "ws")) as watcher, \
                ws_connect(hub.url(port_kind, f"/ws?token={token('quiet')}", "ws")) as quiet, \
                SSEReader(client, hub.url(port_kind, f"/sse?topic={topic}&presence=1"
                                                     f"&token={token('sse-watcher')}")) as sse_watcher:
            await subscribe(watcher, topic, presence=True)  # after sse-watcher joined: no event
            await subscribe(quiet, topic)  # present, but asked for no events
            assert (await ws_next(watcher, "join"))["user"] == "quiet"
            assert (await sse_watcher.next("join"))[1]["user"] == "watcher"
            assert (await sse_watcher.next("join"))[1]["user"] == "quiet"

            tab1 = await ws_connect(hub.url(port_kind, f"/ws?token={alice}", "ws"))
            await subscribe(tab1, topic)
            join = {"op": "join", "topic": topic, "user": "alice", "info": {"name": "Alice"}}
            assert await ws_next(watcher, "join") == join
            assert await sse_watcher.next("join") == ("join", {k: v for k, v in join.items() if k != "op"})
            tab2 = SSEReader(client, hub.url(port_kind, f"/sse?topic={topic}&token={alice}"))
            await tab2.__aenter__()
            await tab2.next("connected")
            await ws_quiet(watcher, 0.5)  # a second tab is no new join

            answer = presence(hub, topic).json()
            assert answer["topic"] == topic and answer["count"] == 4 and answer["connections"] == 5
            entry = next(u for u in answer["users"] if u["user"] == "alice")
            assert entry == {"user": "alice", "info": {"name": "Alice"}, "connections": 2}
            await watcher.send(json.dumps({"op": "presence", "topic": topic, "id": 7}))
            reply = await ws_next(watcher, "presence")
            assert reply["id"] == 7 and sorted(u["user"] for u in reply["users"]) == \
                sorted(u["user"] for u in answer["users"])

            await tab1.close()
            await ws_quiet(watcher, 0.5)  # alice still has a tab: no leave
            await tab2.__aexit__()
            leave = await ws_next(watcher, "leave")
            assert leave == {"op": "leave", "topic": topic, "user": "alice", "info": {"name": "Alice"}}
            assert (await sse_watcher.next("leave"))[1]["user"] == "alice"
            await ws_quiet(quiet, 0.3)  # never asked: never told
            assert "alice" not in [u["user"] for u in presence(hub, topic).json()["users"]]

            await watcher.send(json.dumps({"op": "unsubscribe", "topic": topic}))
            await ws_next(watcher, "ack")
    assert presence(hub, topic).json() == {"topic": topic, "count": 0, "connections": 0, "users": []}


def test_presence_endpoint_auth_rules(secured):
    hub, topic = secured, room()
    assert presence(hub, topic).status_code == 200  # API key
    assert presence(hub, topic, bearer(token("someone"))).status_code == 200  # may subscribe to public.>
    refused = presence(hub, "private.board", bearer(token("someone")))
    assert refused.status_code == 403 and "private.board" in refused.json()["reason"]
    granted = presence(hub, "private.board", bearer(token("someone", subscribe=["private.>"])))
    assert granted.status_code == 200
    assert presence(hub, topic, headers={}).status_code == 401
    assert presence(hub, topic, bearer("not-a-token")).status_code == 401
    assert presence(hub, "a..b").status_code == 400
    assert httpx.post(hub.base + f"/presence/{topic}", headers=KEY, timeout=10).status_code == 405


async def test_presence_op_is_checked_like_a_subscribe(secured, port_kind):
    async with ws_connect(secured.url(port_kind, f"/ws?token={token('op-user')}", "ws")) as ws:
        for frame, code in [({"op": "presence", "topic": "private.x", "id": 1}, 403),
                            ({"op": "presence", "id": 2}, 400),
                            ({"op": "presence", "topic": "a..b", "id": 3}, 400),
                            ({"op": "subscribe", "topic": "public.x", "presence": "yes", "id": 4}, 400)]:
            await ws.send(json.dumps(frame))
            error = await ws_next(ws, "error")
            assert error["code"] == code and error["id"] == frame["id"]


async def test_big_topics_answer_counts_only(make_hub, port_kind):
    hub = make_hub(env={**SECURED_ENV, "HUBBUB_PRESENCE_MAX_LIST": "1"}, dev=False)
    topic = room()
    async with ws_connect(hub.url(port_kind, f"/ws?token={token('u1')}&topic={topic}", "ws")) as one:
        await ws_next(one, "unread_count")
        assert presence(hub, topic).json()["users"] == [{"user": "u1", "info": None, "connections": 1}]
        async with ws_connect(hub.url(port_kind, f"/ws?token={token('u2')}&topic={topic}", "ws")) as two:
            await ws_next(two, "unread_count")
            answer = presence(hub, topic).json()
            assert answer == {"topic": topic, "count": 2, "connections": 2}
            await one.send(json.dumps({"op": "presence", "topic": topic}))
            reply = await ws_next(one, "presence")
            assert reply["count"] == 2 and "users" not in reply


CLIENT = """
import asyncio, json, sys, websockets
async def main(url, topic, answer_pings):
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": topic}))
        ready = not answer_pings
        while True:
            if ready:
                print("ready", flush=True)
                ready = None
            for line in (await ws.recv()).split("\\n"):
                if json.loads(line).get("op") == "ping":
                    await ws.send('{"op":"pong"}')
                    ready = ready if ready is None else True
asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "1"))
"""


async def leaves_within_ttl_once_frozen(watcher, user: str, script: str, *args: str) -> None:
    """Run a client process (``script`` with ``args``) as ``user``, freeze it
    (SIGSTOP) once it prints "ready", and check that ``watcher`` saw ``user``
    join and then leave presence within PRESENCE_TTL of the freeze."""
    client = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                              env=os.environ.copy())
    try:
        line = await asyncio.wait_for(asyncio.to_thread(client.stdout.readline), 15)
        assert line.strip() == b"ready"
        client.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        assert (await ws_next(watcher, "join", timeout=5))["user"] == user
        leave = await ws_next(watcher, "leave", timeout=PRESENCE_TTL + 5)
        elapsed = time.monotonic() - frozen_at
        assert leave["user"] == user
        assert elapsed <= PRESENCE_TTL + 0.5, f"left after {elapsed:.1f} s"
    finally:
        client.kill()  # SIGKILL ends a stopped process too
        client.wait(5)


async def test_a_client_that_vanishes_without_a_close_leaves_within_presence_ttl(secured, port_kind):
    """A client process frozen (SIGSTOP) answers neither protocol pings (fast
    port) nor the hub's app-level pings (ASGI): it is closed, and leaves
    presence, within PRESENCE_TTL."""
    hub, topic = secured, room()
    async with ws_connect(hub.url(port_kind, f"/ws?token={token('ttl-watcher')}", "ws")) as watcher:
        await subscribe(watcher, topic, presence=True)
        # The ASGI port only judges clients that speak pong: this one answers a ping first.
        answer_pings = "1" if port_kind == "asgi" else "0"
        await leaves_within_ttl_once_frozen(
            watcher, "ttl-ghost", CLIENT, hub.url(port_kind, f"/ws?token={token('ttl-ghost')}", "ws"),
            topic, answer_pings)


HUBBUB_CLIENT = """
import asyncio, sys
from hubbub.client import connect
async def main(url, topic):
    client = connect(url, topics=[topic], reconnect=False)
    await client.start()  # subscribed, and has said that it answers pings
    print("ready", flush=True)
    async for _ in client:
        pass
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_a_frozen_python_client_leaves_within_presence_ttl(secured, port_kind):
    """The Python client, its process frozen (SIGSTOP) right after it connected,
    before any hub ping: it is closed, and leaves presence, within PRESENCE_TTL
    on both ports (ASGI: it said at connect that it speaks pong; fast port:
    protocol pings)."""
    hub, topic = secured, room()
    async with ws_connect(hub.url(port_kind, f"/ws?token={token('frozen-watcher')}", "ws")) as watcher:
        await subscribe(watcher, topic, presence=True)
        await leaves_within_ttl_once_frozen(
            watcher, "frozen", HUBBUB_CLIENT, hub.url(port_kind, f"/ws?token={token('frozen')}", "ws"), topic)


class Reader:
    """Reads a WebSocket in the background as a listening client does,
    answering the hub's {"op":"ping"} only when ``answers`` says so."""

    def __init__(self, ws, answers: bool) -> None:
        self.ws, self.answers, self.ops = ws, answers, []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for frame in self.ws:
            for line in frame.split("\n"):
                message = json.loads(line)
                self.ops.append(message.get("op"))
                if message.get("op") == "ping" and self.answers:
                    await self.ws.send('{"op":"pong"}')

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_a_healthy_bare_client_stays_connected_past_several_ttls(secured):
    """A `websockets` client with its defaults answers protocol pings by itself
    and knows nothing of {"op":"ping"}: a live listener, which neither port
    may drop, though the ASGI port cannot see its pongs."""
    hub, topic = secured, room()
    async with ws_connect(hub.url("native", f"/ws?token={token('bare-watcher')}", "ws")) as watcher, \
            ws_connect(hub.url("asgi", f"/ws?token={token('bare-asgi')}", "ws")) as on_asgi, \
            ws_connect(hub.url("native", f"/ws?token={token('bare-native')}", "ws")) as on_native:
        await subscribe(watcher, topic, presence=True)
        for ws in (on_asgi, on_native):
            await subscribe(ws, topic)
        readers = [Reader(watcher, answers=True), Reader(on_asgi, answers=False),
                   Reader(on_native, answers=False)]
        try:
            await asyncio.sleep(3 * PRESENCE_TTL + 1)
            assert sorted(u["user"] for u in presence(hub, topic).json()["users"]) == \
                ["bare-asgi", "bare-native", "bare-watcher"]
            [event_id] = hub.publish({"topic": topic, "data": "still here"}, headers=KEY)
            async with asyncio.timeout(5):
                while any(reader.ops.count("message") < 1 for reader in readers[1:]):
                    await asyncio.sleep(0.05)
            assert "leave" not in readers[0].ops
            assert readers[1].ops.count("ping") >= 3, "the ASGI port pinged it and got no answer"
            assert on_asgi.close_code is None and on_native.close_code is None
        finally:
            for reader in readers:
                await reader.stop()


async def test_asgi_port_closes_4410_no_pong_when_pongs_stop(secured):
    """SPEC 10: a client that speaks pong and then stops answering (still
    reading) gets a close frame 4410 "no pong" within PRESENCE_TTL, not a cut."""
    hub = secured
    async with ws_connect(hub.url("asgi", f"/ws?token={token('stops-ponging')}", "ws")) as ws:
        await ws.send('{"op":"pong"}')  # as hubbub.js and the Python client do at connect
        silent_from = time.monotonic()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(PRESENCE_TTL + 2):
                while True:
                    await ws.recv()  # reads, never answers
        elapsed = time.monotonic() - silent_from
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4410, "no pong")
    assert elapsed <= PRESENCE_TTL + 0.5, f"closed after {elapsed:.1f} s"


async def test_typing_and_read_receipts_are_ephemeral_publishes(secured, port_kind):
    hub, topic = secured, room()
    writer = token("typer", publish=["public.>"])
    async with ws_connect(hub.url(port_kind, f"/ws?token={writer}", "ws")) as alice, \
            ws_connect(hub.url(port_kind, f"/ws?token={token('reader')}&topic={topic}", "ws")) as bob:
        await ws_next(bob, "unread_count")
        [before] = hub.publish({"topic": topic, "data": "hello"}, headers=KEY)
        assert (await ws_next(bob, "message"))["id"] == before
        for i, (event, data) in enumerate([("typing", {"typing": True}), ("read", {"up_to": before})]):
            await alice.send(json.dumps({"op": "publish", "topic": topic, "event": event, "data": data,
                                         "ephemeral": True, "id": i}))
            ack = await ws_next(alice, "ack")
            assert ack == {"op": "ack", "id": i, "event_id": None}
            message = await ws_next(bob, "message")
            assert message["event"] == event and message["data"] == data and message["id"] is None
        # Not kept: a client resuming from before them recovers nothing.
        answer = httpx.get(hub.base + f"/poll?topic={topic}&since={before}&timeout=0&token={token('late')}",
                           timeout=10).json()
        assert answer["messages"] == [] and answer["last_id"] == before
        # The publish ACL applies: no claim, no typing.
        async with ws_connect(hub.url(port_kind, f"/ws?token={token('mute')}", "ws")) as mute:
            await mute.send(json.dumps({"op": "publish", "topic": topic, "event": "typing", "data": {},
                                        "ephemeral": True, "id": 9}))
            assert (await ws_next(mute, "error"))["code"] == 403


async def test_dev_auth_frame_upgrades_an_anonymous_connection(make_hub, port_kind):
    hub = make_hub(env={**SECURED_ENV, "HUBBUB_MAX_CONNECTIONS_PER_USER": "1"}, dev=True)
    topic = room()
    async with ws_connect(hub.url(port_kind, f"/ws?topic={topic}&topic=private.y", "ws")) as ws:
        assert presence(hub, topic).json()["count"] == 0  # anonymous: not present
        await ws.send(json.dumps({"op": "auth", "token": token("dev-user", info={"n": 1}), "id": 1}))
        replies = await ws_messages(ws, 3, skip=())
        assert replies[0] == {"op": "ack", "id": 1}
        assert replies[1]["op"] == "error" and replies[1]["code"] == 403 and "private.y" in replies[1]["reason"]
        assert replies[2] == {"op": "unread_count", "data": {"count": 0}}
        assert presence(hub, topic).json()["users"] == [{"user": "dev-user", "info": {"n": 1}, "connections": 1}]
        [event_id] = hub.publish({"topic": topic, "data": "still subscribed"}, headers=KEY)
        assert (await ws_next(ws, "message"))["id"] == event_id
        await ws.send(json.dumps({"op": "auth", "token": token("dev-user"), "id": 2}))
        assert (await ws_next(ws, "error"))["reason"] == "already authenticated"
        # The per-user cap holds for an upgrade too; the refused one stays anonymous and open.
        async with ws_connect(hub.url(port_kind, f"/ws?topic={topic}", "ws")) as other:
            await other.send(json.dumps({"op": "auth", "token": token("dev-user"), "id": 3}))
            error = await ws_next(other, "error")
            assert error["code"] == 429 and error["id"] == 3
            await other.send(json.dumps({"op": "ping", "id": 4}))
            assert (await ws_next(other, "pong"))["id"] == 4

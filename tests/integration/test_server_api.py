"""The server API (SPEC 10, issue 22) through a real secured ``hubbub serve``:
``POST /disconnect``, ``POST /unsubscribe``, ``GET /history/{topic}``,
``GET /topics``, with a user's connections on both ports (WS and SSE on PORT
and FAST_PORT, a waiting poll on PORT). Across nodes: test_server_api_fleet.py.
"""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from .helpers_user import KEY, SECURED_ENV, SSEReader, ws_next
from .server import HubProcess, ws_connect
from .tokens import token

PORTS = ("asgi", "native")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = HubProcess(env=SECURED_ENV, dev=False).start(tmp_path_factory.mktemp("server-api"))
    yield process
    process.stop()


def api(hub: HubProcess, method: str, path: str, body=None, headers=KEY) -> httpx.Response:
    return httpx.request(method, hub.base + path, json=body, headers=headers, timeout=10)


async def wait_for_connections(hub: HubProcess, count: int, timeout: float = 5.0) -> None:
    """Until the hub holds ``count`` connections (a stream is attached a moment after it opens)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            stats = (await client.get(hub.base + "/healthz", timeout=5)).json()
            if stats["connections"] >= count:
                return
            assert time.monotonic() < deadline, f"{stats['connections']} connections, not {count}"
            await asyncio.sleep(0.05)


async def closed_with(ws) -> tuple[int, str]:
    """The close code and reason the hub sent (pings answered meanwhile)."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(5):
            while True:
                for line in (await ws.recv()).split("\n"):
                    if json.loads(line).get("op") == "ping":
                        await ws.send('{"op":"pong"}')
    assert closed.value.rcvd is not None, "cut without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def sse_ends_after(sse: SSEReader, event: str) -> object:
    """The data of ``event``, then the end of the stream."""
    _, data = await sse.next(event)
    async with asyncio.timeout(5):
        await sse._task  # the reader returns when the hub ends the stream
    return data


# -- POST /disconnect ------------------------------------------------------------------
async def test_disconnect_closes_every_connection_of_the_user_on_both_ports(hub):
    alice, bob = token("dis-alice"), token("dis-bob")
    before = hub.stats()["connections"]
    async with httpx.AsyncClient(timeout=10) as client, \
            ws_connect(hub.url("asgi", f"/ws?token={alice}", "ws")) as ws_asgi, \
            ws_connect(hub.url("native", f"/ws?token={alice}", "ws")) as ws_native, \
            ws_connect(hub.url("asgi", f"/ws?token={bob}", "ws")) as bystander, \
            SSEReader(client, hub.url("asgi", f"/sse?topic=public.dis&token={alice}")) as sse_asgi, \
            SSEReader(client, hub.url("native", f"/sse?topic=public.dis&token={alice}")) as sse_native:
        poll = asyncio.ensure_future(client.get(hub.url("asgi", f"/poll?topic=public.dis&timeout=20"
                                                                 f"&token={alice}")))
        await wait_for_connections(hub, before + 6)
        response = api(hub, "POST", "/disconnect", {"user": "dis-alice", "code": 4411, "reason": "banned ✋"})
        assert response.status_code == 200, response.text
        assert response.json() == {"closed": 5}
        assert await closed_with(ws_asgi) == (4411, "banned ✋")
        assert await closed_with(ws_native) == (4411, "banned ✋")
        for sse in (sse_asgi, sse_native):
            assert await sse_ends_after(sse, "disconnect") == {"code": 4411, "reason": "banned ✋"}
        answer = await asyncio.wait_for(poll, 5)
        assert answer.status_code == 410
        assert answer.json() == {"code": 410, "reason": "banned ✋",
                                 "disconnect": {"code": 4411, "reason": "banned ✋"}}
        # Another user's connection is untouched.
        await bystander.send(json.dumps({"op": "subscribe", "topic": "public.still", "id": "s"}))
        assert (await ws_next(bystander, "ack"))["id"] == "s"


async def test_disconnect_defaults_to_4403_and_counts_nobody_when_the_user_has_no_connection(hub):
    async with ws_connect(hub.url("native", f"/ws?token={token('dis-default')}", "ws")) as ws:
        await wait_for_connections(hub, 1)
        assert api(hub, "POST", "/disconnect", {"user": "dis-default"}).json() == {"closed": 1}
        assert await closed_with(ws) == (4403, "")
    assert api(hub, "POST", "/disconnect", {"user": "nobody-here"}).json() == {"closed": 0}


@pytest.mark.parametrize("body, field", [
    ({}, "'user'"),
    ({"user": ""}, "'user'"),
    ({"user": 7}, "'user'"),
    ({"user": "a", "code": 1000}, "'code'"),
    ({"user": "a", "code": 5000}, "'code'"),
    ({"user": "a", "code": "4403"}, "'code'"),
    ({"user": "a", "code": True}, "'code'"),
    ({"user": "a", "reason": 3}, "'reason'"),
    ({"user": "a", "reason": "é" * 61}, "'reason'"),  # 122 bytes
    ({"user": "a", "why": "x"}, "why"),
])
def test_disconnect_refuses_invalid_input_naming_the_field(hub, body, field):
    response = api(hub, "POST", "/disconnect", body)
    assert response.status_code == 400 and field in response.json()["reason"], response.text


# -- POST /unsubscribe -----------------------------------------------------------------
async def test_unsubscribe_stops_a_topic_for_every_connection_of_the_user_on_both_ports(hub):
    alice = token("uns-alice")
    topics = "topic=public.uns.room&topic=public.uns.other"
    before = hub.stats()["connections"]
    async with httpx.AsyncClient(timeout=10) as client, \
            ws_connect(hub.url("asgi", f"/ws?token={alice}&{topics}", "ws")) as ws_asgi, \
            ws_connect(hub.url("native", f"/ws?token={alice}&{topics}", "ws")) as ws_native, \
            SSEReader(client, hub.url("asgi", f"/sse?{topics}&token={alice}")) as sse_asgi, \
            SSEReader(client, hub.url("native", f"/sse?{topics}&token={alice}")) as sse_native:
        await wait_for_connections(hub, before + 4)
        response = api(hub, "POST", "/unsubscribe", {"user": "uns-alice", "topic": "public.uns.room"})
        assert response.status_code == 200, response.text
        assert response.json() == {"unsubscribed": 4}
        for ws in (ws_asgi, ws_native):
            assert (await ws_next(ws, "unsubscribed"))["topic"] == "public.uns.room"
        for sse in (sse_asgi, sse_native):
            assert (await sse.next("unsubscribed"))[1] == {"topic": "public.uns.room"}
        # The dropped topic no longer arrives; the other one still does.
        hub.publish({"topic": "public.uns.room", "data": "gone"},
                    {"topic": "public.uns.other", "data": "kept"}, headers=KEY)
        for ws in (ws_asgi, ws_native):
            assert (await ws_next(ws, "message"))["data"] == "kept"
        for sse in (sse_asgi, sse_native):
            assert (await sse.next("message"))[1]["data"] == "kept"
        # Again: nobody has it any more.
        again = api(hub, "POST", "/unsubscribe", {"user": "uns-alice", "topic": "public.uns.room"})
        assert again.json() == {"unsubscribed": 0}


@pytest.mark.parametrize("body, field", [
    ({"topic": "public.x"}, "'user'"),
    ({"user": "a"}, "'topic'"),
    ({"user": "a", "topic": "public..x"}, "'topic'"),
    ({"user": "a", "topic": 5}, "'topic'"),
    ({"user": "a", "topic": "public.x", "code": 4000}, "code"),
])
def test_unsubscribe_refuses_invalid_input_naming_the_field(hub, body, field):
    response = api(hub, "POST", "/unsubscribe", body)
    assert response.status_code == 400 and field in response.json()["reason"], response.text


def test_not_json_is_a_400(hub):
    response = httpx.post(hub.base + "/disconnect", content=b"{nope", headers=KEY, timeout=10)
    assert response.status_code == 400 and "JSON" in response.json()["reason"]


# -- GET /history/{topic} --------------------------------------------------------------
def test_history_pages_a_topic_oldest_first_with_a_position(hub):
    ids = hub.publish(*({"topic": "public.hist.a", "data": n} for n in range(3)), headers=KEY)
    other = hub.publish({"topic": "public.hist.b", "data": "other"}, headers=KEY)
    whole = api(hub, "GET", "/history/public.hist.a").json()
    assert [m["data"] for m in whole["messages"]] == [0, 1, 2]
    assert [m["id"] for m in whole["messages"]] == ids
    assert all(m["topic"] == "public.hist.a" for m in whole["messages"])
    assert whole["more"] is False and "reset" not in whole
    assert whole["position"] == other[0]  # the hub's newest id: a live resume needs nothing before it
    after = api(hub, "GET", f"/history/public.hist.a?since={ids[0]}").json()
    assert [m["data"] for m in after["messages"]] == [1, 2]
    page = api(hub, "GET", f"/history/public.hist.a?since={ids[0]}&limit=1").json()
    assert [m["data"] for m in page["messages"]] == [1]
    assert page["more"] is True and page["position"] == ids[1]  # the next page's since=
    newest_two = api(hub, "GET", "/history/public.hist.a?limit=2").json()
    assert [m["data"] for m in newest_two["messages"]] == [1, 2]
    assert api(hub, "GET", "/history/public.hist.none").json()["messages"] == []


def test_history_since_an_id_it_cannot_cover_is_a_reset(hub):
    hub.publish({"topic": "public.hist.reset", "data": 1}, headers=KEY)
    answer = api(hub, "GET", "/history/public.hist.reset?since=otherepoch-5").json()
    assert answer["messages"] == [] and answer["reset"] == {"reason": "history_gap"}
    assert answer["position"]


@pytest.mark.parametrize("path, field", [
    ("/history/public.x?limit=0", "'limit'"),
    ("/history/public.x?limit=1001", "'limit'"),
    ("/history/public.x?limit=ten", "'limit'"),
    ("/history/public.x?limit=1&limit=2", "'limit'"),
    ("/history/public.*", "topic"),
    ("/history/public..x", "topic"),
])
def test_history_refuses_invalid_input_naming_the_field(hub, path, field):
    response = api(hub, "GET", path)
    assert response.status_code == 400 and field in response.json()["reason"], response.text


# -- GET /topics -----------------------------------------------------------------------
async def test_topics_lists_subscribed_patterns_with_counts(hub):
    one, two = token("top-1"), token("top-2")
    before = hub.stats()["connections"]
    async with ws_connect(hub.url("asgi", f"/ws?token={one}&topic=public.top.a&topic=public.top.b", "ws")), \
            ws_connect(hub.url("native", f"/ws?token={two}&topic=public.top.a", "ws")):
        await wait_for_connections(hub, before + 2)
        answer = api(hub, "GET", "/topics?prefix=public.top.").json()
        assert answer == {"topics": [{"topic": "public.top.a", "subscribers": 2},
                                     {"topic": "public.top.b", "subscribers": 1}]}
        everything = api(hub, "GET", "/topics").json()["topics"]
        assert {"topic": "public.top.a", "subscribers": 2} in everything


# -- the API key, and methods ----------------------------------------------------------
@pytest.mark.parametrize("method, path", [
    ("POST", "/disconnect"), ("POST", "/unsubscribe"), ("GET", "/history/public.x"), ("GET", "/topics"),
])
def test_every_server_api_endpoint_needs_the_api_key(hub, method, path):
    body = {"user": "a", "topic": "public.x"} if method == "POST" else None
    assert api(hub, method, path, body, headers={}).status_code == 401
    wrong = api(hub, method, path, body, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    user = api(hub, method, path, body, headers={"Authorization": f"Bearer {token('a')}"})
    assert user.status_code == 401  # a user's token is not the API key


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/disconnect", "POST"), ("GET", "/unsubscribe", "POST"), ("POST", "/topics", "GET"),
    ("DELETE", "/history/public.x", "GET"),
])
def test_wrong_methods_are_405_with_allow(hub, method, path, allow):
    response = api(hub, method, path)
    assert response.status_code == 405 and response.headers["allow"] == allow

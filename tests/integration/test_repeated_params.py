"""A single-valued query parameter given twice is a 400 naming it, through a
real ``hubbub serve``, on every endpoint that reads one and on both ports:
which value was meant would be a guess (and a proxy or a cache in front of
the hub may guess otherwise). ``topic`` takes several. A WebSocket handshake
is refused its usual way: an ``error`` frame (400), then close 1008.

Every socket is on loopback; every wait is bounded.
"""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from .helpers_user import SECURED_ENV, bearer
from .server import HubProcess, ws_connect, ws_until
from .tokens import API_KEY, token

USER = "rp-user"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    process = HubProcess(dev=False, env=SECURED_ENV).start(tmp_path_factory.mktemp("repeated"))
    yield process
    process.stop()


def repeated(name: str, times: int = 2) -> str:
    return f"'{name}' given {times} times; it takes one value"


def assert_refused(response: httpx.Response, name: str, times: int = 2) -> None:
    assert response.status_code == 400, response.text
    assert response.json() == {"code": 400, "reason": repeated(name, times)}


@pytest.mark.parametrize("query, name", [
    ("limit=5&limit=abc", "limit"),
    ("limit=5&limit=5", "limit"),  # even the same value twice: one rule, no guessing
    ("before=9&before=8", "before"),
    ("unread=1&unread=0", "unread"),
])
def test_notifications_listing(secured, query, name):
    response = httpx.get(secured.base + f"/notifications?{query}", headers=bearer(token(USER)), timeout=10)
    assert_refused(response, name)


def test_a_token_given_twice_is_refused_not_guessed(secured):
    jwt = token(USER)
    for path in ("/notifications", "/notifications/read-all", "/presence/public.x"):
        method = "POST" if path.endswith("read-all") else "GET"
        assert_refused(httpx.request(method, secured.base + f"{path}?token={jwt}&token={jwt}", timeout=10),
                       "token")


def test_three_times_says_three(secured):
    response = httpx.get(secured.base + "/notifications?limit=1&limit=2&limit=3",
                         headers=bearer(token(USER)), timeout=10)
    assert_refused(response, "limit", 3)


def test_dashboard_key(secured):
    response = httpx.get(secured.base + f"/dashboard?key={API_KEY}&key={API_KEY}", timeout=10)
    assert_refused(response, "key")
    assert httpx.get(secured.base + f"/dashboard?key={API_KEY}", timeout=10).status_code == 200


STREAM_PARAMS = [("since", "since=1&since=2"), ("filter", "filter=a%3D1&filter=a%3D2"),
                 ("presence", "presence=1&presence=1")]


@pytest.mark.parametrize("name, query", [*STREAM_PARAMS, ("token", "token={jwt}&token={jwt}")])
def test_sse_on_both_ports(secured, name, query):
    jwt = token(USER)
    query = query.format(jwt=jwt)
    auth = {} if name == "token" else bearer(jwt)
    answers = {kind: httpx.get(secured.url(kind, f"/sse?topic=public.a&{query}"), headers=auth, timeout=10)
               for kind in ("asgi", "native")}
    for kind, response in answers.items():
        assert_refused(response, name)
    assert answers["asgi"].content == answers["native"].content


@pytest.mark.parametrize("name, query", [*STREAM_PARAMS, ("timeout", "timeout=0&timeout=1"),
                                         ("token", "token={jwt}&token={jwt}")])
def test_poll(secured, name, query):
    jwt = token(USER)
    query = query.format(jwt=jwt)
    auth = {} if name == "token" else bearer(jwt)
    if name != "timeout":
        query += "&timeout=0"  # answered at once, were it not refused
    assert_refused(httpx.get(secured.base + f"/poll?topic=public.a&{query}", headers=auth, timeout=10), name)


@pytest.mark.parametrize("name, query", [*STREAM_PARAMS, ("token", "token={jwt}&token={jwt}")])
async def test_websocket_handshake_on_both_ports(secured, port_kind, name, query):
    jwt = token(USER)
    query = query.format(jwt=jwt)
    if name != "token":
        query += f"&token={jwt}"
    async with ws_connect(secured.url(port_kind, f"/ws?topic=public.a&{query}", "ws")) as ws:
        async with asyncio.timeout(5):
            frame = await ws.recv()
        assert json.loads(frame) == {"op": "error", "code": 400, "reason": repeated(name)}
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, repeated(name))


async def test_topic_repeats_and_nothing_refused_stays_attached(secured, port_kind):
    jwt = token(USER)
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", secured.url(port_kind, "/sse?topic=public.a&topic=public.b"),
                                 headers=bearer(jwt)) as response:
            assert response.status_code == 200
            async with asyncio.timeout(5):
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        assert json.loads(line[6:])["topics"] == ["public.a", "public.b"]
                        break
    url = secured.url(port_kind, f"/ws?topic=public.a&topic=public.b&token={jwt}", "ws")
    async with ws_connect(url) as ws:
        await ws.send('{"op":"ping","id":1}')
        await ws_until(ws, lambda message: message.get("op") == "pong")  # a frame may batch several
    poll = httpx.get(secured.base + "/poll?topic=public.a&topic=public.b&timeout=0", headers=bearer(jwt),
                     timeout=10)
    assert poll.status_code == 200
    async with asyncio.timeout(5):  # every refused stream above left nothing behind
        while secured.stats()["connections"]:
            await asyncio.sleep(0.1)
    listing = httpx.get(secured.base + "/notifications?limit=5", headers=bearer(jwt), timeout=10)
    assert listing.status_code == 200

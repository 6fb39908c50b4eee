"""Connection lifetime (SPEC 10) through the real server, on both ports: a
connection ends when its token's exp plus HUBBUB_JWT_LEEWAY passes (WS close
4401 ``token expired``, SSE ``event: expired`` then the end, a waiting poll
401), and the WS ``refresh`` op extends it with a later token of the same user."""
import asyncio
import json
import time
import uuid

import httpx
import pytest
import websockets

from .helpers_user import KEY, SECURED_ENV, bearer
from .server import HubProcess, ws_connect, ws_until
from .tokens import token

LEEWAY = 1.0
# How late past exp + leeway an end may come: the expiry timer is precise to
# milliseconds; the rest is a loaded test machine.
LATE = 1.5


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = HubProcess(dev=False, env={**SECURED_ENV, "HUBBUB_JWT_LEEWAY": str(LEEWAY)})
    process.start(tmp_path_factory.mktemp("expiry"))
    yield process
    process.stop()


def short_token(sub: str = "alice", lifetime: float = 2.0) -> tuple[str, float]:
    exp = int(time.time() + lifetime) + 1  # whole seconds, as issuers write them
    return token(sub, exp=exp), float(exp)


def assert_on_time(ended_at: float, exp: float) -> None:
    deadline = exp + LEEWAY
    assert deadline - 0.05 <= ended_at <= deadline + LATE, (ended_at - deadline)


async def closed_frame(ws, timeout: float = 8.0):
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    return closed.value.rcvd


async def test_websocket_closes_4401_when_the_token_expires(hub, port_kind):
    jwt, exp = short_token()
    async with ws_connect(hub.url(port_kind, f"/ws?topic=public.x&token={jwt}", "ws")) as ws:
        frame = await closed_frame(ws)
        ended_at = time.time()
    assert frame is not None and (frame.code, frame.reason) == (4401, "token expired")
    assert_on_time(ended_at, exp)


async def test_first_frame_auth_expires_too(hub, port_kind):
    jwt, exp = short_token()
    async with ws_connect(hub.url(port_kind, "/ws", "ws")) as ws:
        await ws.send(json.dumps({"op": "auth", "token": jwt, "id": 1}))
        frame = await closed_frame(ws)
        ended_at = time.time()
    assert (frame.code, frame.reason) == (4401, "token expired")
    assert_on_time(ended_at, exp)


async def test_sse_gets_expired_then_the_stream_ends(hub, port_kind):
    jwt, exp = short_token()
    events = []
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", hub.url(port_kind, "/sse?topic=public.x"), headers=bearer(jwt)) as r:
            assert r.status_code == 200
            async with asyncio.timeout(8):
                async for line in r.aiter_lines():  # ends when the hub ends the stream
                    if line.startswith("event: "):
                        events.append(line[7:])
        ended_at = time.time()
    assert events[0] == "connected" and events[-1] == "expired", events
    assert_on_time(ended_at, exp)


async def test_a_waiting_poll_answers_401(hub):
    jwt, exp = short_token()
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(hub.base + "/poll?topic=public.x&timeout=20", headers=bearer(jwt))
        ended_at = time.time()
    assert response.status_code == 401, response.text
    assert response.json()["reason"] == "token expired"
    assert_on_time(ended_at, exp)


async def test_refresh_extends_the_connection(hub, port_kind):
    topic = "public." + uuid.uuid4().hex[:8]
    jwt, exp = short_token()
    later, later_exp = short_token(lifetime=60)
    async with ws_connect(hub.url(port_kind, f"/ws?topic={topic}&token={jwt}", "ws")) as ws:
        await ws.send(json.dumps({"op": "refresh", "token": later, "id": 7}))
        replies = await ws_until(ws, lambda m: m.get("id") == 7)
        assert replies[-1] == {"op": "refreshed", "id": 7, "exp": later_exp}
        await asyncio.sleep(max(0.0, exp + LEEWAY + LATE - time.time()))  # past the old end
        hub.publish({"topic": topic, "data": "still here"}, headers=KEY)
        messages = await ws_until(ws, lambda m: m.get("op") == "message")
        assert messages[-1]["data"] == "still here"


async def test_refusals_keep_the_old_expiry(hub, port_kind):
    jwt, exp = short_token()
    async with ws_connect(hub.url(port_kind, f"/ws?topic=public.x&token={jwt}", "ws")) as ws:
        refusals = {
            1: (token("mallory", exp=int(exp) + 60), 403),  # another user
            2: (token("alice", exp=int(exp)), 400),  # not later
            3: (token("alice", exp=int(exp) + 60, secret="another-secret-0123456789-another"), 401),
            4: ("", 400),
        }
        for request_id, (refresh, _) in refusals.items():
            await ws.send(json.dumps({"op": "refresh", "token": refresh, "id": request_id}))
        replies = await ws_until(ws, lambda m: m.get("id") == 4)
        errors = {m["id"]: m for m in replies if m.get("op") == "error"}
        for request_id, (_, code) in refusals.items():
            assert errors[request_id]["code"] == code, errors
        assert "mallory" in errors[1]["reason"] and "not later" in errors[2]["reason"]
        frame = await closed_frame(ws)
        ended_at = time.time()
    assert (frame.code, frame.reason) == (4401, "token expired")
    assert_on_time(ended_at, exp)


async def test_a_token_without_exp_never_expires_and_has_nothing_to_refresh(hub, port_kind):
    import jwt as pyjwt

    from .tokens import AUDIENCE, SECRET
    forever = pyjwt.encode({"sub": "alice", "aud": AUDIENCE}, SECRET, algorithm="HS256")
    async with ws_connect(hub.url(port_kind, f"/ws?topic=public.x&token={forever}", "ws")) as ws:
        later, _ = short_token(lifetime=60)
        await ws.send(json.dumps({"op": "refresh", "token": later, "id": 1}))
        replies = await ws_until(ws, lambda m: m.get("id") == 1)
        assert replies[-1]["op"] == "error" and replies[-1]["code"] == 400

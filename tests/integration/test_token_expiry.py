"""Connection lifetime (SPEC 10) through the real server, on both ports: a
connection ends when its token's exp plus HUBBUB_JWT_LEEWAY passes (WS close
4401 ``token expired``, SSE ``event: expired`` then the end, a waiting poll
401)."""
import asyncio
import json
import time

import httpx
import pytest
import websockets

from .helpers_user import SECURED_ENV, bearer
from .server import HubProcess, ws_connect
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

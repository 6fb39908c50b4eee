"""Graceful drain on SIGTERM: WS clients get 1001, SSE streams end, the hub exits in bounded time."""
import asyncio
import signal
import time

import httpx
import pytest
import websockets

from .server import ws_connect, ws_messages


async def test_sigterm_drains_both_ports(make_hub):
    hub = make_hub(env={"HUBBUB_DRAIN_TIMEOUT": "5"})
    sockets = [await ws_connect(hub.url(kind, "/ws?topic=d.a", "ws")).__aenter__() for kind in ("asgi", "native")]
    client = httpx.AsyncClient(timeout=20)
    streams = []
    for kind in ("asgi", "native"):
        response = await client.send(client.build_request("GET", hub.url(kind, "/sse?topic=d.a")), stream=True)
        streams.append(response)
    await asyncio.sleep(0.3)
    hub.publish({"topic": "d.a", "data": "before"})
    for ws in sockets:
        assert (await ws_messages(ws, 1))[0]["data"] == "before"

    started = time.monotonic()
    hub.proc.send_signal(signal.SIGTERM)

    for ws in sockets:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    for response in streams:
        body = b""
        async with asyncio.timeout(10):
            async for chunk in response.aiter_raw():  # ends when the hub ends the stream
                body += chunk
        assert b"before" in body
        await response.aclose()
    await client.aclose()
    assert hub.proc.wait(15) == 0
    assert time.monotonic() - started < 15


async def test_drain_is_observable_by_a_load_balancer(make_hub):
    """From SIGTERM on, for DRAIN_GRACE seconds, the ports stay open: /healthz
    answers 503 and new subscribers get 503, while existing ones are still served;
    then they get 1001 and the process exits."""
    hub = make_hub(env={"HUBBUB_DRAIN_GRACE": "3", "HUBBUB_DRAIN_TIMEOUT": "5"})
    ws = await ws_connect(hub.url("native", "/ws?topic=g.a", "ws")).__aenter__()
    await asyncio.sleep(0.2)
    started = time.monotonic()
    hub.proc.send_signal(signal.SIGTERM)
    async with httpx.AsyncClient(timeout=5) as client:
        await asyncio.sleep(0.5)
        health = await client.get(hub.base + "/healthz")
        assert health.status_code == 503 and health.json()["status"] == "draining"
        for kind in ("asgi", "native"):
            refused = await client.get(hub.url(kind, "/sse?topic=g.a"))
            assert refused.status_code == 503, (kind, refused.text)
        assert (await client.get(hub.url("asgi", "/poll?topic=g.a&timeout=0"))).status_code == 503
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with ws_connect(hub.url("native", "/ws?topic=g.a", "ws")):
                pass
        assert refused.value.response.status_code == 503
        await ws.send('{"op":"ping","id":1}')  # the connection from before is still served
        assert (await ws_messages(ws, 1))[0] == {"op": "pong", "id": 1}
        assert time.monotonic() - started < 3  # all of the above inside the grace
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(10):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert time.monotonic() - started >= 2.5
    assert hub.proc.wait(15) == 0

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

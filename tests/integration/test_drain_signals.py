"""A drain a load balancer can see, whichever processes get the signal (issue 19).

``hubbub serve`` is Granian's main process and its workers. SIGTERM may reach
the main process only (``kill PID``, ``docker stop``), the workers only, or
the whole process group (systemd's default KillMode=control-group, Ctrl-C in
a terminal). In every case, for DRAIN_GRACE seconds from the signal, both
ports stay served: /healthz on PORT answers 503 "draining", a new subscriber
on FAST_PORT gets 503, an open WebSocket is still answered; then WS clients
get 1001, SSE streams end and the process exits.

Every poll checks /healthz on both ports, and on FAST_PORT also that a new
subscriber gets 503 while an open WebSocket is still answered.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import psutil
import pytest
import websockets

from hubbub.signals import RELAY_WINDOW

from .server import HubProcess, ws_connect, ws_messages

GRACE = 2.0
DRAIN_TIMEOUT = 4.0
FIRST_503_WITHIN = 1.5  # from the signal to the first 503: the worker's reaction, on a loaded machine
GRACE_MARGIN = 0.4  # the polls stop this long before the grace ends


def signal_target(hub: HubProcess, target: str) -> None:
    main = psutil.Process(hub.proc.pid)
    workers = main.children()
    assert workers, "Granian's workers are the main process's children"
    if target == "main":
        os.kill(main.pid, signal.SIGTERM)
    elif target == "workers":
        for worker in workers:
            os.kill(worker.pid, signal.SIGTERM)
    else:  # the process group: HubProcess starts the hub in a session of its own
        os.killpg(main.pid, signal.SIGTERM)


def fresh_connections() -> httpx.AsyncClient:
    # A new connection per request, as a load balancer's checks open them:
    # with --workers 2 each may land on either worker (SO_REUSEPORT).
    return httpx.AsyncClient(timeout=2, limits=httpx.Limits(max_keepalive_connections=0))


async def assert_draining_until_the_grace_ends(hub: HubProcess, signalled: float, ws) -> int:
    """Poll both ports until GRACE_MARGIN before the grace ends; returns how many polls."""
    health_urls = [hub.url("asgi", "/healthz"), hub.url("native", "/healthz")]
    polls = 0
    first_503 = None
    async with fresh_connections() as client:
        while time.monotonic() < signalled + GRACE - GRACE_MARGIN:
            for url in health_urls:
                response = await client.get(url)  # a refused connection fails the test here
                if first_503 is None and response.status_code == 200:
                    assert time.monotonic() - signalled < FIRST_503_WITHIN, "no 503 after the signal"
                    continue
                assert response.status_code == 503, (url, response.status_code, response.text)
                assert response.json()["status"] == "draining"
                first_503 = first_503 or time.monotonic()
            if first_503 is not None:
                refused = await client.get(hub.url("native", "/sse?topic=d.s"))
                assert refused.status_code == 503, refused.text  # a new subscriber on the fast port
                await ws.send('{"op":"ping","id":1}')  # an open connection is still served
                assert (await ws_messages(ws, 1))[0] == {"op": "pong", "id": 1}
            polls += 1
            await asyncio.sleep(0.05)
    assert first_503 is not None and first_503 - signalled < FIRST_503_WITHIN
    return polls


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("target", ["main", "workers", "group"])
async def test_healthz_503_for_the_whole_grace_whoever_gets_the_signal(target, workers, make_hub, request):
    env = {"HUBBUB_DRAIN_GRACE": str(GRACE), "HUBBUB_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)}
    if workers > 1:  # N workers are one hub only over a backplane (SPEC 1)
        url, prefix = request.getfixturevalue("shared")
        env.update(HUBBUB_BACKPLANE=url, HUBBUB_BACKPLANE_PREFIX=prefix)
    hub = make_hub(env=env, args=["--workers", str(workers)])
    ws = await ws_connect(hub.url("native", "/ws?topic=d.s", "ws")).__aenter__()
    client = httpx.AsyncClient(timeout=20)
    sse = await client.send(client.build_request("GET", hub.url("native", "/sse?topic=d.s")), stream=True)
    assert sse.status_code == 200
    await asyncio.sleep(0.3)

    signalled = time.monotonic()
    signal_target(hub, target)
    assert await assert_draining_until_the_grace_ends(hub, signalled, ws) >= 5

    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(GRACE + DRAIN_TIMEOUT):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    async with asyncio.timeout(DRAIN_TIMEOUT):
        async for _ in sse.aiter_raw():  # ends when the hub ends the stream
            pass
    await sse.aclose()
    await client.aclose()
    returncode = await asyncio.to_thread(hub.proc.wait, DRAIN_TIMEOUT + 10)
    assert time.monotonic() - signalled < GRACE + DRAIN_TIMEOUT + 10
    if target != "workers":  # a worker that exits on its own is "unexpected" to Granian: status 1
        assert returncode == 0, hub.output()


@pytest.mark.parametrize("second", ["main", "group"])
async def test_a_second_signal_stops_at_once(second, make_hub):
    """Granian's main process passes on only the first signal by itself; the
    second must reach the workers too, cutting the grace and the drain short."""
    hub = make_hub(env={"HUBBUB_DRAIN_GRACE": "30", "HUBBUB_DRAIN_TIMEOUT": "30"})
    ws = await ws_connect(hub.url("native", "/ws?topic=d.s", "ws")).__aenter__()
    await asyncio.sleep(0.2)
    signal_target(hub, "main")
    async with fresh_connections() as client:
        async with asyncio.timeout(FIRST_503_WITHIN * 2):
            while (await client.get(hub.url("asgi", "/healthz"))).status_code != 503:
                await asyncio.sleep(0.05)
    await asyncio.sleep(RELAY_WINDOW)  # a second signal, not the main process's copy of the first
    stopped = time.monotonic()
    signal_target(hub, second)
    await asyncio.to_thread(hub.proc.wait, 10)
    assert time.monotonic() - stopped < 10
    with pytest.raises(websockets.ConnectionClosed):
        async with asyncio.timeout(5):
            while True:
                await ws.recv()

"""The hub as a plain ASGI app mounted in Starlette and FastAPI, served by uvicorn."""
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets

from .server import free_port_pair, ws_connect, ws_messages

ROOT = Path(__file__).resolve().parents[2]


SERVERS = {  # how each ASGI server runs an app on a port
    "uvicorn": lambda app, port: ["uvicorn", app, "--port", str(port), "--log-level", "warning"],
    "hypercorn": lambda app, port: ["hypercorn", app, "--bind", f"127.0.0.1:{port}"],
    "granian": lambda app, port: ["granian", "--interface", "asgi", "--host", "127.0.0.1",
                                  "--port", str(port), app],
}


@contextlib.contextmanager
def serving(server: str, app: str, log_dir: Path, env: dict[str, str] | None = None):
    """``SERVER APP`` on a free loopback port, in dev mode, in a process group of
    its own; yields (base URL, process) once the hub answers under /rt."""
    port = free_port_pair()
    log = open(log_dir / f"{server}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", *SERVERS[server](app, port)], cwd=ROOT,
                            env={**os.environ, "HUBBUB_DEV": "1", **(env or {})}, stdout=log, stderr=log,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/rt/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@contextlib.contextmanager
def uvicorn_serving(app: str, log_dir: Path):
    # Stops stay fast; the drain tests below set a grace where it is the point.
    with serving("uvicorn", app, log_dir, env={"HUBBUB_DRAIN_GRACE": "0"}) as (base, _):
        yield base


@pytest.fixture(params=["examples.starlette_app:app", "examples.fastapi_app:app"], scope="module")
def embedded(request, tmp_path_factory):
    with uvicorn_serving(request.param, tmp_path_factory.mktemp("embed")) as base:
        yield base


async def test_app_publishes_domain_events_to_ws_and_sse_clients(embedded):
    ws_url = embedded.replace("http", "ws") + "/rt/ws?topic=orders.*"
    async with ws_connect(ws_url) as ws, httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", embedded + "/rt/sse?topic=orders.%3E") as stream:
            lines = stream.aiter_lines()
            async with asyncio.timeout(5):
                while (await anext(lines)) != "event: connected":
                    pass
            await asyncio.sleep(0.2)
            response = await client.post(embedded + "/orders/42/ship")
            assert response.status_code == 200
            event_id = response.json()["event_id"]
            [message] = await ws_messages(ws, 1)
            assert message["topic"] == "orders.42" and message["data"] == {"status": "shipped"}
            assert message["id"] == event_id and message["event"] == "update"
            async with asyncio.timeout(5):
                async for line in lines:
                    if line.startswith("data: "):
                        payload = json.loads(line[6:])
                        if payload.get("topic") == "orders.42":
                            break
            assert payload["id"] == event_id


def test_mounted_endpoints_answer_under_the_prefix(embedded):
    assert httpx.get(embedded + "/rt/healthz").json()["status"] == "ok"
    response = httpx.post(embedded + "/rt/publish", json={"topic": "x.y", "data": 1})
    assert response.status_code == 200 and len(response.json()["ids"]) == 1
    assert httpx.get(embedded + "/rt/nope").status_code == 404


async def test_in_process_hub_health_reports_draining(tmp_path):
    """hub.stop() drains: /healthz says 503 from then on."""
    from hubbub import Config, Hub

    hub = Hub(Config(dev=True, data_dir=str(tmp_path)))  # its inbox store, not in the repo
    transport = httpx.ASGITransport(app=hub.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        assert (await client.get("/healthz")).status_code == 200
        await hub.stop()
        response = await client.get("/healthz")
        assert response.status_code == 503 and response.json()["status"] == "draining"


@pytest.fixture(scope="module")
def session_app(tmp_path_factory):
    with uvicorn_serving("examples.fastapi_auth_app:app", tmp_path_factory.mktemp("auth")) as base:
        yield base


async def test_pluggable_authenticate_hook(session_app):
    async with httpx.AsyncClient(base_url=session_app, timeout=10) as client:
        assert (await client.get("/rt/sse?topic=news.%3E")).status_code == 401  # no session
        bad = await client.get("/rt/sse?topic=news.%3E", headers={"Cookie": "session=nope"})
        assert bad.status_code == 401 and bad.json()["reason"] == "unknown session"
        other = await client.get("/rt/sse?topic=user.bob.inbox", headers={"Cookie": "session=s-alice"})
        assert other.status_code == 403
        ws_url = session_app.replace("http", "ws") + "/rt/ws?topic=news.%3E&topic=user.alice.%3E"
        async with ws_connect(ws_url, additional_headers={"Cookie": "session=s-alice"}) as ws:
            await asyncio.sleep(0.2)
            await client.post("/news", json={"headline": "hello"})
            [message] = await ws_messages(ws, 1)
            assert message["topic"] == "news.latest" and message["event"] == "news"
            await ws.send(json.dumps({"op": "publish", "topic": "user.alice.notes", "data": 1, "id": 1}))
            got = await ws_messages(ws, 2)
            assert {m["op"] for m in got} == {"ack", "message"}


# -- the drain of an embedded hub when its server stops (issue 18) -------------------
GRACE = 1.0
DRAIN_TIMEOUT = 3.0
SLACK = 5.0  # a loaded machine: the server's own stop, the interpreter's exit


async def open_streams(base: str):
    """A WebSocket and an SSE stream on the mounted hub, both subscribed."""
    ws = await ws_connect(base.replace("http", "ws") + "/rt/ws?topic=orders.*").__aenter__()
    client = httpx.AsyncClient(timeout=30)
    sse = await client.send(client.build_request("GET", base + "/rt/sse?topic=orders.%3E"), stream=True)
    assert sse.status_code == 200
    await asyncio.sleep(0.3)
    return ws, client, sse


async def assert_both_end_cleanly(ws, client, sse, within: float) -> None:
    """The WS gets a 1001 close frame; the SSE stream ends (its chunked body
    completes, which a cut connection does not)."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    async with asyncio.timeout(within):
        async for _ in sse.aiter_raw():
            pass
    await sse.aclose()
    await client.aclose()


def send(proc: subprocess.Popen, sig: int, target: str) -> None:
    if target == "group":  # systemd's KillMode=control-group, Ctrl-C in a terminal
        os.killpg(proc.pid, sig)
    else:  # the server's (main) process only: kill PID, docker stop
        os.kill(proc.pid, sig)


@pytest.mark.parametrize("server, target", [
    ("uvicorn", "main"),
    ("hypercorn", "main"), ("hypercorn", "group"),  # its main process signals no worker
    ("granian", "main"), ("granian", "group"),  # its main process sends each worker SIGTERM
])
async def test_sigterm_drains_the_embedded_hub_before_the_server_stops(server, target, tmp_path):
    """uvicorn used to wait for the hub's connections forever ("Waiting for
    connections to close"), Granian cut WebSockets without a close frame and
    Hypercorn cancelled them after its graceful timeout: the lifespan shutdown,
    where the hub drained, comes after all of that."""
    env = {"HUBBUB_DRAIN_GRACE": str(GRACE), "HUBBUB_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)}
    with serving(server, "examples.starlette_app:app", tmp_path, env) as (base, proc):
        ws, client, sse = await open_streams(base)
        signalled = time.monotonic()
        send(proc, signal.SIGTERM, target)
        if server != "hypercorn":  # Hypercorn stops accepting at once: no grace to see
            await asyncio.sleep(0.3)
            async with httpx.AsyncClient(timeout=2) as checker:
                health = await checker.get(base + "/rt/healthz")
            assert health.status_code == 503 and health.json()["status"] == "draining"
            await ws.send(json.dumps({"op": "ping", "id": 1}))  # still served during the grace
            assert (await ws_messages(ws, 1))[0] == {"op": "pong", "id": 1}
        await assert_both_end_cleanly(ws, client, sse, within=GRACE + DRAIN_TIMEOUT)
        returncode = await asyncio.to_thread(proc.wait, GRACE + DRAIN_TIMEOUT + SLACK)
        assert time.monotonic() - signalled < GRACE + DRAIN_TIMEOUT + SLACK
        # uvicorn raises the signal again once it has stopped, to end as the signal would
        assert returncode in ((0, -signal.SIGTERM) if server == "uvicorn" else (0,))


async def test_a_second_signal_stops_at_once(tmp_path):
    env = {"HUBBUB_DRAIN_GRACE": "30", "HUBBUB_DRAIN_TIMEOUT": "30"}
    with serving("uvicorn", "examples.starlette_app:app", tmp_path, env) as (base, proc):
        ws, client, sse = await open_streams(base)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert httpx.get(base + "/rt/healthz", timeout=2).status_code == 503  # in its grace
        stopped = time.monotonic()
        proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.wait, SLACK)
        assert time.monotonic() - stopped < SLACK
        with pytest.raises(websockets.ConnectionClosed):  # closed, 1001 or cut, but closed
            async with asyncio.timeout(SLACK):
                while True:
                    await ws.recv()
        await sse.aclose()
        await client.aclose()


async def test_a_lifespan_shutdown_without_a_signal_still_drains(tmp_path):
    """An app stopped by other means than a signal (a test client, a server told
    to exit) drains at the lifespan shutdown; the server's handlers are put back."""
    from hubbub import Config, Hub

    before = signal.getsignal(signal.SIGTERM)
    hub = Hub(Config(dev=True, data_dir=str(tmp_path)))
    async with hub.lifespan():
        assert signal.getsignal(signal.SIGTERM) != before  # the hub's, in front
        native = await hub.listen()
        ws = await ws_connect(f"ws://127.0.0.1:{native.port}/ws?topic=orders.*").__aenter__()
        await asyncio.sleep(0.2)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(5):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert signal.getsignal(signal.SIGTERM) == before

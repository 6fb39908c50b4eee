"""The hub as a plain ASGI app mounted in Starlette and FastAPI, served by uvicorn."""
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .server import free_port_pair, ws_connect, ws_messages

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def uvicorn_serving(app: str, log_dir: Path):
    """``uvicorn APP`` on a free loopback port, in dev mode; yields its base URL."""
    port = free_port_pair()
    log = open(log_dir / "uvicorn.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", app, "--port", str(port),
                             "--log-level", "warning"],
                            cwd=ROOT, env={**os.environ, "HUBBUB_DEV": "1"}, stdout=log, stderr=log)
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
        yield base
    finally:
        proc.terminate()
        proc.wait(15)


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

"""The Python client with a ``token_factory`` of short-lived tokens (SPEC 10):
it refreshes its connection ahead of expiry, or reconnects with a fresh token
after a 4401 ``token expired``, and receives every one of a steady stream of
publications, in order, with no gap and no duplicate."""
import asyncio
import contextlib
import time
import uuid

import httpx
import pytest

import hubbub.client
from hubbub.client import connect

from .helpers_user import KEY, SECURED_ENV
from .tokens import token

TOKEN_LIFETIME = 3.0
LEEWAY = "1"
INTERVAL = 0.05  # seconds between publications


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from .server import HubProcess
    process = HubProcess(dev=False, env={**SECURED_ENV, "HUBBUB_JWT_LEEWAY": LEEWAY})
    process.start(tmp_path_factory.mktemp("token-factory"))
    yield process
    process.stop()


def three_second_tokens() -> list:
    """A factory and the list of tokens it handed out."""
    handed: list[str] = []

    async def factory() -> str:
        await asyncio.sleep(0)  # a coroutine factory, as one that asks an auth server
        handed.append(token("alice", exp=time.time() + TOKEN_LIFETIME))
        return handed[-1]
    return factory, handed


async def receive_a_steady_stream(url: str, seconds: float, factory) -> tuple[list, "hubbub.client.Client"]:
    topic = "public." + uuid.uuid4().hex[:8]
    got: list = []
    async with connect(url, token_factory=factory, topics=[topic], backoff_base=0.05) as client:
        await client.ping()

        async def read() -> None:
            async for message in client:
                if message.kind == "unread_count":
                    continue  # the user's inbox count, on every (re)connect: not a publication
                # a reset or dropped notice would show up as a gap in the numbers
                got.append(message.data if message.kind == "message" else message.kind)
        reader = asyncio.ensure_future(read())
        sent = 0
        async with httpx.AsyncClient(base_url=HUB_BASE[0], timeout=10, headers=KEY) as http:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                response = await http.post("/publish", json={"topic": topic, "data": sent})
                assert response.status_code == 200, response.text
                sent += 1
                await asyncio.sleep(INTERVAL)
        with contextlib.suppress(TimeoutError):  # a missed one shows in the assert below
            async with asyncio.timeout(10):
                while len(got) < sent:
                    await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # a duplicate would arrive late
        reader.cancel()
    assert got == list(range(sent)), [x for i, x in enumerate(got) if x != i][:5]
    return got, client


HUB_BASE = [""]


async def test_refresh_keeps_one_connection_for_15_seconds(hub):
    HUB_BASE[0] = hub.base
    factory, handed = three_second_tokens()
    got, client = await receive_a_steady_stream(hub.url("asgi", "/ws", "ws"), 15, factory)
    assert client.refreshes >= 4 and client.reconnects == 0, (client.refreshes, client.reconnects)
    assert len(handed) >= 5


async def test_an_expired_connection_reconnects_with_a_fresh_token(hub, monkeypatch):
    HUB_BASE[0] = hub.base
    monkeypatch.setattr(hubbub.client, "REFRESH_AT", 100.0)  # never in time: the hub closes 4401
    factory, handed = three_second_tokens()
    got, client = await receive_a_steady_stream(hub.url("native", "/ws", "ws"), 10, factory)
    assert client.reconnects >= 2 and client.refreshes == 0, (client.refreshes, client.reconnects)
    assert len(handed) == client.reconnects + 1

"""The Python client after the server API disconnects its user (SPEC 10 "Server
API", issue 22), through a real secured ``hubbub serve`` on both ports: a
backend's disconnect (4403 by default, any 4000-4999 code) ends the client,
with the code and reason, and it stays away; 4408 (and 4410), which ask for a
reconnect, are reconnected and resumed. The client speaks WS only."""
from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from hubbub.client import ConnectionClosed, connect, reconnects_after

from .helpers_user import KEY, SECURED_ENV
from .server import HubProcess
from .test_server_api import wait_for_connections
from .tokens import token


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = HubProcess(dev=False, env=SECURED_ENV).start(tmp_path_factory.mktemp("client-disconnect"))
    yield process
    process.stop()


def disconnect(hub: HubProcess, body: dict) -> dict:
    response = httpx.post(hub.base + "/disconnect", json=body, headers=KEY, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


async def next_message(client, timeout: float = 10.0):
    while True:
        message = await client.next(timeout)
        if message.kind == "message":
            return message


@pytest.mark.parametrize("code", [None, 4001])
async def test_a_server_disconnect_ends_the_client_with_its_code_and_reason(hub, port_kind, code):
    user = f"csd-{port_kind}-{code}"
    body = {"user": user, "reason": "account suspended"} | ({"code": code} if code else {})
    before = hub.stats()["connections"]
    client = connect(hub.url(port_kind, "/ws", "ws"), token=token(user), topics=["public.csd"],
                     backoff_base=0.01, backoff_max=0.05)
    await client.start()
    try:
        await client.ping()
        await wait_for_connections(hub, before + 1)
        assert disconnect(hub, body) == {"closed": 1}
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await client.next()
        assert (closed.value.code, closed.value.reason) == (code or 4403, "account suspended")
        assert client.closed_with is closed.value
        async with asyncio.timeout(1):
            assert [m async for m in client] == []  # iteration has ended for good
        # With a 10-50 ms backoff a reconnect would have happened many times over.
        await asyncio.sleep(0.5)
        assert client.reconnects == 0
        assert hub.stats()["connections"] == before
    finally:
        await client.close()
    assert client.closed_with.code == (code or 4403)  # close() does not hide why it ended


async def test_4408_from_the_server_api_is_reconnected_and_resumed(hub, port_kind):
    user = f"csd-again-{port_kind}"
    topic = "public.csd." + uuid.uuid4().hex[:8]
    async with connect(hub.url(port_kind, "/ws", "ws"), token=token(user), topics=[topic],
                       backoff_base=0.01, backoff_max=0.05) as client:
        await client.ping()
        hub.publish({"topic": topic, "data": "before"}, headers=KEY)
        assert (await next_message(client)).data == "before"
        assert disconnect(hub, {"user": user, "code": 4408, "reason": "move along"}) == {"closed": 1}
        deadline = time.monotonic() + 10
        while client.reconnects < 1:
            assert time.monotonic() < deadline, "no reconnect after 4408"
            await asyncio.sleep(0.02)
        hub.publish({"topic": topic, "data": "after"}, headers=KEY)
        assert (await next_message(client)).data == "after"
        assert client.closed_with is None


def test_the_reconnect_rule():
    assert reconnects_after(None, "", False)  # cut: no close frame
    for code in (1001, 1006, 1011, 4408, 4410):
        assert reconnects_after(code, "", False), code
    for code in (4000, 4001, 4403, 4404, 4999):
        assert not reconnects_after(code, "banned", True), code
    assert reconnects_after(4401, "token expired", True)
    assert not reconnects_after(4401, "token expired", False)
    assert not reconnects_after(4401, "bad signature", True)

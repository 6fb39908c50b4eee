"""Hostile resume ids (``since=`` / ``Last-Event-ID``) on every path of both ports.

Whatever string a client hands back as its resume point, the hub answers with
a replay or a ``reset``: never a 5xx, a 1011 close, a hang or a connection
left attached after the client is gone.
"""
import asyncio
import json
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .server import HubProcess, ws_connect, ws_until

TOPIC = "fuzz.resume"


@pytest.fixture(scope="module")
def fuzz_hub(tmp_path_factory):
    process = HubProcess().start(tmp_path_factory.mktemp("fuzz"))
    process.epoch = process.publish({"topic": TOPIC, "data": 0})[0].rpartition("-")[0]
    yield process
    process.stop()


def crafted(epoch: str) -> list[str]:
    """Ids that look like ours but are not: the parser's corner cases."""
    return [
        f"{epoch}-\u00b2", f"{epoch}-\u0663", f"{epoch}-{'9' * 5000}", f"{epoch}-{'1' * 20}",
        f"{epoch}-", f"{epoch}--1", f"{epoch}-+1", f"{epoch}- 1", f"{epoch}-1_0", f"{epoch}-0x1",
        f"{epoch}-1", f"{epoch}-0", f"{epoch}-99999999", "-1", "-", "", "\x00", epoch,
    ]


def header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable() and value == value.strip()


async def wait_no_connections(hub: HubProcess) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(100):
            stats = (await client.get(hub.base + "/healthz")).json()
            if stats["connections"] == 0:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"connections left attached: {stats}")


async def sse_answers(url: str, headers: dict) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            text = ""
            async with asyncio.timeout(5):
                async for chunk in response.aiter_text():
                    text += chunk
                    if "event: connected" in text and text.endswith("\n\n"):
                        break  # the opening write: connected, then any replay or reset
            assert "event: connected" in text


async def ws_answers(url: str, subscribe_since) -> None:
    async with ws_connect(url) as ws:
        if subscribe_since is not None:
            await ws.send(json.dumps({"op": "subscribe", "topic": TOPIC, "since": subscribe_since, "id": 1}))
        await ws.send(json.dumps({"op": "ping", "id": "alive"}))
        got = await ws_until(ws, lambda m: m.get("op") == "pong")
        assert all(m.get("op") != "error" or m["code"] < 500 for m in got), got


async def probe(hub: HubProcess, since) -> None:
    text = since if isinstance(since, str) else json.dumps(since)
    q = quote(text, safe="")
    for kind in ("asgi", "native"):
        await sse_answers(hub.url(kind, f"/sse?topic={TOPIC}&since={q}"), {})
        if header_safe(text):
            await sse_answers(hub.url(kind, f"/sse?topic={TOPIC}"), {"Last-Event-ID": text})
        await ws_answers(hub.url(kind, f"/ws?topic={TOPIC}&since={q}", "ws"), None)
        await ws_answers(hub.url(kind, "/ws", "ws"), since)
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(hub.url("asgi", f"/poll?topic={TOPIC}&timeout=0&since={q}"))
        assert response.status_code == 200, response.text
        body = response.json()
        assert "messages" in body and "last_id" in body
    await wait_no_connections(hub)


def test_crafted_ids_never_crash_or_leak(fuzz_hub):
    async def run_all():
        for since in crafted(fuzz_hub.epoch):
            await probe(fuzz_hub, since)
    asyncio.run(run_all())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_resume_points_never_crash_or_leak(fuzz_hub, data):
    since = data.draw(st.one_of(
        st.text(max_size=40),
        st.sampled_from(crafted(fuzz_hub.epoch)),
        st.builds(lambda tail: f"{fuzz_hub.epoch}-{tail}", st.text(max_size=25)),
        st.integers(), st.lists(st.integers(), max_size=2),
    ))
    asyncio.run(probe(fuzz_hub, since))

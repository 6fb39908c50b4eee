"""The SSE contract (SPEC 5) on both ports, with httpx / httpx-sse and raw sockets."""
import asyncio
import json
import socket
import time
import uuid

import httpx
import pytest
from httpx_sse import aconnect_sse


def prefix() -> str:
    return "s" + uuid.uuid4().hex[:10]


async def events_of(source):
    """Events as a browser dispatches them: a block without data (the opening
    ``retry:``) is not an event, though httpx-sse yields it."""
    async for event in source.aiter_sse():
        if event.data or event.event != "message":
            yield event


async def read_events(source, count: int, timeout: float = 5.0, include=None) -> list:
    out = []
    async with asyncio.timeout(timeout):
        async for event in events_of(source):
            if include is None or event.event in include:
                out.append(event)
                if len(out) == count:
                    return out
    return out


async def test_stream_headers_preamble_and_delivery(hub, port_kind):
    p = prefix()
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", hub.url(port_kind, f"/sse?topic={p}.*")) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["x-accel-buffering"] == "no"
            assert "content-encoding" not in response.headers
            lines = response.aiter_lines()
            async with asyncio.timeout(5):
                assert await anext(lines) == "retry: 2000"
                assert await anext(lines) == ""
                assert await anext(lines) == "event: connected"
                connected = json.loads((await anext(lines))[len("data: "):])
                assert connected["topics"] == [f"{p}.*"] and connected["user"] is None
                assert connected["connection_id"]
                assert await anext(lines) == ""
                [event_id] = hub.publish({"topic": f"{p}.x", "data": {"a": 1}, "event": "update"})
                assert await anext(lines) == f"id: {event_id}"
                assert await anext(lines) == "event: update"
                envelope = json.loads((await anext(lines))[len("data: "):])
                assert envelope == {"topic": f"{p}.x", "id": event_id, "event": "update",
                                    "data": {"a": 1}, "ts": envelope["ts"]}


async def test_wildcards_filters_and_order_with_httpx_sse(hub, port_kind):
    p = prefix()
    url = hub.url(port_kind, f"/sse?topic={p}.%3E&filter=region:eu,level:high|critical")
    async with httpx.AsyncClient(timeout=10) as client:
        async with aconnect_sse(client, "GET", url) as source:
            events = events_of(source)
            async with asyncio.timeout(5):
                assert (await anext(events)).event == "connected"
            hub.publish(
                {"topic": f"{p}.a", "data": 0, "tags": {"region": "eu", "level": "high"}},
                {"topic": f"{p}.a.b", "data": 1, "tags": {"region": "eu", "level": "critical"}},
                {"topic": f"{p}.a", "data": "x", "tags": {"region": "eu"}},
                {"topic": f"{p}.a", "data": "y"},
                {"topic": f"{p}", "data": "z", "tags": {"region": "eu", "level": "high"}},
                {"topic": f"{p}.c", "data": 2, "tags": {"region": "eu", "level": "high"}},
            )
            got = []
            async with asyncio.timeout(5):
                async for event in events:
                    got.append(json.loads(event.data)["data"])
                    if len(got) == 3:
                        break
            assert got == [0, 1, 2]


async def test_several_events_share_one_write(hub, port_kind):
    p = prefix()
    with socket.create_connection(("127.0.0.1", hub.port if port_kind == "asgi" else hub.fast_port)) as s:
        s.sendall(f"GET /sse?topic={p} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        s.settimeout(5)
        head = b""
        while b"event: connected" not in head:
            head += s.recv(65536)
        time.sleep(0.2)
        hub.publish(*({"topic": p, "data": i} for i in range(50)))
        data = b""
        reads = 0
        while data.count(b"event: message") < 50:
            data += s.recv(1 << 20)
            reads += 1
        assert reads < 50


async def test_heartbeat_comments(hub, port_kind):
    p = prefix()
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", hub.url(port_kind, f"/sse?topic={p}")) as response:
            async with asyncio.timeout(5):  # the session hub's heartbeat is 1 s
                async for line in response.aiter_lines():
                    if line == ": ping":
                        break


@pytest.mark.parametrize("query, status, fragment", [
    ("", 400, "at least one topic"),
    ("?topic=a..b", 400, "empty segment"),
    ("?topic=a*", 400, "mixes '*'"),
    ("?topic=ok&filter=region", 400, "not key:value"),
    ("?topic=%24sys.x&token=garbage", 401, "malformed token"),
])
async def test_errors_before_the_stream_are_json(hub, port_kind, query, status, fragment):
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(hub.url(port_kind, f"/sse{query}"))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == status and fragment in body["reason"]


async def test_disconnect_frees_the_connection(hub, port_kind):
    p = prefix()
    before = hub.stats()
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", hub.url(port_kind, f"/sse?topic={p}.a&topic={p}.b")) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    break
            assert hub.stats()["subscriptions"] >= before["subscriptions"] + 2
    for _ in range(100):
        if hub.stats()["subscriptions"] <= before["subscriptions"]:
            break
        await asyncio.sleep(0.05)
    assert hub.stats()["subscriptions"] <= before["subscriptions"]


async def test_a_resume_point_without_history_is_answered_with_reset(hub, port_kind):
    p = prefix()
    async with httpx.AsyncClient(timeout=10) as client:
        async with aconnect_sse(client, "GET", hub.url(port_kind, f"/sse?topic={p}"),
                                headers={"Last-Event-ID": "zz-1"}) as source:
            events = await read_events(source, 2)
    assert events[0].event == "connected"
    assert events[1].event == "reset"
    assert json.loads(events[1].data) == {"topics": [p], "reason": "history_gap"}
    # The reset moves the browser's Last-Event-ID to "now" (SPEC 5): a second
    # reconnect from it resumes cleanly instead of resetting again.
    newest = events[1].id
    assert newest and newest.rpartition("-")[0] == hub.publish({"topic": p, "data": 1})[0].rpartition("-")[0]
    async with httpx.AsyncClient(timeout=10) as client:
        async with aconnect_sse(client, "GET", hub.url(port_kind, f"/sse?topic={p}"),
                                headers={"Last-Event-ID": newest}) as source:
            events = await read_events(source, 2)
    assert [e.event for e in events] == ["connected", "message"]
    assert json.loads(events[1].data)["data"] == 1


def test_unknown_paths_and_methods(hub, port_kind):
    assert httpx.get(hub.url(port_kind, "/nope")).status_code == 404
    assert httpx.post(hub.url(port_kind, "/sse")).status_code == 405


def test_fast_port_drops_a_client_that_never_finishes_its_request_head(hub):
    """A slowloris holding a socket with half a request head is cut after 10 s."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", hub.fast_port), timeout=20) as s:
        s.sendall(b"GET /sse?topic=slow HTTP/1.1\r\nHost: x\r\n")  # no blank line, ever
        try:
            assert s.recv(1024) == b""
        except ConnectionResetError:
            pass
    assert 9 < time.monotonic() - started < 15

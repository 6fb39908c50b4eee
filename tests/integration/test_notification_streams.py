"""A user's connection with no topic is its notification stream (issue 22): the
bell of a page that subscribes to nothing. On SSE (both ports), WS (both
ports) and poll it gets the user's ``notification``, ``notification_deleted``
and ``unread_count`` events; an anonymous request with no topic stays a 400."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from .helpers_user import KEY, SECURED_ENV, SSEReader, bearer, ws_next
from .server import HubProcess, ws_connect
from .tokens import token


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = HubProcess(dev=False, env=SECURED_ENV).start(tmp_path_factory.mktemp("bell"))
    yield process
    process.stop()


def create(hub: HubProcess, user: str, title: str) -> dict:
    response = httpx.post(hub.base + "/notifications", headers=KEY, timeout=10,
                          json={"user": user, "title": title, "message": "m"})
    assert response.status_code == 201, response.text
    return response.json()


async def test_a_users_streams_without_a_topic_get_its_inbox_events(hub, port_kind):
    user = f"bell-{port_kind}"
    jwt = token(user)
    async with httpx.AsyncClient(timeout=30) as client:
        async with SSEReader(client, hub.url(port_kind, f"/sse?token={jwt}")) as sse, \
                ws_connect(hub.url(port_kind, f"/ws?token={jwt}", "ws")) as ws:
            connected = (await sse.next("connected"))[1]
            assert connected["topics"] == [] and connected["user"] == user
            assert await sse.next() == ("unread_count", {"count": 0})
            assert (await ws_next(ws, "unread_count"))["data"] == {"count": 0}
            poll = asyncio.ensure_future(client.get(hub.url("asgi", f"/poll?timeout=10&token={jwt}")))
            await asyncio.sleep(0.5)  # the poll is waiting

            record = create(hub, user, "for the bell")
            assert await sse.next() == ("notification", record)
            assert await sse.next() == ("unread_count", {"count": 1})
            assert (await ws_next(ws, "notification"))["data"] == record
            answer = (await poll).json()
            assert {"event": "notification", "data": record} in answer["messages"]
            assert answer["unread_count"] == 1

            deleted = httpx.delete(hub.base + f"/notifications/{record['id']}", headers=bearer(jwt), timeout=10)
            assert deleted.status_code == 200
            assert await sse.next() == ("notification_deleted", {"id": record["id"]})
            assert await sse.next() == ("unread_count", {"count": 0})


def test_a_request_without_a_topic_or_a_token_is_refused(hub):
    # Not dev mode: no token is a 401 before the topic is looked at.
    for url in (hub.url("asgi", "/sse"), hub.url("native", "/sse"), hub.url("asgi", "/poll?timeout=0")):
        assert httpx.get(url, timeout=10).status_code == 401, url


def test_a_dev_anonymous_request_without_a_topic_is_a_400(tmp_path):
    dev = HubProcess(dev=True).start(tmp_path)
    try:
        for port_kind in ("asgi", "native"):
            response = httpx.get(dev.url(port_kind, "/sse"), timeout=10)
            assert response.status_code == 400 and "at least one topic" in response.json()["reason"]
        response = httpx.get(dev.url("asgi", "/poll?timeout=0"), timeout=10)
        assert response.status_code == 400 and "at least one topic" in response.json()["reason"]
    finally:
        dev.stop()

"""The Python client surfaces every event the hub sends a user (issue 22): the
inbox's ``notification``, ``notification_deleted`` and ``unread_count``, the
server API's ``unsubscribed``, and it asks for presence as hubbub.js does,
through a real ``hubbub serve`` on both ports."""
from __future__ import annotations

import httpx
import pytest

from hubbub.client import connect
from hubbub.errors import HubError

from .helpers_user import KEY, SECURED_ENV, bearer
from .server import HubProcess
from .tokens import token


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = HubProcess(dev=False, env=SECURED_ENV).start(tmp_path_factory.mktemp("client-events"))
    yield process
    process.stop()


async def next_kind(client, kind: str, timeout: float = 10.0):
    while True:
        message = await client.next(timeout)
        if message.kind == kind:
            return message


async def test_inbox_events_reach_the_client(hub, port_kind):
    user = f"ce-{port_kind}"
    jwt = token(user)
    async with connect(hub.url(port_kind, "/ws", "ws"), token=jwt, max_retries=1) as client:
        assert (await next_kind(client, "unread_count")).data == {"count": 0}  # on connect
        record = httpx.post(hub.base + "/notifications", headers=KEY, timeout=10,
                            json={"user": user, "title": "t", "message": "m"}).json()
        assert (await next_kind(client, "notification")).data == record
        assert (await next_kind(client, "unread_count")).data == {"count": 1}
        httpx.delete(hub.base + f"/notifications/{record['id']}", headers=bearer(jwt), timeout=10)
        assert (await next_kind(client, "notification_deleted")).data == {"id": record["id"]}


async def test_presence_and_a_server_api_unsubscribe(hub, port_kind):
    user = f"cp-{port_kind}"
    topic = f"public.room-{port_kind}"
    jwt = token(user, info={"name": "Cleo"})
    async with connect(hub.url(port_kind, "/ws", "ws"), token=jwt, topics=[topic], max_retries=1) as client:
        present = await client.presence(topic)
        assert present["topic"] == topic and present["count"] == 1
        assert present["users"] == [{"user": user, "info": {"name": "Cleo"}, "connections": 1}]
        with pytest.raises(HubError) as refused:
            await client.presence("user.someone-else.x")
        assert refused.value.code == 403

        answer = httpx.post(hub.base + "/unsubscribe", headers=KEY, timeout=10,
                            json={"user": user, "topic": topic})
        assert answer.status_code == 200 and answer.json() == {"unsubscribed": 1}
        notice = await next_kind(client, "unsubscribed")
        assert notice.topic == topic and topic not in client.subscriptions

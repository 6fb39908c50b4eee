"""POST /publish and /healthz (SPEC 10) through the real server."""
import asyncio
import json
import uuid

import httpx
import pytest

from .server import ws_connect, ws_messages

API_KEY = "test-api-key-0123456789"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A production-mode hub: API key and JWT secret required."""
    from .server import HubProcess

    process = HubProcess(dev=False, env={"HUBBUB_API_KEY": API_KEY,
                                         "HUBBUB_JWT_SECRET": "s" * 32}).start(tmp_path_factory.mktemp("sec"))
    yield process
    process.stop()


def post(hub, body, headers=None, raw=None):
    return httpx.post(hub.base + "/publish", content=raw if raw is not None else json.dumps(body),
                      headers={"content-type": "application/json", **(headers or {})}, timeout=10)


def test_single_and_batch_return_increasing_ids(hub):
    one = post(hub, {"topic": "pub.a", "data": 1})
    assert one.status_code == 200
    [first] = one.json()["ids"]
    batch = post(hub, [{"topic": "pub.a", "data": 2}, {"topic": "pub.b", "data": 3, "ephemeral": True},
                       {"topic": "pub.c", "data": 4, "priority": "critical", "key": "k", "tags": {"a": "b"}}])
    assert batch.status_code == 200
    ids = batch.json()["ids"]
    assert ids[1] is None  # ephemeral: not kept, no id
    assert len({first, ids[0], ids[2]}) == 3


async def test_a_published_batch_arrives_whole_and_in_order(hub):
    p = "b" + uuid.uuid4().hex[:8]
    async with ws_connect(hub.url("asgi", f"/ws?topic={p}", "ws")) as ws:
        await asyncio.sleep(0.2)
        post(hub, [{"topic": p, "data": i} for i in range(20)])
        assert [m["data"] for m in await ws_messages(ws, 20)] == list(range(20))


@pytest.mark.parametrize("body, fragment", [
    ({"data": 1}, "needs 'topic' and 'data'"),
    ({"topic": "a"}, "needs 'topic' and 'data'"),
    ({"topic": "a b", "data": 1}, "whitespace"),
    ({"topic": "a", "data": 1, "priority": "urgent"}, "priority must be one of"),
    ({"topic": "a", "data": 1, "event": "two words"}, "event must be"),
    ({"topic": "a", "data": 1, "event": "x\ndata: injected"}, "event must be"),
    ({"topic": "a", "data": 1, "tags": {"k": 1}}, "must map a string to a string"),
    ({"topic": "a", "data": 1, "key": 5}, "key must be a string"),
    ({"topic": "a", "data": 1, "ephemeral": "yes"}, "ephemeral must be"),
    ({"topic": "a", "data": 1, "colour": "red"}, "unknown field"),
    ([], "empty batch"),
    ([{"topic": "ok", "data": 1}, {"topic": "bad..", "data": 2}], "publication 1:"),
    ("just a string", "must be a JSON object"),
])
def test_invalid_publications_are_400_naming_the_problem(hub, body, fragment):
    response = post(hub, body)
    assert response.status_code == 400
    assert response.json()["code"] == 400 and fragment in response.json()["reason"]


def test_invalid_json_is_400(hub):
    response = post(hub, None, raw=b"{nope")
    assert response.status_code == 400 and "not valid JSON" in response.json()["reason"]


async def test_a_rejected_batch_publishes_nothing(hub):
    p = "r" + uuid.uuid4().hex[:8]
    async with ws_connect(hub.url("asgi", f"/ws?topic={p}", "ws")) as ws:
        await asyncio.sleep(0.2)
        assert post(hub, [{"topic": p, "data": "a"}, {"topic": "", "data": "b"}]).status_code == 400
        hub.publish({"topic": p, "data": "marker"})
        assert [m["data"] for m in await ws_messages(ws, 1)] == ["marker"]


def test_body_over_1_mib_is_413(hub):
    response = post(hub, None, raw=b'{"topic": "a", "data": "' + b"x" * (1 << 20) + b'"}')
    assert response.status_code == 413


def test_data_over_max_message_bytes_is_413(hub):
    response = post(hub, {"topic": "a", "data": "x" * 70_000})
    assert response.status_code == 413
    assert "over the 65536-byte limit" in response.json()["reason"]


def test_idempotency_key_returns_the_first_ids(hub):
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    first = post(hub, {"topic": "idem.a", "data": 1}, headers)
    again = post(hub, {"topic": "idem.a", "data": 1}, headers)
    other = post(hub, {"topic": "idem.a", "data": 1}, {"Idempotency-Key": uuid.uuid4().hex})
    assert first.json()["ids"] == again.json()["ids"]
    assert other.json()["ids"] != first.json()["ids"]
    assert again.headers.get("idempotent-replayed") == "true"


@pytest.mark.parametrize("headers, status, fragment", [
    ({}, 401, "API key required"),
    ({"Authorization": "Bearer wrong"}, 401, "invalid API key"),
    ({"X-API-Key": "wrong"}, 401, "invalid API key"),
    ({"Authorization": f"Bearer {API_KEY}"}, 200, None),
    ({"X-API-Key": API_KEY}, 200, None),
])
def test_api_key_guards_publish(secured, headers, status, fragment):
    response = post(secured, {"topic": "k.a", "data": 1}, headers)
    assert response.status_code == status
    if fragment:
        assert fragment in response.json()["reason"]
        assert response.headers["www-authenticate"] == "Bearer"


def test_healthz(hub):
    response = httpx.get(hub.base + "/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_client_disconnecting_mid_request_hurts_nobody(hub):
    import socket

    for port in (hub.port, hub.fast_port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"topic\": \"half")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /sse?topic=half.a HTTP/1.1\r\nHost: x\r\n")  # head never finished
    assert post(hub, {"topic": "after.a", "data": 1}).status_code == 200
    assert httpx.get(hub.base + "/healthz").json()["status"] == "ok"

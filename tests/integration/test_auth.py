"""Authentication and permissions (SPEC 1, 5, 6, 11) on both ports: every attack
is refused with the right status or close code and nothing is delivered; every
allowed path works."""
import asyncio
import json
import time
import uuid

import httpx
import pytest
import websockets

from .server import HubProcess, ws_connect, ws_messages
from .tokens import API_KEY, AUDIENCE, SECRET, hs256_with_key_bytes, rsa_pair, token, unsigned_token

PRIVATE_KEY, PUBLIC_KEY = rsa_pair()


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """Production mode: HS256 and RS256 both allowed, each with its own key."""
    process = HubProcess(dev=False, env={
        "HUBBUB_JWT_SECRET": SECRET, "HUBBUB_JWT_PUBLIC_KEY": PUBLIC_KEY,
        "HUBBUB_JWT_ALGORITHMS": "HS256,RS256", "HUBBUB_JWT_AUDIENCE": AUDIENCE,
        "HUBBUB_API_KEY": API_KEY, "HUBBUB_ACCESS_LOG": "1", "HUBBUB_CLIENT_PUBLISH_RATE": "5",
        "HUBBUB_MAX_CONNECTIONS_PER_USER": "3",
    })
    process.start(tmp_path_factory.mktemp("secured"))
    yield process
    process.stop()


def publish(hub, topic, data):
    response = httpx.post(hub.base + "/publish", json={"topic": topic, "data": data},
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["ids"][0]


ATTACKS = {
    "garbage": "not-a-jwt",
    "wrong signature": token(secret="another-secret-0123456789-another"),
    "alg none": unsigned_token(),
    # HS256 signed with the RSA public key as its secret: the classic confusion.
    "hs/rs confusion": hs256_with_key_bytes(PUBLIC_KEY.encode()),
    "expired": token(exp=int(time.time()) - 3600),
    "not yet valid": token(nbf=int(time.time()) + 3600),
    "wrong audience": token(aud="someone-else"),
    "no sub": token(sub=None),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_bad_tokens_are_refused_on_sse(secured, port_kind, attack):
    async with httpx.AsyncClient(timeout=10) as client:
        for how in ("header", "query", "cookie"):
            headers, query = {}, "topic=public.x"
            if how == "header":
                headers["Authorization"] = f"Bearer {ATTACKS[attack]}"
            elif how == "cookie":
                headers["Cookie"] = f"hubbub_token={ATTACKS[attack]}"
            else:
                query += f"&token={ATTACKS[attack]}"
            response = await client.get(secured.url(port_kind, f"/sse?{query}"), headers=headers)
            assert response.status_code == 401, (how, response.text)
            assert response.json()["code"] == 401


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_bad_tokens_close_the_websocket_4401(secured, port_kind, attack):
    url = secured.url(port_kind, f"/ws?topic=public.x&token={ATTACKS[attack]}", "ws")
    async with ws_connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws_messages(ws, 1)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_first_frame_auth_and_its_refusals(secured, port_kind):
    p = "public." + uuid.uuid4().hex[:8]
    async with ws_connect(secured.url(port_kind, "/ws", "ws")) as ws:
        await ws.send(json.dumps({"op": "auth", "token": token("alice"), "id": 1}))
        assert await ws_messages(ws, 1) == [{"op": "ack", "id": 1}]
        await ws.send(json.dumps({"op": "subscribe", "topic": p, "id": 2}))
        ack = (await ws_messages(ws, 1))[0]
        assert ack["op"] == "ack" and ack["id"] == 2
        publish(secured, p, "hello")
        assert (await ws_messages(ws, 1))[0]["data"] == "hello"
    for first, reason in (({"op": "subscribe", "topic": p}, "authentication required"),
                          ({"op": "auth", "token": ATTACKS["expired"]}, "expired"),
                          ({"op": "auth", "token": token("alice"), "user": "bob"}, "auth does not take 'user'")):
        async with ws_connect(secured.url(port_kind, "/ws", "ws")) as ws:
            await ws.send(json.dumps(first))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws_messages(ws, 1)
            assert closed.value.rcvd.code == 4401 and reason in closed.value.rcvd.reason


async def test_a_close_reason_quoting_the_client_is_cut_to_fit_on_a_character(secured, port_kind):
    # The reason names the client's own keys (non-ASCII here, ~250 bytes of
    # them): cut to 120 bytes and never mid-character, else the client would
    # fail the connection for invalid UTF-8 instead of reading 4401.
    frame = {"op": "auth", "token": token("alice"), **{k * 40: 1 for k in "яюэ"}}
    async with ws_connect(secured.url(port_kind, "/ws", "ws")) as ws:
        await ws.send(json.dumps(frame))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws_messages(ws, 1)
    reason = closed.value.rcvd.reason
    assert closed.value.rcvd.code == 4401 and reason.startswith("auth does not take 'э")
    assert 115 <= len(reason.encode()) <= 120, reason


async def test_no_auth_frame_within_5_seconds_closes_4401(secured, port_kind):
    async with ws_connect(secured.url(port_kind, "/ws", "ws")) as ws:
        started = time.monotonic()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws_messages(ws, 1, timeout=10)
    assert closed.value.rcvd.code == 4401
    assert 4.5 < time.monotonic() - started < 8


async def test_no_token_is_401_on_sse_and_poll(secured, port_kind):
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(secured.url(port_kind, "/sse?topic=public.x"))
        assert response.status_code == 401
        assert response.json()["reason"] == "authentication required"
        if port_kind == "asgi":
            assert (await client.get(secured.base + "/poll?topic=public.x&timeout=0")).status_code == 401


@pytest.mark.parametrize("pattern", [
    "user.bob.inbox", "user.bob.>", "user.*.inbox", "*.*", ">", "*.bob.inbox",
    "$sys.connections", "$sys.>", "private.x",
])
async def test_topics_beyond_the_default_grants_are_403(secured, port_kind, pattern):
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(secured.url(port_kind, f"/sse?topic={pattern.replace('>', '%3E')}"),
                                    headers={"Authorization": f"Bearer {token('alice')}"})
    assert response.status_code == 403 and pattern in response.json()["reason"]
    async with ws_connect(secured.url(port_kind, f"/ws?token={token('alice')}", "ws")) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": pattern, "id": 1}))
        [error] = await ws_messages(ws, 1)
        assert error["code"] == 403 and error["id"] == 1


async def test_default_grants_and_isolation(secured, port_kind):
    n = uuid.uuid4().hex[:6]
    alice = secured.url(port_kind, f"/ws?token={token('alice')}&topic=user.alice.{n}.%3E&topic=public.{n}", "ws")
    bob = secured.url(port_kind, f"/ws?token={token('bob')}&topic=user.bob.{n}.%3E", "ws")
    async with ws_connect(alice) as a, ws_connect(bob) as b:
        await asyncio.sleep(0.2)
        publish(secured, f"user.alice.{n}.inbox", "for alice")
        publish(secured, f"user.bob.{n}.inbox", "for bob")
        publish(secured, f"public.{n}", "for all")
        assert [m["data"] for m in await ws_messages(a, 2)] == ["for alice", "for all"]
        assert [m["data"] for m in await ws_messages(b, 1)] == ["for bob"]


async def test_claims_grant_and_limit(secured, port_kind):
    n = uuid.uuid4().hex[:6]
    claims = {"subscribe": [f"team.{n}.*"], "publish": [f"team.{n}.chat"]}
    url = secured.url(port_kind, f"/ws?token={token('carol', **claims)}", "ws")
    async with ws_connect(url) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": f"team.{n}.*", "id": 1}))
        await ws.send(json.dumps({"op": "subscribe", "topic": f"public.{n}", "id": 2}))  # not granted now
        await ws.send(json.dumps({"op": "publish", "topic": f"team.{n}.chat", "data": "hi", "id": 3}))
        await ws.send(json.dumps({"op": "publish", "topic": f"team.{n}.other", "data": "no", "id": 4}))
        await ws.send(json.dumps({"op": "subscribe", "topic": f"team.{n}.>", "id": 5}))  # wider than granted
        got = await ws_messages(ws, 6)
        by_id = {m.get("id"): m for m in got if m["op"] != "message"}
        assert by_id[1]["op"] == "ack"
        assert by_id[2]["code"] == 403
        assert by_id[3]["op"] == "ack" and by_id[3]["event_id"]
        assert by_id[4]["code"] == 403 and "not allowed to publish" in by_id[4]["reason"]
        assert by_id[5]["code"] == 403
        assert [m["data"] for m in got if m["op"] == "message"] == ["hi"]


async def test_publish_without_a_claim_is_refused(secured, port_kind):
    async with ws_connect(secured.url(port_kind, f"/ws?token={token('dave')}", "ws")) as ws:
        await ws.send(json.dumps({"op": "publish", "topic": "public.x", "data": 1, "id": 1}))
        [error] = await ws_messages(ws, 1)
        assert error["code"] == 403


async def test_rs256_tokens_work_and_headers_and_cookies_carry_tokens(secured, port_kind):
    rs = token("erin", secret=PRIVATE_KEY, alg="RS256")
    n = uuid.uuid4().hex[:6]
    async with httpx.AsyncClient(timeout=10) as client:
        for headers in ({"Authorization": f"Bearer {rs}"}, {"Cookie": f"hubbub_token={rs}"}):
            async with client.stream("GET", secured.url(port_kind, f"/sse?topic=user.erin.{n}"),
                                     headers=headers) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                async with asyncio.timeout(5):
                    while not (await anext(lines)).startswith("data:"):
                        pass
                    publish(secured, f"user.erin.{n}", "ok")
                    async for line in lines:
                        if line.startswith("data:") and '"ok"' in line:
                            break


async def test_publish_rate_limit_then_persistent_abuse_closes_1008(secured, port_kind):
    claims = {"publish": ["public.>"]}
    async with ws_connect(secured.url(port_kind, f"/ws?token={token('frank', **claims)}", "ws")) as ws:
        started = time.monotonic()
        for i in range(40):
            await ws.send(json.dumps({"op": "publish", "topic": "public.flood", "data": i, "id": i}))
        replies = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    replies.extend(json.loads(line) for line in (await ws.recv()).split("\n"))
        elapsed = time.monotonic() - started
        acks = [r for r in replies if r["op"] == "ack"]
        limited = [r for r in replies if r["op"] == "error" and r["code"] == 429]
        # The burst (2 x 5/s), plus at most what refilled at 5/s while the hub read the
        # flood (a loaded machine reads it slower: the bound follows the time it took).
        assert 10 <= len(acks) <= 10 + 5 * elapsed + 1, (len(acks), elapsed)
        assert limited
        assert closed.value.rcvd.code == 1008


async def test_connections_per_user_are_capped(secured, port_kind):
    user_token = token("gina")
    async with httpx.AsyncClient(timeout=10) as client:
        streams = []
        try:
            for _ in range(3):
                response = await client.send(client.build_request(
                    "GET", secured.url(port_kind, "/sse?topic=public.cap"),
                    headers={"Authorization": f"Bearer {user_token}"}), stream=True)
                assert response.status_code == 200
                streams.append(response)
            extra = await client.get(secured.url(port_kind, "/sse?topic=public.cap"),
                                     headers={"Authorization": f"Bearer {user_token}"})
            assert extra.status_code == 429
        finally:
            for response in streams:
                await response.aclose()


def test_query_tokens_never_reach_the_log(secured):
    secret_token = token("harry")
    for port_kind in ("asgi", "native"):
        with httpx.Client(timeout=5) as client:
            with client.stream("GET", secured.url(port_kind, f"/sse?topic=public.log&token={secret_token}")):
                pass
    time.sleep(0.5)
    output = secured.output()
    assert "token=[REDACTED]" in output
    assert secret_token not in output
    assert secret_token.split(".")[2] not in output  # not even the signature


def test_api_key_is_not_a_user_token_and_vice_versa(secured):
    response = httpx.post(secured.base + "/publish", json={"topic": "public.x", "data": 1},
                          headers={"Authorization": f"Bearer {token('alice')}"})
    assert response.status_code == 401
    stream = httpx.get(secured.url("asgi", "/sse?topic=public.x"),
                       headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)
    assert stream.status_code == 401


async def test_connection_attempts_per_ip_are_limited(make_hub, port_kind):
    hub = make_hub(env={"HUBBUB_CONNECT_RATE": "5"})  # burst 10
    async with httpx.AsyncClient(timeout=10) as client:
        statuses = []
        for _ in range(25):
            response = await client.get(hub.url(port_kind, "/sse?topic=a..b"))  # refused cheaply after admission
            statuses.append(response.status_code)
        assert 429 in statuses and statuses[0] == 400
        assert statuses.count(400) <= 12
        async with ws_connect(hub.url(port_kind, "/ws", "ws")) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws_messages(ws, 2)
            assert closed.value.rcvd.code == 1013

"""Browsers' origins (SPEC 1) on both ports: CORS for the browser endpoints and the
WebSocket Origin check. Attacks: a foreign page opening an authenticated WebSocket
with the user's cookie, a foreign page preflighting the SSE stream."""
import json
import uuid

import httpx
import pytest
import websockets

from .server import HubProcess, ws_connect, ws_messages
from .test_cli import run
from .tokens import API_KEY, AUDIENCE, SECRET, token

LISTED = "https://app.example"
EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    process = HubProcess(dev=False, env={
        "HUBBUB_JWT_SECRET": SECRET, "HUBBUB_JWT_AUDIENCE": AUDIENCE, "HUBBUB_API_KEY": API_KEY,
        "HUBBUB_CORS_ORIGINS": f"{LISTED}, http://localhost:3000",
    })
    process.start(tmp_path_factory.mktemp("cors"))
    yield process
    process.stop()


def preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(url, timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id, authorization"})


def test_sse_preflight_from_a_listed_origin_is_granted_with_credentials(secured, port_kind):
    response = preflight(secured.url(port_kind, "/sse?topic=public.x"), LISTED)
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == LISTED
    assert response.headers["access-control-allow-credentials"] == "true"
    allowed = response.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "content-type", "last-event-id", "idempotency-key"):
        assert header in allowed
    assert "GET" in response.headers["access-control-allow-methods"]
    assert int(response.headers["access-control-max-age"]) > 0
    assert "origin" in response.headers["vary"].lower()


def test_sse_preflight_from_an_unlisted_origin_grants_nothing(secured, port_kind):
    response = preflight(secured.url(port_kind, "/sse?topic=public.x"), EVIL)
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-credentials" not in response.headers


async def test_sse_stream_carries_cors_headers_only_for_a_listed_origin(secured, port_kind):
    url = secured.url(port_kind, f"/sse?topic=public.x&token={token('alice')}")
    async with httpx.AsyncClient(timeout=10) as client:
        for origin, granted in ((LISTED, True), (EVIL, False)):
            async with client.stream("GET", url, headers={"Origin": origin}) as response:
                assert response.status_code == 200
                assert "origin" in response.headers["vary"].lower()
                if granted:
                    assert response.headers["access-control-allow-origin"] == origin
                    assert response.headers["access-control-allow-credentials"] == "true"
                else:
                    assert "access-control-allow-origin" not in response.headers
        # A refusal before the stream is readable by the listed page too (it can show why).
        response = await client.get(secured.url(port_kind, "/sse?topic=public.x"), headers={"Origin": LISTED})
        assert response.status_code == 401
        assert response.headers["access-control-allow-origin"] == LISTED


@pytest.mark.parametrize("path", ["/poll?topic=public.x", "/notifications", "/notifications/7/read",
                                  "/presence/public.x", "/hubbub.js", "/hubbub.mjs"])
def test_every_browser_endpoint_answers_preflight(secured, path):
    granted = preflight(secured.url("asgi", path), LISTED)
    assert granted.status_code == 204 and granted.headers["access-control-allow-origin"] == LISTED
    refused = preflight(secured.url("asgi", path), EVIL)
    assert "access-control-allow-origin" not in refused.headers


def test_publish_is_server_to_server_and_gets_no_cors(secured):
    response = preflight(secured.url("asgi", "/publish"), LISTED)
    assert "access-control-allow-origin" not in response.headers
    response = httpx.post(secured.url("asgi", "/publish"), json={"topic": "public.x", "data": 1},
                          headers={"Origin": LISTED, "Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


def test_poll_response_carries_cors_headers(secured):
    response = httpx.get(secured.url("asgi", f"/poll?topic=public.x&timeout=0&token={token('alice')}"),
                         headers={"Origin": LISTED}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == LISTED


# -- WebSocket Origin -----------------------------------------------------------------
async def test_cross_origin_websocket_with_the_cookie_is_refused_403(secured, port_kind):
    """Cross-site WebSocket hijacking: the browser would attach the cookie for any page."""
    cookie = {"Cookie": f"hubbub_token={token('alice')}"}
    for origin in (EVIL, "null", f"http://127.0.0.1:{secured.port + 7}"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with ws_connect(secured.url(port_kind, "/ws?topic=public.x", "ws"), origin=origin,
                                  additional_headers=cookie):
                pass
        assert refused.value.response.status_code == 403, origin


async def test_allowed_origins_and_non_browsers_open_websockets(secured, port_kind):
    p = "public." + uuid.uuid4().hex[:8]
    port = secured.port if port_kind == "asgi" else secured.fast_port
    cookie = {"Cookie": f"hubbub_token={token('alice')}"}
    # Same origin (Origin names the Host), a listed origin, and no Origin at all (not a browser).
    for origin in (f"http://127.0.0.1:{port}", LISTED, None):
        async with ws_connect(secured.url(port_kind, "/ws", "ws"), origin=origin,
                              additional_headers=cookie) as ws:
            await ws.send(json.dumps({"op": "subscribe", "topic": p, "id": 1}))
            assert (await ws_messages(ws, 1))[0]["op"] == "ack", origin


# -- configuration -----------------------------------------------------------------------
def test_any_origin_is_refused_outside_dev():
    for command in (["config"], ["serve"]):
        result = run(command, {"HUBBUB_CORS_ORIGINS": "*", "HUBBUB_DEV": "0",
                               "HUBBUB_JWT_SECRET": SECRET, "HUBBUB_API_KEY": API_KEY})
        assert result.returncode == 2, result.stderr
        assert "HUBBUB_CORS_ORIGINS" in result.stderr and "--dev" in result.stderr
    result = run(["config"], {"HUBBUB_CORS_ORIGINS": "app.example"})
    assert result.returncode == 2 and "HUBBUB_CORS_ORIGINS" in result.stderr
    result = run(["config"], {"HUBBUB_CORS_ORIGINS": "*", "HUBBUB_DEV": "1"})
    assert result.returncode == 0, result.stderr


def test_any_origin_in_dev_never_allows_credentials(make_hub):
    hub = make_hub(env={"HUBBUB_CORS_ORIGINS": "*"})
    for kind in ("asgi", "native"):
        response = preflight(hub.url(kind, "/sse?topic=x"), EVIL)
        assert response.status_code == 204
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers

"""The probes (SPEC 10) through a real ``hubbub serve``, on both ports.

``/healthz`` and ``/readyz`` (readiness) and ``/livez`` (liveness) answer
alike on the ASGI port and the fast port (the same endpoint; only the
``server`` and ``date`` headers Granian adds differ), HEAD included.
Readiness turns 503 while draining and with the backplane down; liveness
stays 200 through both. (A store that cannot open: test_notifications.py.)

Every socket is on loopback; every wait is bounded.
"""
from __future__ import annotations

import secrets
import signal
import socket
import time

import httpx
import pytest

from .server import HubProcess

PATHS = ("/healthz", "/readyz", "/livez")
SERVER_HEADERS = ("server", "date")  # Granian's own, on the ASGI port only
READY_FIELDS = {"status", "worker", "connections", "subscriptions", "published", "delivered", "dropped",
                "queued", "draining"}


def raw_exchange(port: int, method: str, path: str) -> bytes:
    """The whole answer to one HTTP/1.1 request, read until the hub closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def hub_part(answer: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(status line, the hub's own header lines, body) of a raw answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, sorted(line for line in lines
                          if line.split(b":")[0].lower().decode() not in SERVER_HEADERS), body


def both(hub: HubProcess, path: str) -> dict[str, httpx.Response]:
    return {kind: httpx.get(hub.url(kind, path), timeout=5) for kind in ("asgi", "native")}


def wait_for(check, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(0.1)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", PATHS)
def test_both_ports_answer_the_probes_alike(make_hub, path, method):
    hub = make_hub()  # its own: no other test's connections move the counts between two answers
    asgi = hub_part(raw_exchange(hub.port, method, path))
    native = hub_part(raw_exchange(hub.fast_port, method, path))
    assert asgi == native
    status, headers, body = native
    assert status == b"HTTP/1.1 200 OK"
    assert b"content-type: application/json" in headers
    get_body = hub_part(raw_exchange(hub.fast_port, "GET", path))[2]
    assert f"content-length: {len(get_body)}".encode() in headers  # HEAD: a GET's length...
    assert body == (b"" if method == "HEAD" else get_body)  # ...and no body


def test_readiness_keeps_the_healthz_fields_and_liveness_is_small(make_hub):
    hub = make_hub()
    worker = httpx.get(hub.base + "/readyz", timeout=5).json()["worker"]  # Granian's worker process
    for path in ("/readyz", "/healthz"):
        for kind, answer in both(hub, path).items():
            assert answer.status_code == 200 and set(answer.json()) == READY_FIELDS, (kind, path)
            assert answer.json()["status"] == "ok" and answer.json()["worker"] == worker
    for kind, answer in both(hub, "/livez").items():
        assert answer.status_code == 200 and answer.json() == {"status": "alive", "worker": worker}


@pytest.mark.parametrize("path", PATHS)
def test_other_methods_are_405_alike(hub, path):
    asgi = hub_part(raw_exchange(hub.port, "POST", path))
    native = hub_part(raw_exchange(hub.fast_port, "POST", path))
    assert asgi == native
    assert asgi[0] == b"HTTP/1.1 405 Method Not Allowed" and b"allow: GET, HEAD" in asgi[1]


def test_draining_is_not_ready_but_alive(make_hub):
    hub = make_hub(env={"HUBBUB_DRAIN_GRACE": "4", "HUBBUB_DRAIN_TIMEOUT": "2"})
    hub.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: httpx.get(hub.base + "/readyz", timeout=2).status_code == 503, 3, "/readyz 503")
    started = time.monotonic()
    for path in ("/readyz", "/healthz"):
        for kind, answer in both(hub, path).items():
            assert answer.status_code == 503 and answer.json() == {"status": "draining"}, (kind, path)
    for kind, answer in both(hub, "/livez").items():
        assert answer.status_code == 200, kind
    assert time.monotonic() - started < 3  # all inside the grace
    assert hub.proc.wait(15) == 0


def test_backplane_down_is_not_ready_but_alive(redis_server, make_hub):
    """An orchestrator restarts on /livez: a Redis outage must never restart healthy nodes."""
    hub = make_hub(env={"HUBBUB_BACKPLANE": redis_server.url,
                        "HUBBUB_BACKPLANE_PREFIX": f"hubbub-test-{secrets.token_hex(4)}:",
                        "HUBBUB_PRESENCE_TTL": "3", "HUBBUB_HEARTBEAT": "1"})
    redis_server.kill()
    wait_for(lambda: all(a.status_code == 503 for a in both(hub, "/readyz").values()), 5,
             "/readyz 503 on both ports after Redis was killed")
    for path in ("/readyz", "/healthz"):
        for kind, answer in both(hub, path).items():
            assert answer.status_code == 503 and answer.json()["status"] == "backplane_unavailable", kind
    for kind, answer in both(hub, "/livez").items():
        assert answer.status_code == 200 and answer.json()["status"] == "alive", kind
    redis_server.start()
    wait_for(lambda: all(a.status_code == 200 for a in both(hub, "/readyz").values()), 20,
             "/readyz 200 on both ports once Redis is back")

"""Helpers for tests across a Redis that loses its data: a hub on a private
``redis-server`` (the ``redis_server`` fixture of tests/conftest.py) and the
restart that starts a new epoch of ids (SPEC 13, docs/protocol.md)."""
from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx

from .server import HubProcess


def hub_on(redis_server, log_dir: Path, **env: str) -> HubProcess:
    """A --dev hub whose backplane is ``redis_server``, started; heartbeats every second."""
    return HubProcess(env={"HUBBUB_BACKPLANE": redis_server.url,
                           "HUBBUB_BACKPLANE_PREFIX": f"hubbub-test-{secrets.token_hex(4)}:",
                           "HUBBUB_HEARTBEAT": "1", **env}).start(log_dir)


def health(hub: HubProcess) -> int:
    try:
        return httpx.get(hub.base + "/healthz", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def wait_health(hub: HubProcess, status: int, timeout: float) -> None:
    """Wait (polling, bounded) until /healthz answers ``status``."""
    deadline = time.monotonic() + timeout
    while health(hub) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"/healthz did not answer {status} within {timeout} s")
        time.sleep(0.1)


def lose_redis_data(redis_server, hub: HubProcess) -> None:
    """SIGKILL the hub's Redis (no persistence: its data is gone), wait for the
    hub to notice, start it again empty on the same port and wait until the
    hub is back, in a new epoch."""
    redis_server.kill()
    wait_health(hub, 503, 10)
    redis_server.start()
    wait_health(hub, 200, 15)


def epoch(event_id: str) -> str:
    """The epoch part of an id ``{epoch}-{seq}``: tests look inside ids; clients must not order them."""
    return event_id.rpartition("-")[0]

"""Fixtures for the backplane tests: the machine's Redis, and Redis servers a test owns.

The shared Redis at 127.0.0.1:6379 is used under a key prefix of the test's
own, deleted afterwards. Fault tests start their own ``redis-server`` on a
free port (no persistence, so a restart loses everything, as a Redis that
keeps nothing on disk does) and kill it. Under CI=true a missing Redis is a
failure that says so; elsewhere the tests are skipped with the reason.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time

import pytest
import redis  # the `test` extra installs it

SHARED_URL = "redis://127.0.0.1:6379/0"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the backplane tests need it; start it with"
                    f" `redis-server --daemonize yes --bind 127.0.0.1 --port 6379"
                    f" --save '' --appendonly no`)", pytrace=False)
    pytest.skip(reason)


def cleanup(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def prefix(shared_redis):
    """A key prefix of this test's own on the shared Redis, cleaned afterwards."""
    prefix = f"hubbub-test-{secrets.token_hex(4)}:"
    yield prefix
    cleanup(shared_redis, prefix)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server this test owns: start, kill -9, pause, restart on the same port."""

    def __init__(self, args: list[str] = ()) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = list(args)  # more redis-server options
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no goodbye on any socket, and (no persistence) all data gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def client(self):
        return redis.Redis.from_url(self.url)


@pytest.fixture
def local_broker():
    """Start local broker processes (as ``hubbub serve --workers N`` does), each stopped
    at the end; ``start(...).deaths`` records an exit it did not ask for."""
    from hubbub.backplane.local_server import LocalBrokerProcess

    started = []

    def start(history_size: int = 1000, **options) -> LocalBrokerProcess:
        deaths: list[int] = []
        proc = LocalBrokerProcess(history_size, on_death=deaths.append, **options)
        proc.deaths = deaths
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGCONT)  # a test may have left it stopped
        proc.stop()

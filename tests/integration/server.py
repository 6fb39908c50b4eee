"""Run a real ``hubbub serve`` (Granian + the native listener) for a test, on loopback."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import websockets

STARTUP_TIMEOUT = 30.0


def free_port_pair() -> int:
    """A port P with P+1 also free (PORT and FAST_PORT)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


class PortTaken(RuntimeError):
    """The hub could not bind its ports: another process got there first."""


class HubProcess:
    def __init__(self, env: dict[str, str] | None = None, dev: bool = True, args: list[str] = (),
                 tls=None) -> None:
        self.port = free_port_pair()
        self.fast_port = self.port + 1
        self.env = {**os.environ, "HUBBUB_PORT": str(self.port), "HUBBUB_FAST_PORT": str(self.fast_port),
                    "PYTHONUNBUFFERED": "1",
                    # Stops stay fast; test_drain.py sets a grace where it is the point.
                    "HUBBUB_DRAIN_GRACE": "0", **(env or {})}
        # The notification store goes with the test's files, never the repo
        # (a test that sets HUBBUB_DATA_DIR or HUBBUB_STORE chooses its own).
        self.own_data_dir = "HUBBUB_DATA_DIR" not in (env or {})
        self.dev = dev
        self.args = list(args)
        self.tls = tls  # an ssl.SSLContext trusting the hub's certificate, when it serves TLS
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def url(self, port_kind: str, path: str, scheme: str = "http") -> str:
        port = self.port if port_kind == "asgi" else self.fast_port
        return f"{scheme}://127.0.0.1:{port}{path}"

    def start(self, log_dir: Path) -> "HubProcess":
        """Start and wait until both ports answer. On a first start whose
        ports another process took in the meantime (free_port_pair only
        picked them), try again on fresh ones; a restart keeps its ports."""
        first = self.log_path is None
        for attempt in range(3):
            try:
                return self._start(log_dir)
            except PortTaken:
                self.log.close()
                if not first or attempt == 2:
                    raise
                self.port = free_port_pair()
                self.fast_port = self.port + 1
                self.env.update(HUBBUB_PORT=str(self.port), HUBBUB_FAST_PORT=str(self.fast_port))
        raise AssertionError("unreachable")

    def _start(self, log_dir: Path) -> "HubProcess":
        self.log_path = log_dir / f"hub-{self.port}.log"
        if self.own_data_dir:  # the first start's directory: a restart finds its data again
            self.env["HUBBUB_DATA_DIR"] = str(log_dir)
            self.own_data_dir = False
        cmd = [sys.executable, "-m", "hubbub.cli", "serve", *(["--dev"] if self.dev else []), *self.args]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.output()
                if "address already in use" in output.lower():
                    raise PortTaken(output)
                raise RuntimeError(f"hub exited at start:\n{output}")
            try:
                if self.serving():
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"hub did not start in time:\n{self.output()}")

    def serving(self) -> bool:
        """Whether the started hub serves yet: ready on PORT, and FAST_PORT open."""
        return httpx.get(self.base + "/healthz", timeout=1, verify=self.tls or True).status_code == 200 \
            and _port_open(self.fast_port)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise

    def stats(self) -> dict:
        return httpx.get(self.base + "/healthz", timeout=5, verify=self.tls or True).json()

    def publish(self, *publications: dict, headers: dict | None = None) -> list:
        body = publications[0] if len(publications) == 1 else list(publications)
        response = httpx.post(self.base + "/publish", json=body, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["ids"]


def stop_all(procs: list[HubProcess]) -> None:
    """A fixture's teardown: stop every hub it started, even after one fails to
    stop (the first failure is raised once all were tried)."""
    failure: Exception | None = None
    for proc in procs:
        try:
            proc.stop()
        except Exception as error:  # noqa: BLE001 - raised below, after the others
            failure = failure or error
    if failure is not None:
        raise failure


def _port_open(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# Sent to every authenticated WS on connect (SPEC 5, 8): tests of other things
# do not count it; the inbox tests read it on purpose (skip=()).
CONNECT_COUNT = ("unread_count",)


async def ws_messages(ws, count: int, timeout: float = 5.0, skip=CONNECT_COUNT) -> list[dict]:
    """Read until ``count`` JSON messages arrived (frames may batch several, one per line)."""
    out: list[dict] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            frame = await ws.recv()
            out.extend(m for m in map(json.loads, frame.split("\n")) if m.get("op") not in skip)
    return out


async def ws_until(ws, predicate, timeout: float = 5.0) -> list[dict]:
    """Read messages until one satisfies ``predicate``; returns all read."""
    out: list[dict] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await ws.recv()
            for line in frame.split("\n"):
                out.append(json.loads(line))
                if predicate(out[-1]):
                    return out


def ws_connect(url: str, **kwargs):
    return websockets.connect(url, open_timeout=5, close_timeout=2, **kwargs)

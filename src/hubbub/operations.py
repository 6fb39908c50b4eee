"""The operators' endpoints on the ASGI port: ``/metrics``, ``/dashboard``, ``/dashboard/stream``.

- ``GET /metrics``: Prometheus text format (``metrics.py``); API key unless
  ``HUBBUB_METRICS_PUBLIC=1``.
- ``GET /dashboard``: the live page (``static/dashboard.html``: its own
  small script, canvas charts, nothing fetched from elsewhere).
- ``GET /dashboard/stream``: Server-Sent Events, one ``stats`` event a
  second carrying the aggregated snapshot (``telemetry.py``) that the page
  draws; the first event, ``hello``, carries what does not change.

Both dashboard URLs take the API key as a header or as ``?key=`` (a browser
cannot put a header on a page load or an EventSource). The page removes the
key from its address bar at once, sends no Referer (``Referrer-Policy``) and
may not load anything from another origin (``Content-Security-Policy``);
the access log redacts ``key=``.

``OperationsRoutes.handles(method, path)`` tells the ASGI app whether a
request is ours; ``await routes(path, request, receive, send)`` answers it.
"""
from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson

from . import __version__
from .auth import Request
from .errors import HubError
from .metrics import MetricsEndpoint
from .telemetry import LATENCY_BUCKETS, SAMPLE_PERIOD
from .transports.http import error_response

if TYPE_CHECKING:
    from .hub import Hub

PATHS = ("/metrics", "/dashboard", "/dashboard/stream")
STREAM_PERIOD = 1.0  # seconds between two dashboard updates
SNAPSHOT_REUSE = 0.5  # seconds one aggregated snapshot serves every open dashboard
PAGE_HEADERS = [
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-store"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", "default-src 'none'; script-src 'unsafe-inline'; "
                                "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
                                "frame-ancestors 'none'"),
]
STREAM_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-store"),
    ("x-accel-buffering", "no"),
]


def _page() -> bytes:
    return resources.files("hubbub").joinpath("static", "dashboard.html").read_bytes()


class OperationsRoutes:
    def __init__(self, hub: "Hub") -> None:
        self.hub = hub
        self.metrics = MetricsEndpoint(hub)
        self.page = _page()
        self._snapshot: tuple[float, dict] | None = None

    @staticmethod
    def handles(path: str) -> bool:
        return path in PATHS

    async def __call__(self, method: str, path: str, request: Request, receive, send) -> None:
        if method != "GET":
            await _send(send, 405, orjson.dumps({"code": 405, "reason": f"{method} is not allowed on {path}"}),
                        [("content-type", "application/json"), ("allow", "GET")])
            return
        try:
            if path == "/metrics":
                status, body, headers = self.metrics(request)
                await _send(send, status, body, headers)
                return
            self.check_key(request)
        except HubError as error:
            status, payload, headers = error_response(error)
            await _send(send, status, orjson.dumps(payload), [("content-type", "application/json"), *headers])
            return
        if path == "/dashboard":
            await _send(send, 200, self.page,
                        [*PAGE_HEADERS, ("content-length", str(len(self.page)))])
        else:
            await self.stream(receive, send)

    def check_key(self, request: Request) -> None:
        """The API key, from a header or from ``?key=``; HubError 401 otherwise."""
        key = request.first("key")
        if key is not None:
            request = Request(path=request.path, headers={**request.headers, "x-api-key": key},
                              query=request.query, client=request.client)
        self.hub.auth.check_api_key(request)

    def snapshot(self) -> dict[str, Any]:
        """The aggregated snapshot, shared by the dashboards open in the same half second."""
        now = time.monotonic()
        if self._snapshot is None or now - self._snapshot[0] > SNAPSHOT_REUSE:
            self._snapshot = (now, self.hub.telemetry.aggregate())
        return self._snapshot[1]

    async def stream(self, receive, send) -> None:
        """One ``stats`` event a second until the page goes away or the hub drains."""
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
        watcher = asyncio.ensure_future(watch())
        hub = self.hub
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(k.encode(), v.encode()) for k, v in STREAM_HEADERS]})
            hello = {"version": __version__, "buckets": LATENCY_BUCKETS, "period": STREAM_PERIOD,
                     "sample_period": SAMPLE_PERIOD, "backplane": hub.config.backplane.split(":", 1)[0],
                     "slow_consumer": hub.config.slow_consumer}
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"retry: 2000\nevent: hello\ndata: " + orjson.dumps(hello) + b"\n\n"})
            while not gone.is_set() and not hub.draining:
                stats = {**self.snapshot(), "now": time.time()}
                await send({"type": "http.response.body", "more_body": True,
                            "body": b"event: stats\ndata: " + orjson.dumps(stats) + b"\n\n"})
                try:
                    await asyncio.wait_for(gone.wait(), STREAM_PERIOD)
                except TimeoutError:
                    pass
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the page went away mid-write (servers that do raise)
        finally:
            watcher.cancel()


async def _send(send, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    if not any(name == "content-length" for name, _ in headers):
        headers = [*headers, ("content-length", str(len(body)))]
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers]})
    await send({"type": "http.response.body", "body": body})

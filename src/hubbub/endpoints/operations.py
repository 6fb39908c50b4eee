"""The operators' endpoints on the ASGI port: ``/metrics``, ``/dashboard``, ``/dashboard/stream``.

- ``GET /metrics``: Prometheus text format (``metrics.py``); API key unless
  ``HUBBUB_METRICS_PUBLIC=1``.
- ``GET /dashboard``: the live page (``static/dashboard.html``: its own
  small script, canvas charts, nothing fetched from elsewhere).
- ``GET /dashboard/stream``: Server-Sent Events, one ``stats`` event a
  second carrying the aggregated snapshot (``services/telemetry.py``) that the page
  draws; the first event, ``hello``, carries what does not change.

Both dashboard URLs take the API key as a header or as ``?key=`` (a browser
cannot put a header on a page load or an EventSource). A page loaded with a
good ``?key=`` also gets it as a session cookie (HttpOnly, SameSite=Strict),
so a reload, after the page removed the key from its address bar, still
works; a browser without a good key gets a small page asking for it (401).
The page sends no Referer (``Referrer-Policy``) and may not load anything
from another origin (``Content-Security-Policy``); the access log redacts
``key=``.

``OperationsEndpoints.answer`` answers ``/metrics`` and ``/dashboard``;
the dashboard stream is ``events()``, which a transport sends as an SSE body.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry

from ..auth import Request
from ..errors import HubError
from ..core.counters import LATENCY_BUCKETS
from ..services.telemetry import SAMPLE_PERIOD
from ..version import __version__
from .metrics import HubCollector
from .responses import Response, error_response, not_allowed

if TYPE_CHECKING:
    from ..auth import Authenticator
    from ..config import Config
    from ..core.hub import HubCore
    from ..services.telemetry import Telemetry

PATHS = ("/metrics", "/dashboard", "/dashboard/stream")
KEY_COOKIE = "hubbub_dashboard_key"
STREAM_PATH = "/dashboard/stream"
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


def _page(name: str) -> bytes:
    return resources.files("hubbub").joinpath("static", name).read_bytes()


class OperationsEndpoints:
    def __init__(self, config: "Config", auth: "Authenticator", core: "HubCore",
                 telemetry: "Telemetry") -> None:
        self.config = config
        self.auth = auth
        self.core = core
        self.telemetry = telemetry
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HubCollector(telemetry.aggregate, config.backplane))
        self.page = _page("dashboard.html")
        self.key_page = _page("dashboard_key.html")
        self._snapshot: tuple[float, dict] | None = None

    @staticmethod
    def handles(path: str) -> bool:
        return path in PATHS

    def answer(self, method: str, path: str, request: Request) -> Response | None:
        """The answer to a request on our paths; None when it is a dashboard
        stream that may start (the transport then sends ``events()``)."""
        if method != "GET":
            return not_allowed(method, path, "GET")
        try:
            if path == "/metrics":
                if not self.config.metrics_public:
                    self.auth.check_api_key(request)  # HubError 401 when missing or wrong
                body = generate_latest(self.registry)
                return 200, body, [("content-type", CONTENT_TYPE_LATEST), ("cache-control", "no-store")]
            self.check_key(request)
        except HubError as error:
            if path == "/dashboard" and "text/html" in (request.header("accept") or ""):
                return error.code, self.key_page, list(PAGE_HEADERS)  # a person: ask for the key
            return error_response(error)
        if path == "/dashboard":
            headers = list(PAGE_HEADERS)
            key = request.first("key")
            if key is not None:  # good (checked above): remembered for reloads of this session
                headers.append(("set-cookie", f"{KEY_COOKIE}={quote(key, safe='')}; HttpOnly; SameSite=Strict"))
            return 200, self.page, headers
        return None

    def check_key(self, request: Request) -> None:
        """The API key, from a header, ``?key=`` or the page's cookie; HubError 401 otherwise."""
        key = request.first("key")
        if key is None and not (request.header("authorization") or request.header("x-api-key")):
            key = request.cookie(KEY_COOKIE)
            key = unquote(key) if key is not None else None
        if key is not None:
            request = Request(path=request.path, headers={**request.headers, "x-api-key": key},
                              query=request.query, client=request.client)
        self.auth.check_api_key(request)

    def snapshot(self) -> dict[str, Any]:
        """The aggregated snapshot, shared by the dashboards open in the same half second."""
        now = time.monotonic()
        if self._snapshot is None or now - self._snapshot[0] > SNAPSHOT_REUSE:
            self._snapshot = (now, self.telemetry.aggregate())
        return self._snapshot[1]

    async def events(self, gone: asyncio.Event) -> AsyncIterator[bytes]:
        """The dashboard stream's body: ``hello``, then one ``stats`` event a
        second until the page goes away (``gone``) or the hub drains."""
        config = self.config
        hello = {"version": __version__, "buckets": LATENCY_BUCKETS, "period": STREAM_PERIOD,
                 "sample_period": SAMPLE_PERIOD, "backplane": config.backplane.split(":", 1)[0],
                 "slow_consumer": config.slow_consumer}
        yield b"retry: 2000\nevent: hello\ndata: " + orjson.dumps(hello) + b"\n\n"
        while not gone.is_set() and not self.core.draining:
            stats = {**self.snapshot(), "now": time.time()}
            yield b"event: stats\ndata: " + orjson.dumps(stats) + b"\n\n"
            try:
                await asyncio.wait_for(gone.wait(), STREAM_PERIOD)
            except TimeoutError:
                pass

"""Which endpoint answers a request: every request/response route, in one place.

Streams (``GET /sse``, ``GET /poll``, ``/ws``, ``GET /dashboard/stream``)
are the transports' to serve; every other request comes here with a body
reader (``read_body(limit)``, raising HubError 413 past ``limit``), so an
endpoint reads its body only when it wants one, and under its own limit.

The fast port serves streams only, but answers the probes (``health``) too,
through the same ``HealthEndpoints``.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..errors import HubError
from . import publish
from .responses import Response, error_response, not_allowed, not_found
from .static import static_response

if TYPE_CHECKING:
    from ..auth import Request
    from .health import HealthEndpoints
    from .notifications import NotificationsGate
    from .operations import OperationsEndpoints
    from .presence import PresenceEndpoint
    from .publish import PublishEndpoint
    from .server_api import ServerAPI

ReadBody = Callable[[int], Awaitable[bytes]]
STREAM_PATHS = ("/sse", "/poll")  # GET streams; any other method is a 405 here

log = logging.getLogger("hubbub")


class Router:
    def __init__(self, *, dev: bool, publish: "PublishEndpoint", presence: "PresenceEndpoint",
                 notifications: "NotificationsGate", operations: "OperationsEndpoints",
                 health: "HealthEndpoints", server_api: "ServerAPI") -> None:
        self.dev = dev
        self.publish = publish
        self.presence = presence
        self.notifications = notifications
        self.operations = operations
        self.health = health
        self.server_api = server_api

    async def answer(self, method: str, path: str, request: "Request", read_body: ReadBody) -> Response:
        try:
            return await self._answer(method, path, request, read_body)
        except HubError as error:  # a body over its limit, or cut short, or a repeated parameter
            return error_response(error)
        except Exception:
            # A bug of ours: a 500 that says so (and a traceback in the log),
            # never an answer that blames something else.
            log.exception("%s %s failed", method, path)
            return error_response(HubError(500, "internal error"))

    async def _answer(self, method: str, path: str, request: "Request", read_body: ReadBody) -> Response:
        if self.notifications.handles(path):
            gate = self.notifications
            body = await read_body(gate.max_body) if method == "POST" and gate.endpoints else b""
            return await gate.route(method, path, request, body)
        if self.presence.handles(path):
            if method not in ("GET", "HEAD"):
                return not_allowed(method, path, "GET")
            return await self.presence(request)
        if path == "/publish":
            if method != "POST":
                return not_allowed(method, path, "POST")
            return await self.publish(request, await read_body(publish.MAX_BODY))
        if self.server_api.handles(path):
            allow = self.server_api.allowed(path)
            if method != allow and not (allow == "GET" and method == "HEAD"):
                return not_allowed(method, path, allow)
            return await self.server_api.answer(method, path, request, read_body)
        if self.health.handles(path):
            return self.health.answer(method, path)
        if self.operations.handles(path):
            answer = self.operations.answer(method, path, request)
            return answer if answer is not None else not_allowed(method, path, "GET")
        static = static_response(method, path, request.headers, self.dev)
        if static is not None:  # /hubbub.js, /hubbub.mjs, the dev demo at /
            return static
        if path in STREAM_PATHS:
            return not_allowed(method, path, "GET")
        return not_found(path)

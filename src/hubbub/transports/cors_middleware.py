"""CORS around the ASGI app: preflights, response headers, the WS ``Origin`` check.

The rules are ``cors.CorsPolicy``'s; the native port applies the same policy itself.
"""
from __future__ import annotations

from typing import Any

from ..cors import CorsPolicy, Headers
from .asgi_http import asgi_headers, route_path


class CorsMiddleware:
    """Wraps the hub's ASGI app: preflights, response headers, the WS Origin check.

    Attributes it does not have are read from the wrapped app (``inner``).
    """

    def __init__(self, app: Any, policy: CorsPolicy) -> None:
        self.inner = app
        self.policy = policy

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def __call__(self, scope: dict, receive, send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            if not self.policy.ws_allowed(asgi_headers(scope)):
                message = await receive()
                if message["type"] == "websocket.connect":
                    # A close before accept is an HTTP 403 to the client.
                    await send({"type": "websocket.close", "code": 1008, "reason": "origin not allowed"})
                return
        elif kind == "http" and self.policy.is_browser_path(route_path(scope)):
            headers = asgi_headers(scope)
            if scope["method"] == "OPTIONS":
                status, extra = self.policy.preflight(headers)
                await send({"type": "http.response.start", "status": status,
                            "headers": [(k.encode(), v.encode()) for k, v in extra]})
                await send({"type": "http.response.body", "body": b""})
                return
            send = _adding_headers(send, self.policy.response_headers(headers))
        await self.inner(scope, receive, send)


def _adding_headers(send, extra: Headers):
    encoded = [(k.encode(), v.encode()) for k, v in extra]

    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *encoded]}
        await send(message)
    return sending

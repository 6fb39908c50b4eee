"""Browsers' origins (SPEC 1): CORS for the browser endpoints and the WebSocket ``Origin`` check.

``HUBBUB_CORS_ORIGINS`` is a comma-separated list of origins
(``https://app.example.com``) allowed to use the browser endpoints from
another origin and to open WebSockets. Empty (the default) means same-origin
only. ``*`` (any origin) is for ``--dev`` only; with ``*`` the hub answers
``Access-Control-Allow-Origin: *`` and never allows credentials.

Interface, used by both ports (``transports.cors_middleware`` wraps it
around the ASGI app):

- ``CorsPolicy.of(config)``: the policy (one per hub config, cached).
- ``policy.is_browser_path(path)``: does CORS apply to this endpoint?
- ``policy.preflight(headers)``: (status, headers) answering ``OPTIONS``.
- ``policy.response_headers(headers)``: headers to add to an actual response.
- ``policy.ws_allowed(headers)``: may this WebSocket upgrade proceed?

``headers`` is always a dict of lower-cased header names to values.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Last-Event-ID, Idempotency-Key"
MAX_AGE = "600"  # seconds a browser may cache a preflight answer
# /publish is server-to-server (API key): it gets no CORS, so a page can
# never be handed the power to publish with a key it should not hold.
BROWSER_PATHS = ("/sse", "/poll", "/notifications", "/hubbub.js", "/hubbub.mjs")
BROWSER_PREFIXES = ("/notifications/", "/presence/")
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}

Headers = list[tuple[str, str]]


def parse_origins(raw: str | tuple[str, ...] | list[str], dev: bool) -> tuple[str, ...]:
    """Validate and normalise ``HUBBUB_CORS_ORIGINS``; raises ValueError saying what is wrong."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    origins = []
    for item in (part.strip() for part in items):
        if not item:
            continue
        if item == "*":
            if not dev:
                raise ValueError("'*' (any origin) is allowed only with --dev (HUBBUB_DEV=1);"
                                 " list the origins instead")
            origins.append("*")
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
                or parts.query or parts.fragment or parts.username:
            raise ValueError(f"{item!r} is not an origin such as https://app.example.com")
        origins.append(_normalise(item))
    return tuple(origins)


def _normalise(origin: str) -> str:
    """``scheme://host[:port]``, lower case, without a default port or a trailing slash."""
    parts = urlsplit(origin.strip().lower())
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and str(port) != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}"


class CorsPolicy:
    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any_origin = "*" in origins
        self.listed = frozenset(o for o in origins if o != "*")

    @classmethod
    def of(cls, config: Any) -> "CorsPolicy":
        policy = getattr(config, "_cors_policy", None)
        if policy is None:
            policy = cls(parse_origins(getattr(config, "cors_origins", ()), config.dev))
            object.__setattr__(config, "_cors_policy", policy)  # Config is frozen: a cache only
        return policy

    @staticmethod
    def is_browser_path(path: str) -> bool:
        return path in BROWSER_PATHS or path.startswith(BROWSER_PREFIXES)

    def _listed(self, origin: str) -> bool:
        return _normalise(origin) in self.listed

    def _allow_origin(self, origin: str | None) -> Headers:
        """Access-Control-Allow-* for ``origin``, or nothing when it is not allowed."""
        if not origin:
            return []
        if self._listed(origin):
            return [("access-control-allow-origin", origin),
                    ("access-control-allow-credentials", "true")]
        if self.any_origin:
            return [("access-control-allow-origin", "*")]  # never with credentials
        return []

    def response_headers(self, headers: dict[str, str]) -> Headers:
        """For an actual response of a browser endpoint (Vary: Origin always)."""
        return [*self._allow_origin(headers.get("origin")), ("vary", "Origin")]

    def preflight(self, headers: dict[str, str]) -> tuple[int, Headers]:
        """The answer to ``OPTIONS``: 204 with the grants, or 403 without any for an unlisted origin."""
        allow = self._allow_origin(headers.get("origin"))
        if not allow:
            return 403, [("vary", "Origin"), ("content-length", "0")]
        return 204, [*allow, ("access-control-allow-methods", ALLOWED_METHODS),
                     ("access-control-allow-headers", ALLOWED_HEADERS),
                     ("access-control-max-age", MAX_AGE), ("vary", "Origin"),
                     ("content-length", "0")]

    def ws_allowed(self, headers: dict[str, str]) -> bool:
        """A WebSocket upgrade with a present, foreign, unlisted ``Origin`` is refused.

        Without this any page a user visits could open a socket that the
        browser authenticates with the user's ``hubbub_token`` cookie. A
        client that sends no Origin is not a browser: its credentials decide.
        """
        origin = headers.get("origin")
        if origin is None:
            return True
        if self.any_origin or self._listed(origin):
            return True
        return same_origin(origin, headers.get("host"))


def same_origin(origin: str, host: str | None) -> bool:
    """Does ``origin`` name the host:port the request was sent to (its Host header)?"""
    if not host or origin == "null":
        return False
    parts = urlsplit(origin.strip().lower())
    default = _DEFAULT_PORTS.get(parts.scheme)
    if default is None or not parts.hostname:
        return False
    try:
        origin_port = str(parts.port or default)
    except ValueError:
        return False
    target = urlsplit("//" + host.strip().lower())
    try:
        host_port = str(target.port or default)
    except ValueError:
        return False
    return parts.hostname == target.hostname and origin_port == host_port


def head_lines(headers: Headers) -> bytes:
    """``name: value\\r\\n`` lines for a raw HTTP/1.1 head (the native port)."""
    return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)

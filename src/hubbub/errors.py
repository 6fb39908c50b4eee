"""Errors that reach clients: an HTTP status (or WS error code) and a reason."""
from __future__ import annotations


class HubError(Exception):
    """A refused request. ``code`` is the HTTP status / WS error code (SPEC 6)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Unauthorized(HubError):
    def __init__(self, reason: str) -> None:
        super().__init__(401, reason)


class Forbidden(HubError):
    def __init__(self, reason: str) -> None:
        super().__init__(403, reason)

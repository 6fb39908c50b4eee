"""``/notifications`` (SPEC 8) as transport-neutral handlers.

Each takes an ``auth.Request`` (and a body) and returns a ``Response``
(``responses.py``). The router hands every request under ``/notifications``
to ``NotificationsGate.route``, which answers 503 while the store is not
open, reading at most ``max_body`` bytes of body first (more is a 413).

| method and path                    | auth     | answers                                  |
| POST   /notifications              | API key  | 201 the record                           |
| GET    /notifications              | user JWT | 200 {notifications, unread_count, next_before} |
| POST   /notifications/{id}/read    | user JWT | 200 the record, 404 unknown              |
| POST   /notifications/read-all     | user JWT | 200 {marked_read, unread_count}          |
| DELETE /notifications/{id}         | user JWT | 200 {id, deleted: true}, 404 unknown     |

Another user's id answers exactly as a missing one (404), never 403.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import HubError, Unauthorized
from ..services.inbox import validate
from .responses import Response, error_response, json_body, not_allowed, read_limit_error

if TYPE_CHECKING:
    from ..auth import Authenticator, Request
    from ..services.inbox import Inbox

PREFIX = "/notifications"
BODY_MIN_LIMIT = 1 << 20


class NotificationEndpoints:
    def __init__(self, inbox: "Inbox", auth: "Authenticator") -> None:
        self.inbox = inbox
        self.auth = auth
        # A body carries message and data (each up to MAX_MESSAGE_BYTES) and
        # JSON escaping can grow a string up to 6x.
        self.max_body = max(BODY_MIN_LIMIT, 12 * inbox.max_message_bytes + 4096)

    @staticmethod
    def handles(path: str) -> bool:
        """True for the paths ``route`` answers (the transport's dispatch test)."""
        return path == PREFIX or path.startswith(PREFIX + "/")

    async def route(self, method: str, path: str, request: "Request", body: bytes = b"") -> Response:
        """Answer any request whose path ``handles``: 404 or 405 for what SPEC 8 lacks."""
        rest = path[len(PREFIX):].strip("/")
        parts = rest.split("/") if rest else []
        try:
            if not parts:
                if method == "POST":
                    return await self.create(request, body)
                if method == "GET":
                    return await self.list(request)
                return not_allowed(method, path, "GET, POST")
            if parts == ["read-all"]:
                if method == "POST":
                    return await self.read_all(request)
                return not_allowed(method, path, "POST")
            if len(parts) == 2 and parts[1] == "read":
                if method == "POST":
                    return await self.read(request, parts[0])
                return not_allowed(method, path, "POST")
            if len(parts) == 1:
                if method == "DELETE":
                    return await self.delete(request, parts[0])
                return not_allowed(method, path, "DELETE")
            raise HubError(404, f"no such endpoint {path}")
        except HubError as error:
            return error_response(error)

    async def create(self, request: "Request", body: bytes) -> Response:
        try:
            self.auth.check_api_key(request)
            if len(body) > self.max_body:
                raise read_limit_error(self.max_body)
            record = await self.inbox.create(json_body(body))
        except HubError as error:
            return error_response(error)
        return 201, record, []

    async def list(self, request: "Request") -> Response:
        try:
            user = await self._user(request)
            unread, limit, before = validate.listing_query(request)
            records = await self.inbox.list(user, unread_only=unread, limit=limit, before=before)
            count = await self.inbox.unread_count(user)
        except HubError as error:
            return error_response(error)
        # A full page may have more behind it: hand back where to continue.
        next_before = records[-1]["id"] if len(records) == limit else None
        return 200, {"notifications": records, "unread_count": count, "next_before": next_before}, []

    async def read(self, request: "Request", id_: str) -> Response:
        try:
            user = await self._user(request)
            record = await self.inbox.mark_read(user, id_)
            if record is None:
                raise _missing(id_)
        except HubError as error:
            return error_response(error)
        return 200, record, []

    async def read_all(self, request: "Request") -> Response:
        try:
            user = await self._user(request)
            changed = await self.inbox.mark_all_read(user)
            count = await self.inbox.unread_count(user)
        except HubError as error:
            return error_response(error)
        return 200, {"marked_read": changed, "unread_count": count}, []

    async def delete(self, request: "Request", id_: str) -> Response:
        try:
            user = await self._user(request)
            if not await self.inbox.delete(user, id_):
                raise _missing(id_)
        except HubError as error:
            return error_response(error)
        return 200, {"id": id_, "deleted": True}, []

    async def _user(self, request: "Request") -> str:
        """The signed-in user; an inbox is always someone's, so anonymous is 401
        (dev mode's anonymous principal included)."""
        principal = await self.auth.principal(request)
        if principal is None or principal.user is None:
            raise Unauthorized("a user token is required for /notifications")
        return principal.user


def _missing(id_: str) -> HubError:
    # The same words whether the id never existed or is someone else's.
    return HubError(404, f"no notification {id_!r}")


class NotificationsGate:
    """``/notifications`` whether or not the store is open: until it is (a
    store that is down does not keep the hub from serving publications),
    every request is a 503 naming why, and readiness says the same."""

    def __init__(self, auth: "Authenticator") -> None:
        self.auth = auth
        self.endpoints: NotificationEndpoints | None = None
        self.error = "not open yet"

    def open(self, inbox: "Inbox") -> None:
        self.endpoints = NotificationEndpoints(inbox, self.auth)

    def close(self) -> None:
        self.endpoints = None

    def failed(self, error: Exception) -> None:
        """The store could not open: keep why, in the words of its error."""
        self.error = str(getattr(error, "detail", None) or getattr(error, "reason", None) or error)

    def unavailable(self) -> str | None:
        """Why the store is not open (readiness), or None when it is."""
        return self.error if self.endpoints is None else None

    handles = staticmethod(NotificationEndpoints.handles)

    @property
    def max_body(self) -> int:
        return self.endpoints.max_body if self.endpoints is not None else 0

    async def route(self, method: str, path: str, request: "Request", body: bytes = b"") -> Response:
        endpoints = self.endpoints
        if endpoints is None:
            return error_response(HubError(503, f"notification store unavailable: {self.error}"))
        return await endpoints.route(method, path, request, body)

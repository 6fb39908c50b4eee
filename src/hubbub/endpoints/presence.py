"""``GET /presence/{topic}`` (SPEC 10): who is subscribed to a topic right now."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..auth import may_subscribe
from ..errors import HubError, Unauthorized
from ..topics import requested_pattern
from .responses import Response, error_response

if TYPE_CHECKING:
    from ..auth import Authenticator, Request
    from ..services.presence import Presence

PREFIX = "/presence/"


class PresenceEndpoint:
    def __init__(self, auth: "Authenticator", presence: "Presence") -> None:
        self.auth = auth
        self.presence = presence

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(PREFIX)

    async def __call__(self, request: "Request") -> Response:
        """The API key, or a user allowed to subscribe to the topic."""
        try:
            topic = requested_pattern(request.path[len(PREFIX):])
            try:
                self.auth.check_api_key(request)
            except Unauthorized:
                principal = await self.auth.principal(request)  # a bad token: 401
                if principal is None:
                    raise Unauthorized("an API key or a user token is required") from None
                if not may_subscribe(principal, topic):
                    raise HubError(403, f"not allowed to see presence of {topic!r}") from None
            return 200, await self.presence.members(topic), []
        except HubError as error:
            return error_response(error)

"""The server API (SPEC 10, "Server API"): what a backend does to users' live
connections, with the API key.

- ``POST /disconnect {user, code?, reason?}``: close every connection of a
  user, on every node;
- ``POST /unsubscribe {user, topic}``: drop one subscribed pattern from every
  connection of a user, on every node;
- ``GET /history/{topic}?since=&limit=``: the kept publications of a topic;
- ``GET /topics?prefix=``: the subscribed patterns, with subscriber counts:
  the fleet's with a backplane (this node's counts as they are, the other
  live nodes' as of their last snapshot), else this node's.

Disconnect and unsubscribe go through ``services.user_events`` (this node
acts, then tells the others over the backplane); their counts are this
node's: the other nodes act on a fire-and-forget fleet event and report
nothing back. Topic counts come from the broker, which is handed this node's
counter here (it snapshots it for the other nodes).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from .. import wire
from ..core.connection import MAX_CLOSE_REASON_BYTES
from ..core.history import Gap
from ..errors import HubError
from ..topics import TopicError, requested_pattern, validate_topic
from .responses import Response, error_response, json_body

if TYPE_CHECKING:
    from ..auth import Authenticator, Request
    from ..core.hub import HubCore
    from ..services.user_events import UserEvents

MAX_BODY = 16 << 10  # a user id, a topic and a reason: far under this
HISTORY_PREFIX = "/history/"
DEFAULT_CODE = 4403
# Application close codes: 4000-4999 are the WS range reserved for private
# use (RFC 6455 7.4.2), so a backend's code never reads as a protocol close.
MIN_CODE, MAX_CODE = 4000, 4999
MAX_USER_BYTES = 256
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
MAX_PREFIX_BYTES = 256

DISCONNECT_FIELDS = {"user", "code", "reason"}
UNSUBSCRIBE_FIELDS = {"user", "topic"}


class ServerAPI:
    def __init__(self, core: "HubCore", auth: "Authenticator", fleet: "UserEvents") -> None:
        self.core = core
        self.auth = auth
        self.fleet = fleet
        core.broker.count_topics_with(core.users.topic_counts)

    @staticmethod
    def handles(path: str) -> bool:
        return path in ("/disconnect", "/unsubscribe", "/topics") or path.startswith(HISTORY_PREFIX)

    @staticmethod
    def allowed(path: str) -> str:
        """The one method each path takes (for a 405's Allow)."""
        return "POST" if path in ("/disconnect", "/unsubscribe") else "GET"

    async def answer(self, method: str, path: str, request: "Request", read_body) -> Response:
        try:
            self.auth.check_api_key(request)
            if path == "/disconnect":
                user, code, reason = disconnect_args(parse_body(await read_body(MAX_BODY),
                                                                DISCONNECT_FIELDS))
                return 200, {"closed": await self.fleet.disconnect(user, code, reason)}, []
            if path == "/unsubscribe":
                user, topic = unsubscribe_args(parse_body(await read_body(MAX_BODY), UNSUBSCRIBE_FIELDS))
                return 200, {"unsubscribed": await self.fleet.unsubscribe(user, topic)}, []
            if path == "/topics":
                return 200, await self.topics(topics_prefix(request)), []
            topic = history_topic(path[len(HISTORY_PREFIX):])
            return 200, self.history(topic, request.first("since"), history_limit(request)), []
        except HubError as error:
            return error_response(error)

    async def topics(self, prefix: str = "") -> dict[str, Any]:
        counts = await self.core.broker.topic_counts(prefix)
        return {"topics": [{"topic": t, "subscribers": n} for t, n in sorted(counts.items())]}

    def history(self, topic: str, since: str | None, limit: int) -> dict[str, Any]:
        return history_answer(self.core, topic, since, limit, orjson.Fragment)


def history_answer(core: "HubCore", topic: str, since: str | None, limit: int,
                   envelope: Callable[[bytes], Any]) -> dict[str, Any]:
    """``{"messages": [envelopes], "position": id, "more": bool}``, or when
    ``since`` is no longer covered ``{"messages": [], "reset": {"reason": ..},
    "position": newest id}`` (resume live from ``position``, as after an SSE reset)."""
    recovery = core.recovery
    try:
        kept, more = recovery.history_of(topic, since or None, limit)
    except Gap as gap:
        return {"messages": [], "reset": {"reason": gap.reason}, "position": recovery.last_event_id}
    # With more to come, position is the last one given: the next page's since=.
    position = kept[-1].event_id if more else recovery.last_event_id
    messages = [envelope(k.frames[wire.POLL]) for k in kept]  # a poll item is the bare envelope
    return {"messages": messages, "position": position, "more": more}


def parse_body(body: bytes, fields: set[str]) -> dict:
    payload = json_body(body)
    if not isinstance(payload, dict):
        raise HubError(400, "body must be a JSON object")
    unknown = payload.keys() - fields
    if unknown:
        raise HubError(400, f"unknown field(s) {sorted(unknown)}")
    return payload


def checked_user(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise HubError(400, "'user' must be a non-empty string")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_USER_BYTES:
        raise HubError(400, f"'user' is over {MAX_USER_BYTES} bytes")
    return value


def disconnect_args(payload: dict) -> tuple[str, int, str]:
    user = checked_user(payload.get("user"))
    code = payload.get("code", DEFAULT_CODE)
    if type(code) is not int or not MIN_CODE <= code <= MAX_CODE:
        raise HubError(400, f"'code' must be an integer from {MIN_CODE} to {MAX_CODE}")
    reason = payload.get("reason", "")
    if not isinstance(reason, str):
        raise HubError(400, "'reason' must be a string")
    try:
        size = len(reason.encode("utf-8"))
    except UnicodeEncodeError:
        raise HubError(400, "'reason' is not valid UTF-8") from None
    if size > MAX_CLOSE_REASON_BYTES:  # more than a close frame carries: refused, not cut
        raise HubError(400, f"'reason' is {size} bytes, over the {MAX_CLOSE_REASON_BYTES}-byte limit")
    return user, code, reason


def unsubscribe_args(payload: dict) -> tuple[str, str]:
    user = checked_user(payload.get("user"))
    if "topic" not in payload:
        raise HubError(400, "'topic' is required")
    try:
        topic = requested_pattern(payload["topic"])
    except HubError as error:
        raise HubError(400, f"'topic': {error.reason}") from None
    return user, topic


def history_topic(raw: str) -> str:
    """A topic, not a pattern: history is kept per topic, and a pattern's
    would merge topics whose pages could not be resumed one by one."""
    try:
        return validate_topic(raw)
    except TopicError as error:
        raise HubError(400, f"topic: {error}") from None


def history_limit(request: "Request") -> int:
    raw = request.first("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise HubError(400, f"'limit' must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def topics_prefix(request: "Request") -> str:
    prefix = request.first("prefix") or ""
    if len(prefix.encode("utf-8", "surrogatepass")) > MAX_PREFIX_BYTES:
        raise HubError(400, f"'prefix' is over {MAX_PREFIX_BYTES} bytes")
    return prefix

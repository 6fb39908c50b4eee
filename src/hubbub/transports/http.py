"""HTTP endpoints shared by both ports' request handling: publish, health, errors.

They take an ``auth.Request`` and a body and return (status, JSON body,
headers), so the ASGI app and the native listener answer byte-for-byte alike.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import orjson

from ..auth import Unauthorized, may_subscribe
from ..errors import HubError
from ..fleet import IdempotencyGuard
from ..history import Gap
from ..topics import TopicError, validate_pattern
from ..wire import SSE, SSE_PREAMBLE, sse_event

if TYPE_CHECKING:
    from ..auth import Request
    from ..hub import Hub

PUBLISH_MAX_BODY = 1 << 20
IDEMPOTENCY_TTL = 300.0
PUBLICATION_FIELDS = {"topic", "data", "event", "priority", "key", "tags", "ephemeral"}

Response = tuple[int, Any, list[tuple[str, str]]]


def error_body(code: int, reason: str) -> dict:
    return {"code": code, "reason": reason}


def error_response(error: HubError) -> Response:
    headers = [("www-authenticate", "Bearer")] if error.code == 401 else []
    return error.code, error_body(error.code, error.reason), headers


class PublishEndpoint:
    """``POST /publish``: one publication or an array; Idempotency-Key replays.

    Idempotency keys live in the backplane (in the process with the memory
    broker, in Redis across the fleet): the key is reserved before anything
    is published, so the same key sent to two nodes at once publishes once.
    """

    def __init__(self, hub: "Hub") -> None:
        self.hub = hub
        self.idempotency = IdempotencyGuard(hub.broker, IDEMPOTENCY_TTL)

    async def __call__(self, request: "Request", body: bytes) -> Response:
        key = None
        try:
            self.hub.auth.check_api_key(request)
            prepared = self._prepare(body)  # a bad request is refused before the key is claimed
            key = request.header("idempotency-key")
            if key is not None:
                remembered = await self.idempotency.claim(key)
                if remembered is not None:
                    return 200, {"ids": remembered}, [("idempotent-replayed", "true")]
            ids = await self._publish(prepared)
            if key is not None:
                await self.idempotency.settle(key, ids)
        except HubError as error:
            if key is not None and error.code != 409:
                await self.idempotency.release(key)  # nothing was published: a retry may
            return error_response(error)
        return 200, {"ids": ids}, []

    async def _publish(self, prepared: list) -> list:
        # All validated first: a batch is published whole or not at all.
        # (With the memory broker it cannot fail half-way. Over Redis each
        # publication is one atomic script; an outage in the middle of a
        # batch fails the rest with 503 and names the ids already published.)
        ids = []
        for pub in prepared:
            try:
                ids.append(await self.hub.submit(pub))
            except HubError as error:
                if not ids:
                    raise
                raise HubError(error.code, f"{error.reason}; published before the failure:"
                                           f" {ids}") from None
        return ids

    def _prepare(self, body: bytes) -> list:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise HubError(400, f"body is not valid JSON: {error}") from None
        batch = isinstance(payload, list)
        items = payload if batch else [payload]
        if not items:
            raise HubError(400, "empty batch")
        prepared = []
        for index, item in enumerate(items):
            where = f"publication {index}: " if batch else ""
            if not isinstance(item, dict):
                raise HubError(400, f"{where}must be a JSON object")
            unknown = item.keys() - PUBLICATION_FIELDS
            if unknown:
                raise HubError(400, f"{where}unknown field(s) {sorted(unknown)}")
            if "topic" not in item or "data" not in item:
                raise HubError(400, f"{where}needs 'topic' and 'data'")
            try:
                prepared.append(self.hub.prepare(**item))
            except HubError as error:
                raise HubError(error.code, where + error.reason) from None
        return prepared


def health(hub: "Hub") -> Response:
    if hub.draining or not hub.started:
        return 503, {"status": "draining" if hub.draining else "starting"}, []
    if not hub.broker.healthy:  # connections stay up, but publishes would fail: route elsewhere
        return 503, {"status": "backplane_unavailable", **hub.stats()}, []
    # "worker": which process answered, when several share the port (--workers N).
    return 200, {"status": "ok", "worker": os.getpid(), **hub.stats()}, []


SSE_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-store"),
    ("x-accel-buffering", "no"),
]


async def open_subscriber(hub: "Hub", request: "Request", make_conn, presence: bool = False):
    """Admit, authenticate and subscribe the ``topic=`` patterns of an SSE or
    poll request; returns the attached connection. Raises HubError (400, 401,
    403, 429) before anything is attached. ``presence``: join/leave events."""
    hub.admit(request.client)
    principal = await hub.auth.principal(request)
    if principal is None:
        raise Unauthorized("authentication required")
    topics = request.query.get("topic", [])
    if not topics:
        raise HubError(400, "at least one topic= is required")
    conn = make_conn(principal)
    hub.attach(conn)
    try:
        for pattern in topics:
            hub.subscribe(conn, pattern, request.first("filter"), presence)
    except HubError:
        conn.lost()
        raise
    return conn


async def open_sse(hub: "Hub", request: "Request", make_conn) -> tuple[Any, Response | bytes]:
    """Open an SSE stream: (connection, the stream's first bytes) or (None, an error response)."""
    await hub.caught_up(resume_point(request))  # an id another node gave out: let it arrive
    try:
        conn = await open_subscriber(hub, request, make_conn,
                                     presence=request.first("presence") in ("1", "true"))
    except HubError as error:
        return None, error_response(error)
    try:
        hello = SSE_PREAMBLE + sse_event("connected", {
            "connection_id": conn.id, "topics": list(conn.subscriptions), "user": conn.principal.user,
        })
        since = resume_point(request)
        if since:
            hello += sse_replay(hub, conn, since)
    except BaseException:
        conn.lost()  # attached but never streamed: nothing else would release it
        raise
    # unread_count follows `connected`: the transport writes the hello before
    # this background read of the store can answer.
    hub.greet(conn)
    return conn, hello


async def presence_endpoint(hub: "Hub", request: "Request", topic: str) -> Response:
    """``GET /presence/{topic}``: the API key, or a user allowed to subscribe to it."""
    try:
        try:
            topic = validate_pattern(topic)
        except TopicError as error:
            raise HubError(400, str(error)) from None
        try:
            hub.auth.check_api_key(request)
        except Unauthorized:
            principal = await hub.auth.principal(request)  # a bad token: 401
            if principal is None:
                raise Unauthorized("an API key or a user token is required") from None
            if not may_subscribe(principal, topic):
                raise HubError(403, f"not allowed to see presence of {topic!r}") from None
        return 200, await hub.presence.members(topic), []
    except HubError as error:
        return error_response(error)


def resume_point(request: "Request") -> str | None:
    """The id an SSE or poll client resumes from: Last-Event-ID wins over since=."""
    return request.header("last-event-id") or request.first("since")


def sse_replay(hub: "Hub", conn, since: str) -> bytes:
    """What the subscriptions missed since ``since`` as SSE events, or one ``reset``.

    Runs in the same step as the subscribe: live events queue behind it.
    """
    patterns = list(conn.subscriptions)
    try:
        replay = hub.replay(conn, patterns, since)
    except Gap as gap:
        # The reset carries the newest id: a browser that reconnects again
        # resumes from "now" rather than hitting the same reset (SPEC 5).
        return sse_event("reset", {"topics": patterns, "reason": gap.reason}, hub.last_event_id)
    return b"".join(kept.frames[SSE] for kept in replay)

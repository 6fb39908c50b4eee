"""Wire formats (SPEC sections 4-6): one encoder per format, each run once per publication.

A publication's envelope is JSON-encoded once; the SSE event and the WS
``message`` line are built around those same bytes, and those two ``bytes``
objects are what every subscriber's outbox receives.
"""
from __future__ import annotations

import re
from typing import Any

import orjson

# Wire format of a connection, and index of its bytes in a publication's frames.
SSE, WS, POLL = 0, 1, 2
# How a batch of frames is joined into one write: SSE events follow each
# other, WS messages are NDJSON lines of one text frame, a poll answer's
# envelopes are the items of a JSON array.
SEPARATORS = {SSE: b"", WS: b"\n", POLL: b","}

EVENT_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,64}\Z")


def envelope(topic: str, event_id: str | None, event: str, data_json: bytes, ts: int) -> bytes:
    """The delivered envelope around ``data_json`` (encoded once, at validation).

    ``event`` is validated against EVENT_NAME, so it needs no escaping.
    """
    return (b'{"topic":' + orjson.dumps(topic)
            + (b',"id":"' + event_id.encode() + b'"' if event_id else b',"id":null')
            + b',"event":"' + event.encode() + b'","data":' + data_json
            + b',"ts":' + str(ts).encode() + b"}")


def frames(envelope_json: bytes, event_id: str | None, event: str) -> tuple[bytes, bytes, bytes]:
    """The (SSE, WS, POLL) frames of one publication, sharing its envelope bytes."""
    head = b"id: " + event_id.encode() + b"\nevent: " if event_id else b"event: "
    sse = head + event.encode() + b"\ndata: " + envelope_json + b"\n\n"
    ws = WS_MESSAGE_PREFIX + envelope_json[1:]
    return sse, ws, envelope_json


WS_MESSAGE_PREFIX = b'{"op":"message",'


def sse_event(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = b"id: " + event_id.encode() + b"\n" if event_id else b""
    return head + b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def ws_op(op: str, **fields: Any) -> bytes:
    return orjson.dumps({"op": op, **fields})


def ws_error(code: int, reason: str, request_id: Any = None) -> bytes:
    if request_id is None:
        return orjson.dumps({"op": "error", "code": code, "reason": reason})
    return orjson.dumps({"op": "error", "id": request_id, "code": code, "reason": reason})


SSE_PREAMBLE = b"retry: 2000\n\n"
# The head of every Server-Sent Events response, on either port.
SSE_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-store"),
    ("x-accel-buffering", "no"),
]
SSE_PING = b": ping\n\n"
WS_PING = b'{"op":"ping"}'


def dropped_notice(fmt: int, count: int) -> bytes:
    if fmt == SSE:
        return b'event: dropped\ndata: {"count":%d}\n\n' % count
    return b'{"op":"dropped","count":%d}' % count


def reset(fmt: int, patterns: list[str], reason: str, last_id: str) -> list[bytes]:
    """The frames telling a connection that these subscriptions may have missed
    publications (SPEC 5, 6): one WS ``reset`` op per pattern, or one SSE
    ``reset`` event for them all, each carrying ``last_id`` (the newest id; WS
    ``position``, SSE ``id:``), so a client that reconnects resumes from now
    rather than hitting the same reset. After Redis lost its data that is the
    start of the new epoch: the client's old ids can no longer be resumed from.
    A long-poll is told in its answer instead (not here)."""
    if fmt == WS:
        return [ws_op("reset", topic=p, reason=reason, position=last_id) for p in patterns]
    return [sse_event("reset", {"topics": patterns, "reason": reason}, last_id)]


def presence_event(fmt: int, event: str, payload: dict) -> bytes:
    """``join``/``leave`` (SPEC 6): WS ``{"op":"join","topic":..,"user":..,"info":..}``,
    SSE ``event: join`` with the same object as data."""
    if fmt == SSE:
        return sse_event(event, payload)
    return orjson.dumps({"op": event, **payload})


def user_event(fmt: int, event: str, payload: Any) -> bytes:
    """A per-user inbox event (``notification``, ``notification_deleted``,
    ``unread_count``) in one connection's format:

    - SSE: ``event: notification`` / ``data: {record}`` (no ``id:``: it is not
      a resume point, so Last-Event-ID is left alone);
    - WS: ``{"op":"notification","data":{record}}``; the payload rides in
      ``data`` so its own ``id`` never reads as a request id;
    - poll: an item ``{"event":"notification","data":{record}}`` in
      ``messages`` (publications there always have a ``topic``; these never do).
    """
    if fmt == SSE:
        return sse_event(event, payload)
    if fmt == WS:
        return b'{"op":"' + event.encode() + b'","data":' + orjson.dumps(payload) + b"}"
    return b'{"event":"' + event.encode() + b'","data":' + orjson.dumps(payload) + b"}"


# A long-poll closed by the server API (``POST /disconnect``) answers this
# status instead of its messages: a poll client is not connected between
# polls, so the answer is the only place it can learn it was disconnected.
POLL_DISCONNECTED = 410


def disconnect_frame(fmt: int, code: int, reason: str) -> bytes | None:
    """The frame that tells a connection it is being disconnected (``POST
    /disconnect``), sent just before it is closed: SSE ``event: disconnect``
    ``{code, reason}`` (its stream then ends). None for WS, whose close frame
    carries the code and reason itself, and for poll, answered 410."""
    if fmt == SSE:
        return sse_event("disconnect", {"code": code, "reason": reason})
    return None


def unsubscribed_frame(fmt: int, topic: str) -> bytes | None:
    """The notice that the server removed a subscription (``POST /unsubscribe``):
    WS ``{"op":"unsubscribed","topic":..}``, SSE ``event: unsubscribed``
    ``{"topic":..}``. None for poll: its subscriptions last one request."""
    if fmt == WS:
        return ws_op("unsubscribed", topic=topic)
    if fmt == SSE:
        return sse_event("unsubscribed", {"topic": topic})
    return None

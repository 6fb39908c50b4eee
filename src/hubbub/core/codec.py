"""A publication: validated once, then carried between nodes as opaque bytes.

``prepare`` checks everything a publication may carry (HubError 400/413
naming the problem) and JSON-encodes its data once; nothing downstream
parses or re-encodes it. ``encode``/``decode`` are the backplane's payload
format; the memory broker never leaves the process, so it carries the
``Publication`` object itself and nothing is encoded.
"""
from __future__ import annotations

import time
from typing import Any

import orjson

from .. import wire
from ..errors import HubError
from ..filters import FilterError, validate_tags
from ..priority import Priority
from ..topics import TopicError, validate_topic


class Publication:
    """A validated publication, its data already JSON-encoded."""

    __slots__ = ("topic", "data_json", "event", "priority", "key", "tags", "ephemeral", "ts")

    def __init__(self, topic: str, data_json: bytes, event: str, priority: int,
                 key: str | None, tags: dict | None, ephemeral: bool, ts: int | None = None) -> None:
        self.topic = topic
        self.data_json = data_json
        self.event = event
        self.priority = priority
        self.key = key
        self.tags = tags
        self.ephemeral = ephemeral
        # Milliseconds since the epoch, taken once where it was published, so
        # every node delivers the same envelope and ages its history alike.
        self.ts = int(time.time() * 1000) if ts is None else ts


def prepare(topic: Any, data: Any, *, max_bytes: int, event: Any = "message",
            priority: Any = Priority.NORMAL, key: Any = None, tags: Any = None,
            ephemeral: Any = False) -> Publication:
    """Validate one publication; raises HubError 400 or 413 naming the problem."""
    try:
        topic = validate_topic(topic)
        tags = validate_tags(tags)
    except (TopicError, FilterError) as error:
        raise HubError(400, str(error)) from None
    if event is None:
        event = "message"
    if not isinstance(event, str) or not wire.EVENT_NAME.match(event):
        raise HubError(400, "event must be 1-64 characters of letters, digits, '_', '-', '.', ':'")
    try:
        priority = Priority.parse(priority)
    except ValueError as error:
        raise HubError(400, str(error)) from None
    if key is not None and not isinstance(key, str):
        raise HubError(400, "key must be a string")
    if not isinstance(ephemeral, bool):
        raise HubError(400, "ephemeral must be true or false")
    try:
        data_json = orjson.dumps(data)
    except TypeError as error:
        raise HubError(400, f"data is not JSON-serialisable: {error}") from None
    if len(data_json) > max_bytes:
        raise HubError(413, f"data is {len(data_json)} bytes, over the {max_bytes}-byte limit")
    return Publication(topic, data_json, event, int(priority), key, tags, ephemeral)


# A JSON header line, then the data exactly as validated (already JSON): the
# data is neither parsed nor re-encoded on the way. orjson never writes a raw
# newline, so the first b"\n" ends the header.
def encode(pub: Publication) -> bytes:
    head = orjson.dumps([pub.topic, pub.event, pub.priority, pub.key, pub.tags, pub.ts])
    return head + b"\n" + pub.data_json


def decode(payload: bytes, ephemeral: bool) -> Publication:
    head, _, data_json = payload.partition(b"\n")
    topic, event, priority, key, tags, ts = orjson.loads(head)
    return Publication(topic, data_json, event, priority, key, tags, ephemeral, ts)

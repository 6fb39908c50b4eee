"""Topic and pattern validation (SPEC section 3).

A topic is 1-255 bytes of UTF-8: non-empty segments separated by ``.``, none
holding whitespace, ``.``, ``*`` or ``>``. A pattern may also use ``*`` as a
whole segment (exactly one segment) and ``>`` as its last segment (one or more
trailing segments), as in NATS.

Validation runs once per publication or subscription, never per delivery, so
it stays in plain Python: the trie trusts what reaches it.
"""
from __future__ import annotations

import re

from .errors import HubError

MAX_TOPIC_BYTES = 255

# The common case (ASCII word characters, dashes, colons...) is accepted by one
# regex match; anything else goes through the slow path that names the problem.
_FAST_TOPIC = re.compile(r"[A-Za-z0-9_\-:@$#+=~!%&'/]+(?:\.[A-Za-z0-9_\-:@$#+=~!%&'/]+)*\Z")
_WHITESPACE = re.compile(r"\s")


class TopicError(ValueError):
    """An invalid topic or subscription pattern; the message names the problem."""


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid publication topic, else raise TopicError."""
    if type(topic) is str and len(topic) <= MAX_TOPIC_BYTES and _FAST_TOPIC.match(topic):
        return topic
    _check(topic, "topic", wildcards=False)
    return topic  # type: ignore[return-value]


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise TopicError."""
    if type(pattern) is str and len(pattern) <= MAX_TOPIC_BYTES and _FAST_TOPIC.match(pattern):
        return pattern
    _check(pattern, "pattern", wildcards=True)
    return pattern  # type: ignore[return-value]


def is_literal(pattern: str) -> bool:
    """True when a (valid) pattern has no wildcard segment."""
    return "*" not in pattern and ">" not in pattern


def _check(value: object, what: str, wildcards: bool) -> None:
    if not isinstance(value, str):
        raise TopicError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise TopicError(f"{what} is empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise TopicError(f"{what} {value!r} is not valid UTF-8") from None
    if size > MAX_TOPIC_BYTES:
        raise TopicError(f"{what} is {size} bytes, over the {MAX_TOPIC_BYTES}-byte limit")
    segments = value.split(".")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        position = index + 1
        if not segment:
            raise TopicError(f"{what} {value!r} has an empty segment at position {position}")
        if _WHITESPACE.search(segment):
            raise TopicError(f"{what} segment {segment!r} contains whitespace")
        if segment == "*" and wildcards:
            continue
        if segment == ">" and wildcards:
            if index != last:
                raise TopicError(f"'>' must be the last segment of pattern {value!r}")
            continue
        for char in "*>":
            if char in segment:
                if wildcards:
                    raise TopicError(
                        f"pattern segment {segment!r} mixes {char!r} with other characters;"
                        f" a wildcard must be a whole segment"
                    )
                raise TopicError(
                    f"topic segment {segment!r} contains {char!r}; wildcards are only for"
                    f" subscription patterns"
                )


def requested_pattern(pattern: object) -> str:
    """``validate_pattern`` for a client's request: HubError 400 naming the problem."""
    try:
        return validate_pattern(pattern)
    except TopicError as error:
        raise HubError(400, str(error)) from None

"""Every check on a notification's input, in one place (SPEC 8).

``POST /notifications`` and ``hub.notify`` both go through ``notification``;
each refusal is a 400 whose reason names the field at fault.

What can never be stored is refused here, for both stores alike: a string
kept as a text column must hold no NUL (PostgreSQL's text cannot; SQLite
would keep what PostgreSQL refuses, so a fleet and a single node would
disagree) and must be valid Unicode (no driver can encode a lone surrogate).
``data`` is stored as JSON text, where a NUL travels escaped (``\\u0000``).
"""
from __future__ import annotations

from typing import Any

import orjson

from ...errors import HubError
from ...priority import Priority
from .store import NewNotification, parse_id

LEVELS = ("info", "success", "warning", "error")
FIELDS = ("user", "title", "message", "level", "priority", "data")
TITLE_MAX_CHARS = 200
USER_MAX_BYTES = 200
LIMIT_MAX = 200
LIMIT_DEFAULT = 50


def _bad(field: str, problem: str) -> HubError:
    return HubError(400, f"'{field}' {problem}")


def notification(payload: Any, max_message_bytes: int) -> NewNotification:
    """A create request's body (already JSON-decoded) as a NewNotification."""
    if not isinstance(payload, dict):
        raise HubError(400, "the body must be a JSON object")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise HubError(400, f"unknown field '{unknown[0]}'" if len(unknown) == 1
                       else f"unknown fields {', '.join(repr(name) for name in unknown)}")
    for required in ("user", "title", "message"):
        if required not in payload:
            raise _bad(required, "is required")
    return NewNotification(
        user=user_id(payload["user"]),
        title=_title(payload["title"]),
        message=_message(payload["message"], max_message_bytes),
        level=_level(payload.get("level", "info")),
        priority=_priority(payload.get("priority", "normal")),
        data=_data(payload.get("data"), max_message_bytes),
    )


def _storable(field: str, value: str) -> str:
    """``value`` as a text column of either store can keep it; else a 400."""
    if "\x00" in value:
        raise _bad(field, "must not contain a NUL character (\\u0000): the store cannot keep it")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise _bad(field, "is not valid Unicode (a lone surrogate): the store cannot keep it") from None
    return value


def storable(value: str) -> bool:
    """True when a string (a user id from a token's ``sub``) could be stored:
    the inbox of a user whose id cannot be has nothing in it, ever."""
    try:
        _storable("user", value)
    except HubError:
        return False
    return True


def user_id(value: Any, field: str = "user") -> str:
    """A user id as a token's ``sub`` may carry it (SPEC 11): anything else
    could never sign in to read the notification."""
    if not isinstance(value, str):
        raise _bad(field, f"must be a string, got {type(value).__name__}")
    _storable(field, value)
    if not value or value.isspace():
        raise _bad(field, "must not be empty")
    if "." in value or "*" in value or ">" in value:
        raise _bad(field, "must not contain '.', '*' or '>'")
    if len(value.encode()) > USER_MAX_BYTES:
        raise _bad(field, f"is over {USER_MAX_BYTES} bytes")
    return value


def _title(value: Any) -> str:
    if not isinstance(value, str):
        raise _bad("title", f"must be a string, got {type(value).__name__}")
    _storable("title", value)
    if not value.strip():
        raise _bad("title", "must not be empty")
    if len(value) > TITLE_MAX_CHARS:
        raise _bad("title", f"is over {TITLE_MAX_CHARS} characters ({len(value)})")
    return value


def _message(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise _bad("message", f"must be a string, got {type(value).__name__}")
    size = len(_storable("message", value).encode())
    if size > limit:
        raise _bad("message", f"is {size} bytes, over MAX_MESSAGE_BYTES ({limit})")
    return value


def _level(value: Any) -> str:
    if not isinstance(value, str) or value not in LEVELS:
        raise _bad("level", f"must be one of {', '.join(LEVELS)}; got {value!r}")
    return value


def _priority(value: Any) -> str:
    try:
        return Priority.parse(value).name.lower()
    except ValueError:
        raise _bad("priority", f"must be one of low, normal, high, critical; got {value!r}") from None


def _data(value: Any, limit: int) -> Any:
    try:
        size = len(orjson.dumps(value))
    except TypeError as error:  # from hub.notify: a Python object JSON cannot carry
        raise _bad("data", f"is not JSON-encodable: {error}") from None
    if size > limit:
        raise _bad("data", f"is {size} bytes as JSON, over MAX_MESSAGE_BYTES ({limit})")
    return value


def listing_query(request) -> tuple[bool, int, int | None]:
    """``GET /notifications``'s ``unread``, ``limit`` and ``before`` (as the
    store's id), each read with ``request.first`` (a repeated one is a 400)."""
    raw_unread = request.first("unread")
    if raw_unread is None or raw_unread.lower() in ("", "0", "false", "no"):
        unread = False
    elif raw_unread.lower() in ("1", "true", "yes"):
        unread = True
    else:
        raise _bad("unread", f"must be 1 or 0, got {raw_unread!r}")
    raw_limit = request.first("limit")
    if raw_limit is None:
        limit = LIMIT_DEFAULT
    else:
        limit = int(raw_limit) if raw_limit.isascii() and raw_limit.isdigit() else 0
        if not 1 <= limit <= LIMIT_MAX:
            raise _bad("limit", f"must be an integer from 1 to {LIMIT_MAX}, got {raw_limit!r}")
    return unread, limit, before_id(request.first("before"))


def before_id(raw: str | None) -> int | None:
    """A listing's ``before`` (a record's id) as the store's id; None when absent."""
    if raw is None:
        return None
    before = parse_id(raw)
    if before is None:
        raise _bad("before", f"must be a notification id, got {raw!r}")
    return before

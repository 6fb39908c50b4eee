"""The notification store interface (SPEC 8) and what its implementations share.

A store keeps per-user notifications durably. Every method takes the user it
acts for: a notification of another user behaves exactly like a missing one,
so nothing tells a caller that someone else's id exists.

Records are JSON-able dicts::

    {"id": "42", "user": "alice", "title": "...", "message": "...",
     "level": "info", "priority": "normal", "data": <any JSON or null>,
     "read": false, "created_at": <ms since the epoch>}

Ids are integers inside the store (keyset pagination orders by them) and
decimal strings outside: clients treat them as opaque.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
import re
import time
from typing import Any

import orjson

from ...errors import HubError

log = logging.getLogger("hubbub.inbox")

# A store id is a positive signed 64-bit integer (both SQLite and PostgreSQL BIGINT).
_ID = re.compile(r"[1-9][0-9]{0,18}")
_MAX_ID = (1 << 63) - 1

# The columns every query returns, in this order; ``record_of`` maps a row.
COLUMNS = "id, user_id, title, message, level, priority, data, read, created_at"


class StoreError(HubError):
    """A store call failed: ``StoreUnavailable`` (503) or ``StoreFault`` (500).
    ``detail`` is what went wrong, without the words the status adds."""

    def __init__(self, code: int, reason: str, detail: str) -> None:
        super().__init__(code, reason)
        self.detail = detail


class StoreUnavailable(StoreError):
    """The database cannot answer now (unreachable, connection lost, pool
    exhausted, locked too long, out of space, not open): 503, because the same
    request may well succeed later or on another node."""

    def __init__(self, detail: str) -> None:
        super().__init__(503, f"notification store unavailable: {detail}", detail)


class StoreFault(StoreError):
    """The database refused this request for a reason that waiting will not
    change (a data error, a constraint, a bug of ours): 500, so that nobody
    retries it and nobody goes looking for a database outage."""

    def __init__(self, detail: str) -> None:
        super().__init__(500, f"notification store failed: {detail}", detail)


def fault(driver: str, error: BaseException) -> StoreFault:
    """A ``StoreFault`` for an error that is not the database being away; its
    traceback is logged here, since the answer carries only the reason."""
    detail = f"{driver}: {type(error).__name__}: {error}"
    log.error("notification store failed (answered 500): %s", detail, exc_info=error)
    return StoreFault(detail)


@dataclasses.dataclass(frozen=True)
class NewNotification:
    """A validated notification, ready to store (see ``validate``)."""

    user: str
    title: str
    message: str
    level: str = "info"
    priority: str = "normal"
    data: Any = None


def parse_id(text: str | None) -> int | None:
    """A client's id as the store's integer, or None when it cannot be one."""
    if text is None or not _ID.fullmatch(text):
        return None
    value = int(text)
    return value if value <= _MAX_ID else None


def encode_data(data: Any) -> str | None:
    """``data`` as the JSON text a store keeps; None stays SQL NULL."""
    return None if data is None else orjson.dumps(data).decode()


def record_of(row: tuple) -> dict[str, Any]:
    """A stored row (in ``COLUMNS`` order) as the record clients see."""
    id_, user, title, message, level, priority, data, read, created_at = row
    return {
        "id": str(id_), "user": user, "title": title, "message": message,
        "level": level, "priority": priority,
        "data": None if data is None else orjson.loads(data),
        "read": bool(read), "created_at": int(created_at),
    }


def pending_migrations(migrations: list[tuple[int, list[str]]], current: int) -> list[tuple[int, list[str]]]:
    """The migrations after schema version ``current``, in order;
    StoreUnavailable when the database is newer than this code understands
    (a node of a newer release can serve it)."""
    latest = migrations[-1][0]
    if current > latest:
        raise StoreUnavailable(f"the database schema is version {current}, newer than this hubbub "
                               f"understands ({latest}); upgrade hubbub")
    return [(version, statements) for version, statements in migrations if version > current]


def page_query(param: str, unread_test: str, user: str, unread_only: bool, limit: int,
               before_id: int | None) -> tuple[str, list[Any]]:
    """SQL and arguments for one newest-first keyset page of ``user``'s
    notifications; ``param`` is the driver's placeholder (``?`` or ``%s``),
    ``unread_test`` its SQL for an unread row."""
    sql = f"SELECT {COLUMNS} FROM hubbub_notifications WHERE user_id = {param}"
    args: list[Any] = [user]
    if unread_only:
        sql += f" AND {unread_test}"
    if before_id is not None:
        sql += f" AND id < {param}"
        args.append(before_id)
    sql += f" ORDER BY id DESC LIMIT {param}"
    args.append(limit)
    return sql, args


def now_ms() -> int:
    return int(time.time() * 1000)


class NotificationStore(abc.ABC):
    """The durable inbox. ``open`` (creating and migrating the schema) must be
    awaited before anything else, ``close`` at the end; no method blocks the
    event loop. Driver failures surface as ``StoreUnavailable`` (503) when the
    database cannot answer now, else as ``StoreFault`` (500).

    ``ttl`` (seconds) and ``max_per_user`` are the retention ``prune`` applies.
    """

    def __init__(self, *, ttl: float, max_per_user: int) -> None:
        self.ttl = ttl
        self.max_per_user = max_per_user

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create the schema on first start and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads; idempotent."""

    @abc.abstractmethod
    async def create(self, new: NewNotification, created_at: int | None = None) -> dict[str, Any]:
        """Store an unread notification and return its record."""

    @abc.abstractmethod
    async def list(self, user: str, *, unread_only: bool = False, limit: int = 50,
                   before_id: int | None = None) -> list[dict[str, Any]]:
        """The user's notifications, newest first; ``before_id`` continues a
        previous page (only ids smaller than it)."""

    @abc.abstractmethod
    async def mark_read(self, user: str, id_: int) -> dict[str, Any] | None:
        """Mark one read; its record, or None when the user has no such id."""

    @abc.abstractmethod
    async def mark_all_read(self, user: str) -> int:
        """Mark every unread one of the user read; how many changed."""

    @abc.abstractmethod
    async def delete(self, user: str, id_: int) -> bool:
        """Delete one; False when the user has no such id."""

    @abc.abstractmethod
    async def unread_count(self, user: str) -> int:
        """How many of the user's notifications are unread."""

    @abc.abstractmethod
    async def prune(self, now: float | None = None) -> int:
        """Apply retention at ``now`` (seconds since the epoch, default the
        clock): delete what is older than ``ttl``, then each user's oldest
        beyond ``max_per_user``. Returns how many were deleted."""

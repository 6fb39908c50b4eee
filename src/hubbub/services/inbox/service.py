"""The inbox service: a store plus the live events every change announces (SPEC 8).

``Inbox`` owns a ``NotificationStore`` and a callback ``emit(user, event,
payload)`` that carries events to the user's live connections (the hub
wires it; it may be a plain or an async function). After each change:

- create   → ``notification`` (the record), then ``unread_count`` ``{count}``
- read     → ``unread_count``
- read-all → ``unread_count``
- delete   → ``notification_deleted`` ``{id}``, then ``unread_count``

The store is the truth and the events are a best-effort echo of it: a
change that was stored is answered as done even when ``emit`` fails (the
client's next connect brings the count anyway).

Every store call is timed and reported to ``observe(operation, seconds)``
(the operation is the store method's name), for the store latency metric.

Changes of one user are serialized in this process, so the counts a user's
tabs receive arrive in the order the changes happened, never a stale count
after a fresh one.

A user id that no store can keep (a token's ``sub`` with a NUL or a lone
surrogate; ``validate.storable``) has an empty inbox: nothing can ever be
created for it, so its reads answer empty and its changes find nothing,
without asking the store (which would fail, and blame itself).
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import validate
from .store import NotificationStore, parse_id
from .stores import store_from_config

log = logging.getLogger("hubbub.inbox")

Emit = Callable[[str, str, Any], Any]
Observe = Callable[[str, float], None]
T = TypeVar("T")
PRUNE_INTERVAL = 300.0  # seconds between background retention passes


def _no_emit(user: str, event: str, payload: Any) -> None:
    return None


class Inbox:
    def __init__(self, store: NotificationStore, emit: Emit | None = None, *,
                 max_message_bytes: int = 64 << 10, prune_interval: float = PRUNE_INTERVAL,
                 observe: Observe | None = None) -> None:
        self.store = store
        self.emit = emit or _no_emit
        self.observe = observe
        self.max_message_bytes = max_message_bytes
        self.prune_interval = prune_interval
        self._pruner: asyncio.Task | None = None
        self._locks: dict[str, list] = {}  # user -> [asyncio.Lock, holders and waiters]

    @classmethod
    def from_config(cls, config, emit: Emit | None = None, **options: Any) -> "Inbox":
        return cls(store_from_config(config), emit, max_message_bytes=config.max_message_bytes, **options)

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Open the store (migrating it) and start background pruning."""
        await self.store.open()
        self._pruner = asyncio.create_task(self._prune_forever(), name="hubbub-inbox-prune")

    async def stop(self) -> None:
        pruner, self._pruner = self._pruner, None
        if pruner is not None:
            pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruner
        await self.store.close()

    async def _prune_forever(self) -> None:
        while True:
            try:
                removed = await self._timed("prune", self.store.prune())
                if removed:
                    log.info("inbox retention removed %d notification(s)", removed)
            except Exception:
                log.exception("inbox pruning failed; retrying in %.0f s", self.prune_interval)
            await asyncio.sleep(self.prune_interval)

    async def prune(self, now: float | None = None) -> int:
        return await self._timed("prune", self.store.prune(now))

    # -- changes ---------------------------------------------------------------
    async def create(self, payload: Any) -> dict[str, Any]:
        """``POST /notifications``: validate a decoded body, store, announce."""
        new = validate.notification(payload, self.max_message_bytes)
        async with self._serialized(new.user):
            record = await self._timed("create", self.store.create(new))
            await self._emit(new.user, "notification", record)
            await self._emit_count(new.user)
        return record

    async def notify(self, user: str, title: str, message: str, *, level: str = "info",
                     priority: str = "normal", data: Any = None) -> dict[str, Any]:
        """``hub.notify``: the same validation and events as the endpoint."""
        return await self.create({"user": user, "title": title, "message": message,
                                  "level": level, "priority": priority, "data": data})

    async def mark_read(self, user: str, id_: str) -> dict[str, Any] | None:
        """Mark one read; None when the user has no notification ``id_``."""
        key = parse_id(id_)
        if key is None or not validate.storable(user):
            return None
        async with self._serialized(user):
            record = await self._timed("mark_read", self.store.mark_read(user, key))
            if record is not None:
                await self._emit_count(user)
        return record

    async def mark_all_read(self, user: str) -> int:
        if not validate.storable(user):
            return 0
        async with self._serialized(user):
            changed = await self._timed("mark_all_read", self.store.mark_all_read(user))
            await self._emit_count(user)
        return changed

    async def delete(self, user: str, id_: str) -> bool:
        """Delete one; False when the user has no notification ``id_``."""
        key = parse_id(id_)
        if key is None or not validate.storable(user):
            return False
        async with self._serialized(user):
            deleted = await self._timed("delete", self.store.delete(user, key))
            if deleted:
                await self._emit(user, "notification_deleted", {"id": id_})
                await self._emit_count(user)
        return deleted

    # -- reads -----------------------------------------------------------------
    async def list(self, user: str, *, unread_only: bool = False, limit: int = validate.LIMIT_DEFAULT,
                   before: str | int | None = None) -> list[dict[str, Any]]:
        """Newest first; ``before`` (a record's id) continues after that record."""
        if isinstance(before, str):
            before = validate.before_id(before)
        if not validate.storable(user):
            return []
        return await self._timed("list", self.store.list(user, unread_only=unread_only, limit=limit,
                                                                before_id=before))

    async def unread_count(self, user: str) -> int:
        """What a connection of ``user`` is told on connect (``unread_count``)."""
        if not validate.storable(user):
            return 0
        return await self._timed("unread_count", self.store.unread_count(user))

    async def unread_count_in_order(self, user: str) -> int:
        """The count read in line with the user's changes: sent on connect, it
        can never arrive after (and so overwrite) the count of a newer change."""
        if not validate.storable(user):
            return 0
        async with self._serialized(user):
            return await self._timed("unread_count", self.store.unread_count(user))

    # -- helpers ---------------------------------------------------------------
    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        if self.observe is None:
            return await call
        start = time.perf_counter()
        try:
            return await call
        finally:
            self.observe(operation, time.perf_counter() - start)

    async def _emit_count(self, user: str) -> None:
        count = await self._timed("unread_count", self.store.unread_count(user))
        await self._emit(user, "unread_count", {"count": count})

    async def _emit(self, user: str, event: str, payload: Any) -> None:
        try:
            result = self.emit(user, event, payload)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("inbox: live delivery of %r to user %r failed", event, user)

    @contextlib.asynccontextmanager
    async def _serialized(self, user: str):
        entry = self._locks.get(user)
        if entry is None:
            entry = self._locks[user] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[user]

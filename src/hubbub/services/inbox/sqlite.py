"""The embedded notification store: one SQLite file in WAL mode.

Every call runs on ONE dedicated worker thread that owns the connection, so
the event loop never waits on disk and the connection is never shared
between threads. Writes commit with ``synchronous=FULL``: a notification
answered 201 survives a crash of the process or the machine.

Several processes may share the file (WAL allows readers during a write);
``busy_timeout`` makes a writer wait for another instead of failing, and the
migration runs under ``BEGIN IMMEDIATE`` so two processes starting at once
apply it once.
"""
from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .store import (COLUMNS, NewNotification, NotificationStore, StoreError, StoreUnavailable, encode_data,
                    fault, now_ms, page_query, pending_migrations, record_of)

BUSY_TIMEOUT = 10.0  # seconds a write waits for another process's write lock
WAL_RETRY = 0.01  # seconds between tries of the WAL switch (see _enable_wal)

# SQLite's primary result codes that say the database cannot answer now,
# whatever the request (https://sqlite.org/rescode.html): busy or locked past
# the busy timeout, out of memory, read-only, interrupted, an I/O error, disk
# full, cannot open, a locking protocol error. Not among them: a corrupt file
# (11) or one that is no database (26), which no wait repairs: a 500 and a
# traceback, for someone to look.
UNAVAILABLE_CODES = {5, 6, 7, 8, 9, 10, 13, 14, 15}

# Ordered: migration N brings the schema from version N-1 to N. Never edit a
# released one; append a new one.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        # AUTOINCREMENT: an id is never reused after a delete, so a client's
        # cursor or cached id can never name a different notification.
        """CREATE TABLE hubbub_notifications (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               user_id TEXT NOT NULL,
               title TEXT NOT NULL,
               message TEXT NOT NULL,
               level TEXT NOT NULL,
               priority TEXT NOT NULL,
               data TEXT,
               read INTEGER NOT NULL DEFAULT 0,
               created_at INTEGER NOT NULL)""",
        "CREATE INDEX hubbub_notifications_user ON hubbub_notifications (user_id, id)",
        # Unread counts and unread=1 listings touch only unread rows.
        "CREATE INDEX hubbub_notifications_unread ON hubbub_notifications (user_id, id) WHERE read = 0",
        "CREATE INDEX hubbub_notifications_created ON hubbub_notifications (created_at)",
    ]),
]


class SqliteStore(NotificationStore):
    def __init__(self, path: str, *, ttl: float, max_per_user: int,
                 busy_timeout: float = BUSY_TIMEOUT) -> None:
        super().__init__(ttl=ttl, max_per_user=max_per_user)
        self.path = path
        self.busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    # -- plumbing ----------------------------------------------------------------
    async def _run(self, fn, *args):
        if self._thread is None:
            raise StoreUnavailable("the store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except Exception as error:
            if self._thread is None:  # closed while the call ran: its "closed database" is that
                raise StoreUnavailable("the store was closed") from error
            raise _classified(error) from error

    async def open(self) -> None:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubbub-sqlite")
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._open)
        except BaseException as error:
            await self.close()
            if isinstance(error, Exception) and not isinstance(error, StoreError):
                # Whatever the cause (a directory it may not create, a file that
                # is no database), the store is not there to answer.
                raise StoreUnavailable(f"cannot open SQLite at {self.path}: {error}") from error
            raise

    def _open(self) -> None:
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # isolation_level=None: no implicit transactions; each statement
        # commits by itself unless we BEGIN.
        db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            _enable_wal(db, self.busy_timeout)
            db.execute("PRAGMA synchronous = FULL")
            _migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(thread, db.close)
        thread.shutdown(wait=False)

    # -- operations (each *_sync runs on the store's thread) ---------------------
    async def create(self, new: NewNotification, created_at: int | None = None) -> dict[str, Any]:
        row = (new.user, new.title, new.message, new.level, new.priority, encode_data(new.data),
               now_ms() if created_at is None else created_at)
        return await self._run(self._create, row)

    def _create(self, row: tuple) -> dict[str, Any]:
        cursor = self._db.execute(
            "INSERT INTO hubbub_notifications (user_id, title, message, level, priority, data, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        return record_of((cursor.lastrowid, *row[:6], False, row[6]))

    async def list(self, user: str, *, unread_only: bool = False, limit: int = 50,
                   before_id: int | None = None) -> list[dict[str, Any]]:
        sql, args = page_query("?", "read = 0", user, unread_only, limit, before_id)
        rows = await self._run(lambda: self._db.execute(sql, args).fetchall())
        return [record_of(row) for row in rows]

    async def mark_read(self, user: str, id_: int) -> dict[str, Any] | None:
        row = await self._run(lambda: self._db.execute(
            f"UPDATE hubbub_notifications SET read = 1 WHERE id = ? AND user_id = ? RETURNING {COLUMNS}",
            (id_, user)).fetchone())
        return None if row is None else record_of(row)

    async def mark_all_read(self, user: str) -> int:
        return await self._run(lambda: self._db.execute(
            "UPDATE hubbub_notifications SET read = 1 WHERE user_id = ? AND read = 0", (user,)).rowcount)

    async def delete(self, user: str, id_: int) -> bool:
        return await self._run(lambda: self._db.execute(
            "DELETE FROM hubbub_notifications WHERE id = ? AND user_id = ?", (id_, user)).rowcount > 0)

    async def unread_count(self, user: str) -> int:
        return await self._run(lambda: self._db.execute(
            "SELECT COUNT(*) FROM hubbub_notifications WHERE user_id = ? AND read = 0",
            (user,)).fetchone()[0])

    async def prune(self, now: float | None = None) -> int:
        cutoff = (now_ms() if now is None else int(now * 1000)) - int(self.ttl * 1000)
        return await self._run(self._prune, cutoff, self.max_per_user)

    def _prune(self, cutoff: int, cap: int) -> int:
        expired = self._db.execute("DELETE FROM hubbub_notifications WHERE created_at < ?", (cutoff,)).rowcount
        # Only users over the cap are ranked, so a prune of a big table with
        # few heavy users stays cheap.
        over_cap = self._db.execute(
            """DELETE FROM hubbub_notifications WHERE id IN (
                   SELECT id FROM (
                       SELECT id, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id DESC) AS rn
                       FROM hubbub_notifications
                       WHERE user_id IN (SELECT user_id FROM hubbub_notifications
                                         GROUP BY user_id HAVING COUNT(*) > ?))
                   WHERE rn > ?)""", (cap, cap)).rowcount
        return expired + over_cap


def _classified(error: Exception) -> StoreError:
    """What a failed call means for the client: the database away (503) or not (500).

    By SQLite's result code rather than the exception class: "database is
    locked" and "no such table" are both OperationalError, but only the first
    goes away by waiting. Anything else (a constraint, a value SQLite cannot
    take, a bug of ours) would fail alike on a retry."""
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(error, sqlite3.Error) and code is not None and code & 0xFF in UNAVAILABLE_CODES:
        return StoreUnavailable(f"SQLite: {error}")
    return fault("SQLite", error)


def _enable_wal(db: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL mode. While another connection switches the same new file,
    the pragma fails at once with "database is locked": SQLite does not call
    the busy handler for it (seen with six processes opening one new file).
    So it is retried here, within the same ``busy_timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(WAL_RETRY)


def _migrate(db: sqlite3.Connection) -> None:
    """Apply the pending migrations, once, even with several processes starting:
    BEGIN IMMEDIATE takes the write lock before the version is read."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS hubbub_schema_version (version INTEGER PRIMARY KEY)")
        current = db.execute("SELECT COALESCE(MAX(version), 0) FROM hubbub_schema_version").fetchone()[0]
        for version, statements in pending_migrations(MIGRATIONS, current):
            for statement in statements:
                db.execute(statement)
            db.execute("INSERT INTO hubbub_schema_version (version) VALUES (?)", (version,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise

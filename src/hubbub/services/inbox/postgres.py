"""The fleet notification store: PostgreSQL through psycopg 3 (async) and its pool.

Every node of a fleet points at the same database. The schema is migrated at
start under a transaction-scoped advisory lock, so nodes starting at once
apply each migration exactly once. Tables live in the connection's
``search_path`` (a URL may choose a schema with ``?options=-csearch_path%3Dname``).
"""
from __future__ import annotations

import re
from typing import Any

from .store import (COLUMNS, NewNotification, NotificationStore, StoreError, StoreUnavailable, encode_data,
                    fault, now_ms, page_query, pending_migrations, record_of)

try:
    import psycopg
    from psycopg_pool import AsyncConnectionPool
except ImportError as error:  # the extra is missing, or only part of it
    psycopg = None
    _import_error: ImportError | None = error
else:
    _import_error = None


def _missing_driver(error: ImportError) -> str:
    """Names the module that is missing, as the ImportError does: psycopg
    installed without psycopg_pool is not "needs psycopg"."""
    what = f"the module {error.name!r}" if error.name else "its driver"
    return (f"a postgresql:// store needs {what}, which cannot be imported ({error}):"
            " pip install 'hubbub[postgres]'")


POOL_MIN = 1
POOL_MAX = 10
CONNECT_TIMEOUT = 10.0
# Any constant works; it only has to be the same on every node.
MIGRATION_LOCK = 0x6875_6262_7562  # "hubbub"

# Ordered: migration N brings the schema from version N-1 to N. Never edit a
# released one; append a new one.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        # An identity is never reused after a delete (as SQLite's AUTOINCREMENT).
        # data is TEXT, not jsonb: stored and returned byte for byte as SQLite does.
        """CREATE TABLE hubbub_notifications (
               id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               user_id TEXT NOT NULL,
               title TEXT NOT NULL,
               message TEXT NOT NULL,
               level TEXT NOT NULL,
               priority TEXT NOT NULL,
               data TEXT,
               read BOOLEAN NOT NULL DEFAULT FALSE,
               created_at BIGINT NOT NULL)""",
        "CREATE INDEX hubbub_notifications_user ON hubbub_notifications (user_id, id)",
        "CREATE INDEX hubbub_notifications_unread ON hubbub_notifications (user_id, id) WHERE NOT read",
        "CREATE INDEX hubbub_notifications_created ON hubbub_notifications (created_at)",
    ]),
]


def _masked(url: str) -> str:
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


class PostgresStore(NotificationStore):
    def __init__(self, url: str, *, ttl: float, max_per_user: int,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        super().__init__(ttl=ttl, max_per_user=max_per_user)
        self.connect_timeout = connect_timeout
        if _import_error is not None:
            raise StoreUnavailable(_missing_driver(_import_error))
        self.url = url
        self._pool: AsyncConnectionPool | None = None

    async def open(self) -> None:
        # autocommit: each single-statement operation is its own transaction
        # without an extra BEGIN/COMMIT round trip.
        pool = AsyncConnectionPool(self.url, min_size=POOL_MIN, max_size=POOL_MAX, open=False,
                                   kwargs={"autocommit": True}, name="hubbub-inbox")
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
        except Exception as error:
            await pool.close()
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {_masked(self.url)}: {error}") from error
        self._pool = pool
        try:
            async with pool.connection() as conn:
                await _migrate(conn)
        except psycopg.Error as error:
            await self.close()
            raise StoreUnavailable(f"PostgreSQL migration failed: {error}") from error
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _fetch(self, sql: str, args: tuple | list, *, rows: str = "all"):
        """Run one statement: its rows ("all"), first row ("one") or rowcount ("count")."""
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(sql, args)
                if rows == "count":
                    return cursor.rowcount
                if rows == "one":
                    return await cursor.fetchone()
                return await cursor.fetchall()
        except Exception as error:
            raise _classified(error) from error

    async def create(self, new: NewNotification, created_at: int | None = None) -> dict[str, Any]:
        row = (new.user, new.title, new.message, new.level, new.priority, encode_data(new.data),
               now_ms() if created_at is None else created_at)
        (id_,) = await self._fetch(
            "INSERT INTO hubbub_notifications (user_id, title, message, level, priority, data, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id", row, rows="one")
        return record_of((id_, *row[:6], False, row[6]))

    async def list(self, user: str, *, unread_only: bool = False, limit: int = 50,
                   before_id: int | None = None) -> list[dict[str, Any]]:
        sql, args = page_query("%s", "NOT read", user, unread_only, limit, before_id)
        return [record_of(row) for row in await self._fetch(sql, args)]

    async def mark_read(self, user: str, id_: int) -> dict[str, Any] | None:
        row = await self._fetch(
            f"UPDATE hubbub_notifications SET read = TRUE WHERE id = %s AND user_id = %s RETURNING {COLUMNS}",
            (id_, user), rows="one")
        return None if row is None else record_of(row)

    async def mark_all_read(self, user: str) -> int:
        return await self._fetch("UPDATE hubbub_notifications SET read = TRUE WHERE user_id = %s AND NOT read",
                                 (user,), rows="count")

    async def delete(self, user: str, id_: int) -> bool:
        return await self._fetch("DELETE FROM hubbub_notifications WHERE id = %s AND user_id = %s",
                                 (id_, user), rows="count") > 0

    async def unread_count(self, user: str) -> int:
        (count,) = await self._fetch("SELECT COUNT(*) FROM hubbub_notifications WHERE user_id = %s AND NOT read",
                                     (user,), rows="one")
        return count

    async def prune(self, now: float | None = None) -> int:
        cutoff = (now_ms() if now is None else int(now * 1000)) - int(self.ttl * 1000)
        expired = await self._fetch("DELETE FROM hubbub_notifications WHERE created_at < %s",
                                    (cutoff,), rows="count")
        cap = self.max_per_user
        over_cap = await self._fetch(
            """DELETE FROM hubbub_notifications WHERE id IN (
                   SELECT id FROM (
                       SELECT id, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id DESC) AS rn
                       FROM hubbub_notifications
                       WHERE user_id IN (SELECT user_id FROM hubbub_notifications
                                         GROUP BY user_id HAVING COUNT(*) > %s)) AS ranked
                   WHERE rn > %s)""", (cap, cap), rows="count")
        return expired + over_cap


def _classified(error: Exception) -> StoreError:
    """What a failed call means for the client: the database away (503) or not (500).

    OperationalError is the server or the link failing, whatever the request:
    connection refused or lost, admin shutdown, too many connections, disk
    full, statement or lock timeout, serialization failure; the pool's
    PoolTimeout, PoolClosed and TooManyRequests are OperationalErrors too.
    InterfaceError is a connection that is closed or broken. A read-only
    transaction is a primary that became a standby (failover in progress).
    Everything else (DataError, IntegrityError, ProgrammingError, ...) is
    about this request or this code, so a retry would fail alike."""
    if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError,
                          psycopg.errors.ReadOnlySqlTransaction)):
        return StoreUnavailable(f"PostgreSQL: {error}")
    return fault("PostgreSQL", error)


async def _migrate(conn) -> None:
    """Apply the pending migrations in one transaction under an advisory lock:
    a second node starting at once waits, then finds nothing left to do."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS hubbub_schema_version (version INTEGER PRIMARY KEY)")
        cursor = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM hubbub_schema_version")
        (current,) = await cursor.fetchone()
        for version, statements in pending_migrations(MIGRATIONS, current):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO hubbub_schema_version (version) VALUES (%s)", (version,))

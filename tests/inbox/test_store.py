"""The NotificationStore contract, run alike on SQLite and on the real PostgreSQL."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid

import psycopg
import psycopg_pool
import pytest

from hubbub.services.inbox import NewNotification, StoreError, open_store
from hubbub.services.inbox.postgres import POOL_MAX
from hubbub.services.inbox.sqlite import SqliteStore
from hubbub.services.inbox.store import StoreFault, StoreUnavailable
from hubbub.services.inbox.stores import sqlite_path

from .conftest import POSTGRES_URL, with_libpq_option


def note(user="alice", title="Hello", message="world", **fields) -> NewNotification:
    return NewNotification(user=user, title=title, message=message, **fields)


async def test_lifecycle(store):
    before = int(time.time() * 1000)
    first = await store.create(note(title="one", level="success", priority="high",
                                    data={"order": 42, "tags": ["a", "ü"], "none": None}))
    second = await store.create(note(title="two"))
    third = await store.create(note(title="three", data=[1, 2.5, "x"]))
    await store.create(note(user="bob", title="bob's"))

    assert first == {
        "id": first["id"], "user": "alice", "title": "one", "message": "world", "level": "success",
        "priority": "high", "data": {"order": 42, "tags": ["a", "ü"], "none": None}, "read": False,
        "created_at": first["created_at"],
    }
    assert isinstance(first["id"], str) and first["id"].isdigit()
    assert before <= first["created_at"] <= int(time.time() * 1000)
    assert second["data"] is None and second["level"] == "info" and second["priority"] == "normal"

    listed = await store.list("alice")
    assert [r["title"] for r in listed] == ["three", "two", "one"]  # newest first
    assert listed[2] == first and listed[0] == third
    assert await store.unread_count("alice") == 3

    marked = await store.mark_read("alice", int(second["id"]))
    assert marked == {**second, "read": True}
    assert await store.mark_read("alice", int(second["id"])) == marked  # idempotent
    assert await store.unread_count("alice") == 2
    assert [r["title"] for r in await store.list("alice", unread_only=True)] == ["three", "one"]

    assert await store.mark_all_read("alice") == 2
    assert await store.mark_all_read("alice") == 0
    assert await store.unread_count("alice") == 0
    assert await store.list("alice", unread_only=True) == []

    assert await store.delete("alice", int(third["id"])) is True
    assert await store.delete("alice", int(third["id"])) is False
    assert [r["title"] for r in await store.list("alice")] == ["two", "one"]
    assert await store.unread_count("bob") == 1  # untouched by alice's read-all


async def test_two_users_never_see_each_other(store):
    alices = [await store.create(note(user="alice", title=f"a{i}")) for i in range(3)]
    bobs = [await store.create(note(user="bob", title=f"b{i}")) for i in range(2)]

    assert {r["user"] for r in await store.list("alice")} == {"alice"}
    assert [r["title"] for r in await store.list("bob")] == ["b1", "b0"]
    for record in alices:
        key = int(record["id"])
        # Another user's id behaves exactly like a missing one.
        assert await store.mark_read("bob", key) is None
        assert await store.delete("bob", key) is False
    assert await store.mark_read("bob", 10**15) is None
    assert await store.delete("bob", 10**15) is False
    assert await store.mark_all_read("bob") == 2
    assert await store.unread_count("alice") == 3
    assert [r["read"] for r in await store.list("alice")] == [False] * 3
    assert await store.list("carol") == [] and await store.unread_count("carol") == 0
    assert len(bobs) == 2


async def test_restart_keeps_notifications_and_counts(make_store):
    store = await make_store()
    kept = [await store.create(note(title=f"n{i}", data={"i": i})) for i in range(4)]
    await store.mark_read("alice", int(kept[1]["id"]))
    await store.delete("alice", int(kept[3]["id"]))  # the newest: its id must not come back
    listing, count = await store.list("alice"), await store.unread_count("alice")
    await store.close()

    reopened = await make_store()
    assert await reopened.list("alice") == listing
    assert await reopened.unread_count("alice") == count == 2
    fresh = await reopened.create(note(title="after restart"))
    assert int(fresh["id"]) > int(kept[3]["id"])  # ids are never reused, even after a delete


async def test_keyset_pagination(store):
    ids = [int((await store.create(note(title=f"n{i}")))["id"]) for i in range(25)]
    await store.create(note(user="bob"))  # interleaved rows of another user stay out
    for key in ids[::3]:
        await store.mark_read("alice", key)

    def walk_ids(pages):
        return [int(r["id"]) for page in pages for r in page]

    pages, before = [], None
    while True:
        page = await store.list("alice", limit=10, before_id=before)
        if not page:
            break
        pages.append(page)
        before = int(page[-1]["id"])
    assert [len(p) for p in pages] == [10, 10, 5]
    assert walk_ids(pages) == sorted(ids, reverse=True)

    unread_pages, before = [], None
    while page := await store.list("alice", unread_only=True, limit=4, before_id=before):
        unread_pages.append(page)
        before = int(page[-1]["id"])
    unread = [key for i, key in enumerate(ids) if i % 3]
    assert walk_ids(unread_pages) == sorted(unread, reverse=True)
    assert await store.list("alice", limit=1) == [(await store.list("alice"))[0]]
    assert await store.list("alice", before_id=ids[0]) == []


async def test_prune_by_age(make_store):
    day = 86400.0
    store = await make_store(ttl=7 * day)
    now = time.time()
    old = await store.create(note(title="old"), created_at=int((now - 8 * day) * 1000))
    await store.create(note(title="recent"), created_at=int((now - 6 * day) * 1000))
    await store.create(note(user="bob", title="bob old"), created_at=int((now - 30 * day) * 1000))
    await store.create(note(title="new"))
    assert old["created_at"] == int((now - 8 * day) * 1000)

    assert await store.prune(now) == 2
    assert [r["title"] for r in await store.list("alice")] == ["new", "recent"]
    assert await store.list("bob") == []
    assert await store.unread_count("alice") == 2
    assert await store.prune(now) == 0
    assert await store.prune(now + 6.5 * day) == 1  # "recent" ages out later
    assert [r["title"] for r in await store.list("alice")] == ["new"]


async def test_prune_per_user_cap_keeps_the_newest(make_store):
    store = await make_store(max_per_user=5)
    alice = [await store.create(note(title=f"a{i}")) for i in range(8)]
    await store.create(note(user="bob", title="b"))
    assert await store.prune() == 3
    assert [r["id"] for r in await store.list("alice")] == [r["id"] for r in reversed(alice[3:])]
    assert len(await store.list("bob")) == 1
    assert await store.unread_count("alice") == 5
    assert await store.prune() == 0


async def test_concurrent_migrations_apply_once(make_store, store_url):
    # Six stores (six connections, as six processes would have) start at once
    # on an empty database: each migration runs once, every one comes up.
    stores = await asyncio.gather(*(make_store() for _ in range(6)))
    records = await asyncio.gather(*(s.create(note(title=f"from {i}")) for i, s in enumerate(stores)))
    assert len({r["id"] for r in records}) == 6
    assert len(await stores[0].list("alice")) == 6
    assert await _schema_versions(stores[0]) == [1]


async def test_sqlite_stores_opening_one_new_file_at_once_all_come_up(tmp_path):
    # SQLite refuses a concurrent switch of a new file to WAL at once ("database
    # is locked", no busy wait): with six at a time that happened in about one
    # start in eight. Thirty new files, six stores each, every one comes up.
    from hubbub.services.inbox.sqlite import SqliteStore

    for trial in range(30):
        path = str(tmp_path / f"inbox-{trial}.db")
        stores = [SqliteStore(path, ttl=3600, max_per_user=100) for _ in range(6)]
        try:
            await asyncio.gather(*(store.open() for store in stores))
            assert await _schema_versions(stores[0]) == [1]
        finally:
            await asyncio.gather(*(store.close() for store in stores))


async def _schema_versions(store) -> list[int]:
    sql = "SELECT version FROM hubbub_schema_version ORDER BY version"
    if hasattr(store, "_pool"):
        async with store._pool.connection() as conn:
            return [v for (v,) in await (await conn.execute(sql)).fetchall()]
    return [v for (v,) in await store._run(lambda: store._db.execute(sql).fetchall())]


async def test_a_newer_schema_refuses_to_start(make_store):
    store = await make_store()
    sql = "INSERT INTO hubbub_schema_version (version) VALUES (99)"
    if hasattr(store, "_pool"):
        async with store._pool.connection() as conn:
            await conn.execute(sql)
    else:
        await store._run(lambda: store._db.execute(sql))
    await store.close()
    with pytest.raises(StoreError, match="version 99, newer than this hubbub"):
        await make_store()


async def test_a_closed_store_answers_503(make_store):
    store = await make_store()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError) as caught:
        await store.list("alice")
    assert caught.value.code == 503


def test_sqlite_and_postgres_answer_alike(sqlite_url, postgres_schema_url):
    """One scripted session on each implementation gives the same answers
    (ids and timestamps aside, which are the store's own)."""
    async def session(url):
        store = open_store(url, max_per_user=3)
        await store.open()
        try:
            out, ids = [], []
            for i in range(5):
                record = await store.create(note(title=f"t{i}", data={"i": i} if i % 2 else None),
                                            created_at=1_000 + i)
                ids.append(int(record["id"]))
                out.append(record)
            out.append(await store.mark_read("alice", ids[1]))
            out.append(await store.mark_read("bob", ids[2]))
            out.append(await store.delete("alice", ids[4]))
            out.append(await store.delete("bob", ids[3]))
            out.append(await store.list("alice", unread_only=True, limit=2))
            out.append(await store.list("alice", before_id=ids[3]))
            out.append(await store.unread_count("alice"))
            out.append(await store.mark_all_read("alice"))
            out.append(await store.prune(now=1_000 + 3 * 86400))
            out.append(await store.list("alice"))
            return _normalize(out, ids)
        finally:
            await store.close()

    async def both():
        return await session(sqlite_url), await session(postgres_schema_url)

    on_sqlite, on_postgres = asyncio.run(both())
    assert on_sqlite == on_postgres


def _normalize(value, ids):
    """Replace ids by their creation ordinal, so two databases' answers compare."""
    if isinstance(value, list):
        return [_normalize(item, ids) for item in value]
    if isinstance(value, dict):
        return {k: (ids.index(int(v)) if k == "id" else v) for k, v in value.items()}
    return value


async def test_postgres_unreachable_is_a_clear_error():
    store = open_store("postgresql://nobody@127.0.0.1:1/none", ttl=60, max_per_user=10)
    store.connect_timeout = 1.0
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL at postgresql://nobody@127.0.0.1:1"):
        await store.open()


async def test_sqlite_creates_its_file_and_directory_in_wal_mode(tmp_path):
    url = f"sqlite:///{tmp_path}/deep/er/hubbub.db"
    store = open_store(url)
    await store.open()
    try:
        assert (tmp_path / "deep" / "er" / "hubbub.db").is_file()
        mode = await store._run(lambda: store._db.execute("PRAGMA journal_mode").fetchone()[0])
        assert mode == "wal"
    finally:
        await store.close()


async def test_sqlite_relative_path_is_under_the_data_dir(tmp_path, monkeypatch):
    from hubbub.config import Config
    from hubbub.services.inbox.stores import store_from_config

    monkeypatch.chdir(tmp_path)
    in_cwd = store_from_config(Config(store="sqlite:///rel/hubbub.db"))
    assert in_cwd.path == str(tmp_path / "rel" / "hubbub.db")
    in_data_dir = store_from_config(Config(store="sqlite:///hubbub.db", data_dir=str(tmp_path / "data"),
                                           notification_ttl=60, notification_max_per_user=7))
    assert in_data_dir.path == str(tmp_path / "data" / "hubbub.db")
    assert (in_data_dir.ttl, in_data_dir.max_per_user) == (60, 7)
    await in_data_dir.open()
    await in_data_dir.create(note())
    await in_data_dir.close()
    assert (tmp_path / "data" / "hubbub.db").is_file()


async def test_sqlite_runs_off_the_event_loop_thread(tmp_path):
    import threading

    store = open_store(f"sqlite:///{tmp_path}/t.db")
    await store.open()
    try:
        worker = await store._run(lambda: threading.current_thread())
        assert worker is not threading.current_thread()
        assert await store._run(lambda: threading.current_thread()) is worker  # always the same one
    finally:
        await store.close()


# -- failures: a 503 only when the database is away --------------------------------------
async def _execute(store, sql: str) -> None:
    """Run ``sql`` on the store's own connection (a change made under a running store)."""
    if hasattr(store, "_pool"):
        async with store._pool.connection() as conn:
            await conn.execute(sql)
    else:
        await store._run(lambda: store._db.execute(sql))


async def test_a_value_the_database_refuses_is_a_500_that_blames_no_outage(store, caplog, monkeypatch):
    # Enabled again: a logging.config run earlier in the session (import-linter's) disables existing loggers.
    monkeypatch.setattr(logging.getLogger("hubbub.inbox"), "disabled", False)
    caplog.set_level(logging.ERROR, logger="hubbub.inbox")
    with pytest.raises(StoreFault) as caught:
        await store.create(note(), created_at=1 << 70)  # past BIGINT, past SQLite's INTEGER
    assert caught.value.code == 500
    assert caught.value.reason.startswith("notification store failed: ")
    assert "unavailable" not in caught.value.reason
    logged = [record for record in caplog.records if record.exc_info]
    assert logged and "answered 500" in logged[0].getMessage()  # with its traceback
    assert (await store.create(note(title="after")))["title"] == "after"  # the store still answers


async def test_a_missing_table_is_a_500_not_an_outage(store):
    """On SQLite "no such table" is an OperationalError like "database is
    locked": the code, not the class, says which one waiting would cure."""
    await _execute(store, "DROP TABLE hubbub_notifications")
    for call in (store.list("alice"), store.unread_count("alice"), store.create(note())):
        with pytest.raises(StoreFault) as caught:
            await call
        assert caught.value.code == 500 and "hubbub_notifications" in caught.value.reason


async def test_a_database_locked_too_long_is_a_503(store_url, tmp_path):
    """Another process holds the write lock past our wait: the store is
    unavailable (503, worth a retry), and answers again once it is released."""
    if store_url.startswith("sqlite:"):
        path = sqlite_path(store_url)
        store = SqliteStore(path, ttl=60, max_per_user=10, busy_timeout=0.2)
        await store.open()
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
    else:
        store = open_store(with_libpq_option(store_url, "lock_timeout=200"), ttl=60, max_per_user=10)
        await store.open()
        holder = psycopg.connect(store_url, connect_timeout=5)  # a transaction stays open
        holder.execute("LOCK TABLE hubbub_notifications IN ACCESS EXCLUSIVE MODE")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await asyncio.wait_for(store.create(note()), 10)
        assert caught.value.code == 503 and "lock" in caught.value.reason
        holder.rollback()  # the lock is released
        assert (await asyncio.wait_for(store.create(note(title="free")), 10))["title"] == "free"
    finally:
        holder.close()
        await store.close()


async def test_postgres_connection_lost_is_a_503_and_the_pool_recovers(postgres_schema_url):
    name = f"hubbub_lost_{uuid.uuid4().hex[:8]}"
    store = open_store(postgres_schema_url + f"&application_name={name}", ttl=60, max_per_user=10)
    await store.open()
    try:
        await store.create(note())
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
            killed = admin.execute("SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                   " WHERE application_name = %s", (name,)).fetchone()[0]
        assert killed >= 1
        with pytest.raises(StoreUnavailable) as caught:
            await store.list("alice")
        assert caught.value.code == 503
        for _ in range(POOL_MAX + 1):  # each dead connection fails once, then is replaced
            try:
                assert len(await store.list("alice")) == 1
                break
            except StoreUnavailable:
                pass
        else:
            pytest.fail("the pool never replaced its dead connections")
    finally:
        await store.close()


@pytest.mark.parametrize("error, code", [
    # The database or the link failing, whatever the request: 503.
    (psycopg.OperationalError("server closed the connection unexpectedly"), 503),
    (psycopg.InterfaceError("the connection is closed"), 503),
    (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), 503),
    (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), 503),
    (psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), 503),
    (psycopg.errors.TooManyConnections("sorry, too many clients already"), 503),
    (psycopg.errors.DiskFull("could not extend file"), 503),
    (psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"), 503),
    (psycopg_pool.PoolTimeout("couldn't get a connection after 30.00 sec"), 503),
    (psycopg_pool.PoolClosed("the pool 'hubbub-inbox' is already closed"), 503),
    (psycopg_pool.TooManyRequests("the pool 'hubbub-inbox' has already 10 requests waiting"), 503),
    # This request or this code: a retry fails alike, 500.
    (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), 500),
    (psycopg.errors.NumericValueOutOfRange("bigint out of range"), 500),
    (psycopg.errors.UniqueViolation("duplicate key value"), 500),
    (psycopg.errors.CheckViolation("violates check constraint"), 500),
    (psycopg.errors.UndefinedTable('relation "hubbub_notifications" does not exist'), 500),
    (psycopg.ProgrammingError("syntax error"), 500),
    (psycopg.errors.DataCorrupted("invalid page in block"), 500),  # no wait repairs it
    (psycopg.NotSupportedError("not supported"), 500),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), 500),
])
def test_psycopg_errors_are_mapped_deliberately(error, code):
    from hubbub.services.inbox.postgres import _classified

    assert _classified(error).code == code


def _sqlite_error(tmp_path, make) -> sqlite3.Error:
    try:
        make(tmp_path)
    except sqlite3.Error as error:
        return error
    raise AssertionError("no error")


def _locked(tmp_path):
    holder = sqlite3.connect(tmp_path / "db", isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    sqlite3.connect(tmp_path / "db", timeout=0).execute("INSERT INTO t VALUES (1)")


def _read_only(tmp_path):
    sqlite3.connect(tmp_path / "db").execute("CREATE TABLE t (x)")
    sqlite3.connect(f"file:{tmp_path / 'db'}?mode=ro", uri=True).execute("INSERT INTO t VALUES (1)")


def _not_a_database(tmp_path):
    (tmp_path / "db").write_bytes(b"this is no SQLite database, " * 100)
    sqlite3.connect(tmp_path / "db").execute("SELECT * FROM sqlite_master")


def _no_such_table(tmp_path):
    sqlite3.connect(tmp_path / "db").execute("SELECT * FROM hubbub_notifications")


def _constraint(tmp_path):
    db = sqlite3.connect(tmp_path / "db")
    db.execute("CREATE TABLE t (x NOT NULL)")
    db.execute("INSERT INTO t VALUES (NULL)")


@pytest.mark.parametrize("make, code", [
    (_locked, 503), (_read_only, 503),
    (_no_such_table, 500), (_constraint, 500), (_not_a_database, 500),  # waiting cures none
])
def test_sqlite_errors_are_mapped_by_their_code(tmp_path, make, code):
    """Real errors from a real SQLite, each classified as the store classifies them."""
    from hubbub.services.inbox.sqlite import _classified

    assert _classified(_sqlite_error(tmp_path, make)).code == code

"""Fixtures: each inbox test runs on SQLite (a temp file) and on the real PostgreSQL.

PostgreSQL is the server on this machine (HUBBUB_TEST_POSTGRES overrides the
URL). Each test gets its own schema, dropped at the end. When the server
cannot be reached the PostgreSQL cases skip with the reason, except under
CI=true, where that is a failure.
"""
from __future__ import annotations

import contextlib
import os
import urllib.parse
import uuid

import pytest

from hubbub.services.inbox.stores import open_store

POSTGRES_URL = os.environ.get("HUBBUB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
START_HINT = "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def _admin_connect():
    import psycopg

    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        message = f"PostgreSQL at {POSTGRES_URL} is unreachable ({error}); {START_HINT}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def _with_search_path(url: str, schema: str) -> str:
    """The URL with the session's search_path set to ``schema`` (libpq ``options``)."""
    sep = "&" if "?" in url else "?"
    return url + sep + "options=" + urllib.parse.quote(f"-csearch_path={schema}")


def with_libpq_option(url: str, setting: str) -> str:
    """A ``fresh_schema`` URL with one more server setting for its sessions
    (``lock_timeout=200``), appended to its libpq ``options``."""
    assert "options=" in url, url
    return url + urllib.parse.quote(f" -c{setting}")


@contextlib.contextmanager
def fresh_schema(prefix: str = "hubbub_test_"):
    """A fresh schema on the real server, as a store URL; dropped after.
    Unreachable: a skip with the reason, or a failure under CI=true."""
    admin = _admin_connect()
    schema = prefix + uuid.uuid4().hex[:12]
    admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield _with_search_path(POSTGRES_URL, schema)
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.fixture
def postgres_schema_url():
    """A fresh schema on the real server: yields its store URL, drops it after."""
    with fresh_schema() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path}/data/inbox.db"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request):
    """The same test, once per implementation: the two must behave alike."""
    return request.getfixturevalue(f"{request.param}_url" if request.param == "sqlite"
                                   else "postgres_schema_url")


@pytest.fixture
async def make_store(store_url):
    """Open a store on this test's database (several may share it); all closed after."""
    opened = []

    async def make(url: str | None = None, *, ttl: float = 30 * 86400.0, max_per_user: int = 1000):
        store = open_store(url or store_url, ttl=ttl, max_per_user=max_per_user)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store):
    return await make_store()

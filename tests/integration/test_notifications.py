"""The notification inbox (SPEC 8) through the real server: every endpoint on
SQLite and on the real PostgreSQL, live events on every transport of the
user (and of nobody else), restarts, input no store can keep (400), a store
that refuses a row (500) or is locked too long (503), a store that is down
or whose driver is missing (not ready, still alive), and ``hub.notify``."""
from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from hubbub import Hub
from hubbub.config import Config
from tests.inbox.conftest import with_libpq_option

from .helpers_user import KEY, SECURED_ENV, SSEReader, bearer, postgres_schema, ws_next, ws_quiet
from .server import STARTUP_TIMEOUT, HubProcess, free_port_pair, ws_connect
from .tokens import token
from .unready import UnreadyHubProcess

# How long a write of the PostgreSQL hub waits for a lock (a setting of its
# URL, as an operator would set it); SQLite's store waits its BUSY_TIMEOUT.
LOCK_TIMEOUT_MS = 2000


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def inbox_hub(request, tmp_path_factory):
    """A secured hub whose store is SQLite (a temp file) or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        process = HubProcess(dev=False, env=SECURED_ENV).start(tmp_path_factory.mktemp("sqlite"))
        yield process
        process.stop()
        return
    with postgres_schema() as url:
        url = with_libpq_option(url, f"lock_timeout={LOCK_TIMEOUT_MS}")
        process = HubProcess(dev=False, env={**SECURED_ENV, "HUBBUB_STORE": url})
        process.start(tmp_path_factory.mktemp("postgres"))
        yield process
        process.stop()


@contextlib.contextmanager
def store_database(hub: HubProcess):
    """A connection of our own to the hub's store (SQLite file or PostgreSQL
    schema), outside any transaction until the test begins one."""
    url = hub.env.get("HUBBUB_STORE")
    if url is None:  # the default sqlite:///hubbub.db, in the hub's data dir
        db = sqlite3.connect(Path(hub.env["HUBBUB_DATA_DIR"]) / "hubbub.db", isolation_level=None)
    else:
        db = psycopg.connect(url, autocommit=True, connect_timeout=5)
    try:
        yield db
    finally:
        db.close()


def create(hub, user: str, title: str = "Payment", **fields) -> httpx.Response:
    body = {"user": user, "title": title, "message": fields.pop("message", "Received"), **fields}
    return httpx.post(hub.base + "/notifications", json=body, headers=KEY, timeout=30)


def test_the_whole_lifecycle_over_http(inbox_hub):
    hub, alice = inbox_hub, bearer(token("lc-alice"))
    assert create(hub, "lc-alice").status_code == 201
    records = [create(hub, "lc-alice", f"n{i}", level="warning", data={"i": i}).json() for i in range(4)]
    assert records[0]["level"] == "warning" and records[0]["data"] == {"i": 0}
    assert records[0]["read"] is False and records[0]["user"] == "lc-alice"

    listing = httpx.get(hub.base + "/notifications", headers=alice, timeout=10).json()
    assert [n["title"] for n in listing["notifications"]] == ["n3", "n2", "n1", "n0", "Payment"]
    assert listing["unread_count"] == 5

    page = httpx.get(hub.base + "/notifications?limit=2", headers=alice, timeout=10).json()
    assert [n["title"] for n in page["notifications"]] == ["n3", "n2"]
    rest = httpx.get(hub.base + f"/notifications?limit=2&before={page['next_before']}", headers=alice,
                     timeout=10).json()
    assert [n["title"] for n in rest["notifications"]] == ["n1", "n0"]

    read = httpx.post(hub.base + f"/notifications/{records[1]['id']}/read", headers=alice, timeout=10)
    assert read.status_code == 200 and read.json()["read"] is True
    unread = httpx.get(hub.base + "/notifications?unread=1", headers=alice, timeout=10).json()
    assert records[1]["id"] not in [n["id"] for n in unread["notifications"]]
    assert unread["unread_count"] == 4

    deleted = httpx.delete(hub.base + f"/notifications/{records[2]['id']}", headers=alice, timeout=10)
    assert deleted.status_code == 200 and deleted.json() == {"id": records[2]["id"], "deleted": True}
    again = httpx.delete(hub.base + f"/notifications/{records[2]['id']}", headers=alice, timeout=10)
    assert again.status_code == 404

    all_read = httpx.post(hub.base + "/notifications/read-all", headers=alice, timeout=10).json()
    assert all_read == {"marked_read": 3, "unread_count": 0}


@pytest.mark.parametrize("body, code, field", [
    ({"user": "v", "title": "t", "message": "m", "level": "fatal"}, 400, "level"),
    ({"user": "v", "title": "t", "message": 5}, 400, "message"),
    ({"user": "v", "title": "t", "message": "m", "data": "x" * 70_000}, 400, "data"),  # over MAX_MESSAGE_BYTES
    ({"title": "t", "message": "m"}, 400, "user"),
])
def test_bad_notifications_name_the_field(inbox_hub, body, code, field):
    response = httpx.post(inbox_hub.base + "/notifications", json=body, headers=KEY, timeout=10)
    assert response.status_code == code and field in response.json()["reason"]


def test_auth_and_body_limits(inbox_hub):
    hub = inbox_hub
    assert httpx.post(hub.base + "/notifications", json={"user": "a", "title": "t", "message": "m"},
                      timeout=10).status_code == 401  # no API key
    assert httpx.post(hub.base + "/notifications", json={"user": "a", "title": "t", "message": "m"},
                      headers=bearer(token("a")), timeout=10).status_code == 401  # a user is no API key
    assert httpx.get(hub.base + "/notifications", headers=KEY, timeout=10).status_code == 401
    huge = httpx.post(hub.base + "/notifications", content=b"{" + b" " * (2 << 20) + b"}",
                      headers={**KEY, "content-type": "application/json"}, timeout=10)
    assert huge.status_code == 413
    assert httpx.get(hub.base + "/notifications?limit=500", headers=bearer(token("a")),
                     timeout=10).status_code == 400
    assert httpx.put(hub.base + "/notifications/read-all", headers=bearer(token("a")),
                     timeout=10).status_code == 405


def test_two_users_never_see_each_other(inbox_hub):
    hub = inbox_hub
    secret = create(hub, "iso-alice", "private").json()
    mine = create(hub, "iso-bob", "bob's").json()
    bob = bearer(token("iso-bob"))
    listing = httpx.get(hub.base + "/notifications", headers=bob, timeout=10).json()
    assert [n["id"] for n in listing["notifications"]] == [mine["id"]]
    for method, path in [("POST", f"/notifications/{secret['id']}/read"),
                         ("DELETE", f"/notifications/{secret['id']}")]:
        response = httpx.request(method, hub.base + path, headers=bob, timeout=10)
        assert response.status_code == 404  # not 403: no hint that it exists
    # ... and the same 404 for an id that never existed
    missing = httpx.delete(hub.base + "/notifications/999999999", headers=bob, timeout=10)
    assert missing.json()["reason"].replace("999999999", secret["id"]) == \
        httpx.delete(hub.base + f"/notifications/{secret['id']}", headers=bob, timeout=10).json()["reason"]
    alice = httpx.get(hub.base + "/notifications", headers=bearer(token("iso-alice")), timeout=10).json()
    assert alice["notifications"][0]["read"] is False and alice["unread_count"] == 1


async def test_live_events_reach_every_transport_of_the_user_only(inbox_hub, port_kind):
    hub = inbox_hub
    user, other = f"live-{port_kind}", f"other-{port_kind}"
    alice, bob = token(user), token(other)
    async with httpx.AsyncClient(timeout=30) as client:
        async with ws_connect(hub.url(port_kind, f"/ws?token={alice}", "ws")) as ws, \
                ws_connect(hub.url(port_kind, f"/ws?token={bob}", "ws")) as bystander, \
                SSEReader(client, hub.url(port_kind, f"/sse?topic=public.x&token={alice}")) as sse:
            assert (await ws_next(ws, "unread_count"))["data"] == {"count": 0}  # on connect
            assert (await ws_next(bystander, "unread_count"))["data"] == {"count": 0}
            assert (await sse.next("connected"))[1]["user"] == user
            assert await sse.next() == ("unread_count", {"count": 0})  # right after connected

            poll = asyncio.ensure_future(client.get(hub.url("asgi", f"/poll?topic=public.x&timeout=10"
                                                            f"&token={alice}")))
            await asyncio.sleep(0.5)  # the poll is waiting
            record = create(hub, user, "live", data={"k": 1}).json()

            assert (await ws_next(ws, "notification"))["data"] == record
            assert (await ws_next(ws, "unread_count"))["data"] == {"count": 1}
            assert await sse.next() == ("notification", record)
            assert await sse.next() == ("unread_count", {"count": 1})
            answer = (await poll).json()
            assert {"event": "notification", "data": record} in answer["messages"]
            assert answer["unread_count"] == 1

            gone = httpx.delete(hub.base + f"/notifications/{record['id']}", headers=bearer(alice), timeout=10)
            assert gone.status_code == 200
            assert (await ws_next(ws, "notification_deleted"))["data"] == {"id": record["id"]}
            assert (await ws_next(ws, "unread_count"))["data"] == {"count": 0}
            assert await sse.next() == ("notification_deleted", {"id": record["id"]})
            assert await sse.next() == ("unread_count", {"count": 0})

            create(hub, user, "second")
            assert (await ws_next(ws, "unread_count"))["data"] == {"count": 1}
            httpx.post(hub.base + "/notifications/read-all", headers=bearer(alice), timeout=10)
            assert (await ws_next(ws, "unread_count"))["data"] == {"count": 0}
            await ws_quiet(bystander, 0.5)  # another user's connections heard nothing


async def test_a_restart_keeps_notifications_and_counts(tmp_path):
    hub = HubProcess(dev=False, env=SECURED_ENV).start(tmp_path)
    try:
        kept = [create(hub, "rs-alice", f"n{i}").json() for i in range(3)]
        httpx.post(hub.base + f"/notifications/{kept[0]['id']}/read", headers=bearer(token("rs-alice")),
                   timeout=10)
        hub.stop()
        hub.start(tmp_path)
        listing = httpx.get(hub.base + "/notifications", headers=bearer(token("rs-alice")), timeout=10).json()
        assert [n["id"] for n in listing["notifications"]] == [k["id"] for k in reversed(kept)]
        assert listing["unread_count"] == 2
        async with ws_connect(hub.url("native", f"/ws?token={token('rs-alice')}", "ws")) as ws:
            assert (await ws_next(ws, "unread_count"))["data"] == {"count": 2}  # offline queue
    finally:
        hub.stop()


async def test_a_store_that_is_down_costs_the_inbox_and_readiness_never_liveness(tmp_path):
    # Nothing listens on port 1: the store never opens.
    down = "postgresql://postgres@127.0.0.1:1/test"
    hub = UnreadyHubProcess(dev=False, env={**SECURED_ENV, "HUBBUB_STORE": down}).start(tmp_path)
    try:
        for kind in ("asgi", "native"):
            for path in ("/readyz", "/healthz"):  # a load balancer routes elsewhere
                answer = httpx.get(hub.url(kind, path), timeout=10)
                assert answer.status_code == 503, (kind, path)
                assert answer.json()["status"] == "store_unavailable"
                assert answer.json()["reason"].startswith(f"cannot connect to PostgreSQL at {down}")
            alive = httpx.get(hub.url(kind, "/livez"), timeout=10)  # an orchestrator restarts nothing
            assert alive.status_code == 200 and alive.json()["status"] == "alive"
        response = httpx.get(hub.base + "/notifications", headers=bearer(token("down")), timeout=10)
        assert response.status_code == 503
        assert response.json()["reason"].startswith(f"notification store unavailable: cannot connect to"
                                                    f" PostgreSQL at {down}")
        assert create(hub, "down").status_code == 503
        async with ws_connect(hub.url("asgi", f"/ws?token={token('down')}&topic=public.down", "ws")) as ws:
            [event_id] = hub.publish({"topic": "public.down", "data": 1}, headers=KEY)
            assert (await ws_next(ws, "message"))["id"] == event_id  # publications flow
        assert "notification store unavailable" in hub.output()
    finally:
        hub.stop()


EMBEDDED = """
import asyncio, sys
from hubbub import Hub
from hubbub.config import Config

async def main():
    # The application's own Config: no start-up check stands between it and the store.
    hub = Hub(Config(store=sys.argv[1], dev=True))
    await hub.listen("127.0.0.1", int(sys.argv[2]))
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_psycopg_without_psycopg_pool_names_psycopg_pool(tmp_path):
    """psycopg is installed, psycopg_pool is not (here: Python is told it is
    absent, as ``sys.modules[name] = None`` does). ``hubbub serve`` refuses to
    start on that (test_cli.py); a hub an application embeds with its own
    Config names the module that is missing, is not ready, and stays alive.
    The database itself is up: the missing module is all that is wrong."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text('import sys\n\nsys.modules["psycopg_pool"] = None\n')
    (tmp_path / "embedded.py").write_text(EMBEDDED)
    port = free_port_pair()
    with postgres_schema() as url, open(tmp_path / "embedded.log", "wb") as log:
        process = subprocess.Popen([sys.executable, str(tmp_path / "embedded.py"), url, str(port)],
                                   env={**os.environ, "PYTHONPATH": str(site)}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                assert process.poll() is None, (tmp_path / "embedded.log").read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(base + "/livez", timeout=1).status_code == 200:
                        break
                assert time.monotonic() < deadline, "the embedded hub never answered /livez"
                time.sleep(0.1)
            expected = ("a postgresql:// store needs the module 'psycopg_pool', which cannot be imported"
                        " (import of psycopg_pool halted; None in sys.modules):"
                        " pip install 'hubbub[postgres]'")
            for path in ("/readyz", "/healthz"):
                ready = httpx.get(base + path, timeout=10)
                assert ready.status_code == 503, ready.text
                assert ready.json()["status"] == "store_unavailable" and ready.json()["reason"] == expected
            assert httpx.get(base + "/livez", timeout=10).json()["status"] == "alive"
            output = (tmp_path / "embedded.log").read_text()
            assert f"notification store unavailable: {expected}" in output and "needs psycopg:" not in output
        finally:
            process.terminate()
            process.wait(10)


@pytest.mark.parametrize("field", ["user", "title", "message", "level", "priority"])
def test_a_nul_no_store_can_keep_is_a_400_naming_the_field(inbox_hub, field):
    body = {"user": "nul-user", "title": "t", "message": "m", field: "a\x00b"}
    response = httpx.post(inbox_hub.base + "/notifications", json=body, headers=KEY, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["reason"].startswith(f"'{field}'")


def test_a_nul_inside_data_is_stored_and_comes_back(inbox_hub):
    data = {"k\x00": "a\x00b"}
    created = create(inbox_hub, "nul-data", data=data)
    assert created.status_code == 201 and created.json()["data"] == data
    listing = httpx.get(inbox_hub.base + "/notifications", headers=bearer(token("nul-data")), timeout=10)
    assert listing.json()["notifications"][0]["data"] == data


async def test_a_token_sub_with_a_nul_has_an_empty_inbox(inbox_hub, port_kind):
    """Nothing can be created for such a user, so it has nothing; never a 503."""
    hub, sub = inbox_hub, f"nul\x00{port_kind}"
    someone = create(hub, f"someone-{port_kind}").json()
    odd = bearer(token(sub))
    listing = httpx.get(hub.base + "/notifications", headers=odd, timeout=10)
    assert (listing.status_code, listing.json()) == \
        (200, {"notifications": [], "unread_count": 0, "next_before": None})
    all_read = httpx.post(hub.base + "/notifications/read-all", headers=odd, timeout=10)
    assert (all_read.status_code, all_read.json()) == (200, {"marked_read": 0, "unread_count": 0})
    assert httpx.post(hub.base + f"/notifications/{someone['id']}/read", headers=odd,
                      timeout=10).status_code == 404
    assert httpx.delete(hub.base + f"/notifications/{someone['id']}", headers=odd,
                        timeout=10).status_code == 404
    async with ws_connect(hub.url(port_kind, f"/ws?token={token(sub)}", "ws")) as ws:
        assert (await ws_next(ws, "unread_count"))["data"] == {"count": 0}


def test_a_row_the_database_refuses_is_a_500_with_its_traceback_logged(inbox_hub):
    """A rule of the database's own refuses one title (a trigger, a CHECK):
    nothing is unavailable, so no 503 invites a retry of what fails alike."""
    hub = inbox_hub
    with store_database(hub) as db:
        if isinstance(db, sqlite3.Connection):
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON hubbub_notifications"
                       " WHEN NEW.title = 'refused-by-db'"
                       " BEGIN SELECT RAISE(ABORT, 'refused by a rule'); END")
            undo = "DROP TRIGGER refuse"
        else:
            db.execute("ALTER TABLE hubbub_notifications"
                       " ADD CONSTRAINT refuse CHECK (title <> 'refused-by-db')")
            undo = "ALTER TABLE hubbub_notifications DROP CONSTRAINT refuse"
        try:
            refused = create(hub, "rule-user", "refused-by-db")
            assert refused.status_code == 500, refused.text
            reason = refused.json()["reason"]  # SQLite's IntegrityError, psycopg's CheckViolation
            assert reason.startswith("notification store failed: ") and "refuse" in reason, reason
            assert "IntegrityError" in reason or "CheckViolation" in reason, reason
            assert create(hub, "rule-user", "fine").status_code == 201  # the store answers the rest
        finally:
            db.execute(undo)
    output = hub.output()
    assert "notification store failed (answered 500)" in output and "Traceback" in output


def test_a_store_locked_too_long_is_a_503_then_answers_again(inbox_hub):
    """Someone else holds the write lock longer than a write waits (SQLite's
    busy timeout, PostgreSQL's lock_timeout): unavailable, worth a retry."""
    hub = inbox_hub
    with store_database(hub) as db:
        if isinstance(db, sqlite3.Connection):
            db.execute("BEGIN EXCLUSIVE")
        else:
            db.autocommit = False
            db.execute("LOCK TABLE hubbub_notifications IN ACCESS EXCLUSIVE MODE")
        try:
            locked = create(hub, "lock-user", "waits")
            assert locked.status_code == 503, locked.text
            assert locked.json()["reason"].startswith("notification store unavailable: ")
            assert "lock" in locked.json()["reason"]
        finally:
            db.rollback()  # the lock goes
    assert create(hub, "lock-user", "free").status_code == 201


async def test_hub_notify_from_application_code(tmp_path):
    """``await hub.notify(...)`` stores and delivers like the endpoint (embedded hub)."""
    config = Config.from_env({**SECURED_ENV, "HUBBUB_STORE": f"sqlite:///{tmp_path}/app.db"})
    hub = Hub(config)
    server = await hub.listen("127.0.0.1", 0)
    try:
        async with ws_connect(f"ws://127.0.0.1:{server.port}/ws?token={token('app-user')}") as ws:
            assert (await ws_next(ws, "unread_count"))["data"] == {"count": 0}
            record = await hub.notify("app-user", "Payment", "Received", level="success", data={"x": 1})
            assert record["level"] == "success" and record["data"] == {"x": 1}
            assert (await ws_next(ws, "notification"))["data"] == record
            assert (await ws_next(ws, "unread_count"))["data"] == {"count": 1}
        with pytest.raises(Exception) as bad:
            await hub.notify("app-user", "t", "m", level="loud")
        assert getattr(bad.value, "code", None) == 400 and "level" in str(bad.value)
    finally:
        await hub.stop()

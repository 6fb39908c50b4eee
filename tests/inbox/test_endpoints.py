"""``/notifications`` handlers: every endpoint's status codes, on both stores.

The handlers are driven with real ``auth.Request`` objects, real JWTs and
the real Authenticator; the through-the-server tests come with the wiring.
"""
from __future__ import annotations

import orjson
import pytest

from hubbub.auth import Authenticator, Request
from hubbub.config import Config
from hubbub.endpoints.notifications import NotificationEndpoints
from hubbub.errors import HubError
from hubbub.services.inbox import Inbox
from tests.integration.tokens import API_KEY, AUDIENCE, SECRET, token

CONFIG = Config(jwt_secret=SECRET, api_key=API_KEY, jwt_audience=AUDIENCE, max_message_bytes=1024)


def request(path="/notifications", *, key=None, user=None, bearer=None, query=None):
    headers = {}
    if key is not None:
        headers["x-api-key"] = key
    if user is not None:
        headers["authorization"] = f"Bearer {token(user)}"
    if bearer is not None:
        headers["authorization"] = f"Bearer {bearer}"
    return Request(path=path, headers=headers, query=query or {}, client="10.0.0.9")


@pytest.fixture
async def api(store):
    events = []
    inbox = Inbox(store, lambda user, event, payload: events.append((user, event, payload)),
                  max_message_bytes=CONFIG.max_message_bytes)
    endpoints = NotificationEndpoints(inbox, Authenticator(CONFIG))
    endpoints.events = events

    async def call(method, path, req=None, body=None, **kwargs):
        req = req or request(path, **kwargs)
        raw = body if isinstance(body, bytes) else (b"" if body is None else orjson.dumps(body))
        return await endpoints.route(method, path, req, raw)

    endpoints.call = call
    return endpoints


async def create(api, user="alice", title="Hi", **fields):
    status, record, _ = await api.call("POST", "/notifications", key=API_KEY,
                                       body={"user": user, "title": title, "message": "m", **fields})
    assert status == 201, record
    return record


async def test_create_with_the_api_key_is_201_with_the_record(api):
    status, record, headers = await api.call(
        "POST", "/notifications", key=API_KEY,
        body={"user": "alice", "title": "Payment", "message": "Received", "level": "success",
              "priority": "high", "data": {"amount": 12}})
    assert status == 201 and headers == []
    assert record == {"id": record["id"], "user": "alice", "title": "Payment", "message": "Received",
                      "level": "success", "priority": "high", "data": {"amount": 12}, "read": False,
                      "created_at": record["created_at"]}
    assert api.events == [("alice", "notification", record), ("alice", "unread_count", {"count": 1})]
    # Also through Authorization: Bearer <api key>.
    status, _, _ = await api.call("POST", "/notifications", request(bearer=API_KEY),
                                  body={"user": "alice", "title": "t", "message": ""})
    assert status == 201


@pytest.mark.parametrize("kwargs, reason", [
    ({}, "API key required"),
    ({"key": "wrong"}, "invalid API key"),
    ({"user": "alice"}, "invalid API key"),  # a user's JWT is not the API key
])
async def test_create_without_the_api_key_is_401(api, kwargs, reason):
    status, body, headers = await api.call("POST", "/notifications",
                                           body={"user": "alice", "title": "t", "message": "m"}, **kwargs)
    assert (status, body["reason"]) == (401, reason)
    assert ("www-authenticate", "Bearer") in headers
    assert api.events == []


@pytest.mark.parametrize("body, field", [
    ({"user": "alice", "title": "t", "message": "m", "level": "loud"}, "'level'"),
    ({"user": "alice", "title": "t", "message": "m", "colour": 1}, "'colour'"),
    ({"user": "alice", "title": "", "message": "m"}, "'title'"),
    ({"user": "alice", "title": "t", "message": "m" * 1025}, "'message'"),
    ({"user": "alice", "title": "t", "message": "m", "data": ["x" * 1100]}, "'data'"),
    ({"title": "t", "message": "m"}, "'user'"),
    (b"{not json", "not valid JSON"),
    ([], "JSON object"),
])
async def test_bad_create_is_400_naming_the_problem(api, body, field):
    status, answer, _ = await api.call("POST", "/notifications", key=API_KEY, body=body)
    assert status == 400 and answer["code"] == 400
    assert field in answer["reason"]


async def test_a_body_over_the_limit_is_413(api):
    body = b" " * (api.max_body + 1)
    status, answer, _ = await api.call("POST", "/notifications", key=API_KEY, body=body)
    assert status == 413 and str(api.max_body) in answer["reason"]


async def test_list_is_the_callers_newest_first_with_pagination(api):
    mine = [await create(api, title=f"a{i}") for i in range(5)]
    await create(api, user="bob", title="not yours")
    await api.call("POST", f"/notifications/{mine[0]['id']}/read", user="alice")

    status, page, _ = await api.call("GET", "/notifications", user="alice", query={"limit": ["2"]})
    assert status == 200
    assert page["notifications"] == list(reversed(mine))[:2]
    assert page["unread_count"] == 4 and page["next_before"] == mine[3]["id"]

    status, page2, _ = await api.call("GET", "/notifications", user="alice",
                                      query={"limit": ["2"], "before": [page["next_before"]]})
    assert [r["title"] for r in page2["notifications"]] == ["a2", "a1"]
    status, last, _ = await api.call("GET", "/notifications", user="alice",
                                     query={"limit": ["2"], "before": [page2["next_before"]]})
    assert [r["title"] for r in last["notifications"]] == ["a0"] and last["next_before"] is None

    status, unread, _ = await api.call("GET", "/notifications", user="alice", query={"unread": ["1"]})
    assert [r["title"] for r in unread["notifications"]] == ["a4", "a3", "a2", "a1"]
    status, bobs, _ = await api.call("GET", "/notifications", user="bob")
    assert [r["title"] for r in bobs["notifications"]] == ["not yours"] and bobs["unread_count"] == 1


@pytest.mark.parametrize("query, field", [
    ({"limit": ["0"]}, "'limit'"), ({"limit": ["201"]}, "'limit'"), ({"limit": ["x"]}, "'limit'"),
    ({"before": ["x"]}, "'before'"), ({"unread": ["2"]}, "'unread'"),
])
async def test_bad_list_query_is_400(api, query, field):
    status, answer, _ = await api.call("GET", "/notifications", user="alice", query=query)
    assert status == 400 and field in answer["reason"]


@pytest.mark.parametrize("method, path", [
    ("GET", "/notifications"), ("POST", "/notifications/1/read"),
    ("POST", "/notifications/read-all"), ("DELETE", "/notifications/1"),
])
async def test_user_endpoints_need_a_user_token(api, method, path):
    status, answer, headers = await api.call(method, path)
    assert status == 401 and ("www-authenticate", "Bearer") in headers
    status, answer, _ = await api.call(method, path, bearer="not.a.jwt")
    assert status == 401 and "malformed token" in answer["reason"]
    status, answer, _ = await api.call(method, path, key=API_KEY)  # the API key is not a user
    assert status == 401


async def test_dev_mode_anonymous_has_no_inbox(store):
    endpoints = NotificationEndpoints(Inbox(store), Authenticator(Config(dev=True)))
    status, answer, _ = await endpoints.route("GET", "/notifications", request())
    assert status == 401 and "user token" in answer["reason"]


async def test_read_marks_one_and_others_ids_are_404(api):
    mine = await create(api)
    theirs = await create(api, user="bob")
    api.events.clear()

    status, record, _ = await api.call("POST", f"/notifications/{mine['id']}/read", user="alice")
    assert status == 200 and record == {**mine, "read": True}
    assert api.events == [("alice", "unread_count", {"count": 0})]
    status, again, _ = await api.call("POST", f"/notifications/{mine['id']}/read", user="alice")
    assert (status, again) == (200, record)

    missing = str(int(theirs["id"]) + 1000)
    for other in (theirs["id"], missing, "abc"):
        status, answer, _ = await api.call("POST", f"/notifications/{other}/read", user="alice")
        assert status == 404 and answer["reason"] == f"no notification {other!r}"
    _, bobs, _ = await api.call("GET", "/notifications", user="bob")
    assert bobs["notifications"][0]["read"] is False


async def test_read_all(api):
    for i in range(3):
        await create(api, title=f"a{i}")
    await create(api, user="bob")
    status, answer, _ = await api.call("POST", "/notifications/read-all", user="alice")
    assert (status, answer) == (200, {"marked_read": 3, "unread_count": 0})
    status, answer, _ = await api.call("POST", "/notifications/read-all", user="alice")
    assert answer == {"marked_read": 0, "unread_count": 0}
    _, bobs, _ = await api.call("GET", "/notifications", user="bob")
    assert bobs["unread_count"] == 1


async def test_delete_and_others_ids_are_404(api):
    mine = await create(api)
    theirs = await create(api, user="bob")
    api.events.clear()

    status, answer, _ = await api.call("DELETE", f"/notifications/{theirs['id']}", user="alice")
    assert status == 404 and answer["reason"] == f"no notification {theirs['id']!r}"
    status, answer, _ = await api.call("DELETE", f"/notifications/{mine['id']}", user="alice")
    assert (status, answer) == (200, {"id": mine["id"], "deleted": True})
    assert api.events == [("alice", "notification_deleted", {"id": mine["id"]}),
                          ("alice", "unread_count", {"count": 0})]
    status, _, _ = await api.call("DELETE", f"/notifications/{mine['id']}", user="alice")
    assert status == 404
    _, bobs, _ = await api.call("GET", "/notifications", user="bob")
    assert [r["id"] for r in bobs["notifications"]] == [theirs["id"]]


@pytest.mark.parametrize("method, path, status, allow", [
    ("PUT", "/notifications", 405, "GET, POST"),
    ("GET", "/notifications/read-all", 405, "POST"),
    ("GET", "/notifications/1/read", 405, "POST"),
    ("GET", "/notifications/1", 405, "DELETE"),
    ("POST", "/notifications/1/unread", 404, None),
    ("POST", "/notifications/1/read/x", 404, None),
])
async def test_unknown_routes_and_methods(api, method, path, status, allow):
    got, answer, headers = await api.call(method, path, user="alice")
    assert got == status and answer["code"] == status
    if allow:
        assert ("allow", allow) in headers


async def test_trailing_slash_is_the_collection(api):
    status, _, _ = await api.call("POST", "/notifications/", key=API_KEY,
                                  body={"user": "alice", "title": "t", "message": "m"})
    assert status == 201
    assert NotificationEndpoints.handles("/notifications/")
    assert NotificationEndpoints.handles("/notifications")
    assert not NotificationEndpoints.handles("/notificationsx")


async def test_a_store_that_is_down_answers_503(api):
    await api.inbox.store.close()
    status, answer, _ = await api.call("GET", "/notifications", user="alice")
    assert status == 503 and "notification store unavailable" in answer["reason"]
    status, answer, _ = await api.call("POST", "/notifications", key=API_KEY,
                                       body={"user": "alice", "title": "t", "message": "m"})
    assert status == 503


@pytest.mark.parametrize("field", ["user", "title", "message", "level", "priority"])
@pytest.mark.parametrize("bad", ["a\x00b", "\x00"])
async def test_a_nul_no_store_can_keep_is_a_400_on_both_stores(api, field, bad):
    """PostgreSQL's text cannot hold NUL: refused before the store, on SQLite alike."""
    status, answer, _ = await api.call("POST", "/notifications", key=API_KEY,
                                       body={"user": "alice", "title": "t", "message": "m", field: bad})
    assert status == 400 and answer["reason"].startswith(f"'{field}'")
    assert api.events == []


async def test_a_nul_inside_data_is_stored_and_comes_back(api):
    data = {"k\x00": ["v\x00", "\x00"]}
    record = await create(api, data=data)
    assert record["data"] == data
    _, listing, _ = await api.call("GET", "/notifications", user="alice")
    assert listing["notifications"][0]["data"] == data


@pytest.mark.parametrize("sub", ["al\x00ice", "al\ud800ice"])
async def test_a_token_sub_no_store_can_keep_has_an_empty_inbox(api, sub):
    """Nothing can be created for such a user (400), so it has nothing: its reads
    answer empty and its changes find nothing, and the store is never blamed."""
    with pytest.raises(HubError) as refused:  # hub.notify's way: JSON cannot carry a lone surrogate
        await api.inbox.notify(sub, "t", "m")
    assert refused.value.code == 400 and refused.value.reason.startswith("'user'")
    theirs = await create(api)  # someone's notification, whose id the odd user tries
    calls = [("GET", "/notifications", 200, {"notifications": [], "unread_count": 0, "next_before": None}),
             ("POST", "/notifications/read-all", 200, {"marked_read": 0, "unread_count": 0}),
             ("POST", f"/notifications/{theirs['id']}/read", 404, None),
             ("DELETE", f"/notifications/{theirs['id']}", 404, None)]
    for method, path, expected, body in calls:
        status, answer, _ = await api.call(method, path, bearer=token(sub))
        assert status == expected, (method, path, answer)
        if body is not None:
            assert answer == body
    assert await api.inbox.unread_count_in_order(sub) == 0  # what its connections are told
    _, mine, _ = await api.call("GET", "/notifications", user="alice")
    assert mine["notifications"] == [theirs]


async def test_a_store_fault_is_a_500_that_says_so(api):
    store = api.inbox.store
    sql = "DROP TABLE hubbub_notifications"
    if hasattr(store, "_pool"):
        async with store._pool.connection() as conn:
            await conn.execute(sql)
    else:
        await store._run(lambda: store._db.execute(sql))
    status, answer, _ = await api.call("GET", "/notifications", user="alice")
    assert status == 500 and answer["reason"].startswith("notification store failed: ")
    status, answer, _ = await api.call("POST", "/notifications", key=API_KEY,
                                       body={"user": "alice", "title": "t", "message": "m"})
    assert status == 500 and "hubbub_notifications" in answer["reason"]

"""Input checks of a notification and of a listing: each refusal is a 400 naming the field."""
from __future__ import annotations

import pytest

from hubbub.auth import Request
from hubbub.config import Config, ConfigError
from hubbub.errors import HubError
from hubbub.services.inbox import validate

LIMIT = 1024
GOOD = {"user": "alice", "title": "Payment", "message": "Received"}


def test_a_minimal_notification_gets_the_defaults():
    new = validate.notification(dict(GOOD), LIMIT)
    assert (new.user, new.title, new.message, new.level, new.priority, new.data) == (
        "alice", "Payment", "Received", "info", "normal", None)


def test_every_field_is_kept():
    new = validate.notification({**GOOD, "level": "error", "priority": "critical",
                                 "data": {"url": "/orders/42"}}, LIMIT)
    assert (new.level, new.priority, new.data) == ("error", "critical", {"url": "/orders/42"})
    assert validate.notification({**GOOD, "priority": "HIGH"}, LIMIT).priority == "high"
    assert validate.notification({**GOOD, "message": ""}, LIMIT).message == ""
    assert validate.notification({**GOOD, "title": "t" * 200}, LIMIT).title == "t" * 200


@pytest.mark.parametrize("change, field", [
    ({"level": "fatal"}, "level"),
    ({"level": 3}, "level"),
    ({"level": None}, "level"),
    ({"priority": "urgent"}, "priority"),
    ({"priority": True}, "priority"),
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "t" * 201}, "title"),
    ({"title": 5}, "title"),
    ({"message": 5}, "message"),
    ({"message": None}, "message"),
    ({"message": "é" * (LIMIT // 2 + 1)}, "message"),  # counted in UTF-8 bytes
    ({"data": "x" * LIMIT}, "data"),  # JSON-encoded: the quotes push it over
    ({"data": {"deep": ["x" * (LIMIT - 10)]}}, "data"),
    ({"user": ""}, "user"),
    ({"user": 7}, "user"),
    ({"user": "a.b"}, "user"),
    ({"user": "u" * 201}, "user"),
])
def test_a_bad_field_is_a_400_naming_it(change, field):
    with pytest.raises(HubError) as caught:
        validate.notification({**GOOD, **change}, LIMIT)
    assert caught.value.code == 400
    assert f"'{field}'" in caught.value.reason


@pytest.mark.parametrize("missing", ["user", "title", "message"])
def test_a_missing_field_is_named(missing):
    body = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(HubError, match=f"'{missing}' is required"):
        validate.notification(body, LIMIT)


def test_unknown_fields_are_named():
    with pytest.raises(HubError, match="unknown field 'colour'"):
        validate.notification({**GOOD, "colour": "red"}, LIMIT)
    with pytest.raises(HubError, match="unknown fields 'a', 'b'"):
        validate.notification({**GOOD, "b": 1, "a": 2}, LIMIT)


@pytest.mark.parametrize("body", [[GOOD], "text", None, 5])
def test_the_body_must_be_an_object(body):
    with pytest.raises(HubError, match="must be a JSON object"):
        validate.notification(body, LIMIT)


def test_data_python_cannot_encode_is_named():
    with pytest.raises(HubError, match="'data' is not JSON-encodable"):
        validate.notification({**GOOD, "data": {"when": object()}}, LIMIT)


def listing(query: dict) -> tuple:
    return validate.listing_query(Request(path="/notifications", headers={}, query=query))


def test_listing_query_defaults_and_values():
    assert listing({}) == (False, 50, None)
    assert listing({"unread": ["1"], "limit": ["200"], "before": ["42"]}) == (True, 200, 42)
    assert listing({"unread": ["0"], "limit": ["1"]}) == (False, 1, None)
    assert listing({"unread": ["true"]})[0] is True


@pytest.mark.parametrize("query, field", [
    ({"limit": ["0"]}, "limit"),
    ({"limit": ["201"]}, "limit"),
    ({"limit": ["ten"]}, "limit"),
    ({"limit": ["-5"]}, "limit"),
    ({"limit": ["1_0"]}, "limit"),
    ({"unread": ["maybe"]}, "unread"),
    ({"before": ["abc"]}, "before"),
    ({"before": ["0"]}, "before"),
    ({"before": ["99999999999999999999"]}, "before"),
    # Given twice, even when both are good: which one was meant is a guess.
    ({"limit": ["5", "abc"]}, "limit"),
    ({"limit": ["5", "5"]}, "limit"),
    ({"unread": ["1", "0"]}, "unread"),
    ({"before": ["42", "7"]}, "before"),
])
def test_a_bad_listing_query_is_a_400_naming_it(query, field):
    with pytest.raises(HubError) as caught:
        listing(query)
    assert caught.value.code == 400 and f"'{field}'" in caught.value.reason


def test_a_repeated_parameter_says_how_often():
    with pytest.raises(HubError) as caught:
        listing({"limit": ["5", "abc", "7"]})
    assert caught.value.reason == "'limit' given 3 times; it takes one value"


@pytest.mark.parametrize("field", ["user", "title", "message"])
@pytest.mark.parametrize("bad, problem", [("a\x00b", "NUL"), ("a\ud800b", "surrogate")])
def test_text_no_store_can_keep_is_a_400_naming_the_field(field, bad, problem):
    """Refused before any store sees it, so SQLite and PostgreSQL refuse alike
    (PostgreSQL's text cannot hold NUL; no driver encodes a lone surrogate)."""
    with pytest.raises(HubError) as caught:
        validate.notification({**GOOD, field: bad}, LIMIT)
    assert caught.value.code == 400
    assert caught.value.reason.startswith(f"'{field}'") and problem in caught.value.reason


@pytest.mark.parametrize("field, value", [("level", "info\x00"), ("priority", "normal\x00"),
                                          ("level", "\x00"), ("priority", "high\ud800")])
def test_enumerated_fields_refuse_nul_too(field, value):
    with pytest.raises(HubError) as caught:
        validate.notification({**GOOD, field: value}, LIMIT)
    assert caught.value.code == 400 and f"'{field}'" in caught.value.reason


def test_a_nul_inside_data_is_fine():
    """``data`` is kept as JSON text: a NUL in it is the six characters \\u0000."""
    new = validate.notification({**GOOD, "data": {"k\x00": "v\x00"}}, LIMIT)
    assert new.data == {"k\x00": "v\x00"}


def test_storable_user_ids():
    assert validate.storable("alice") and validate.storable("ü")
    assert not validate.storable("al\x00ice") and not validate.storable("\udc80")


def test_config_defaults():
    config = Config()
    assert config.notification_ttl == 30 * 86400
    assert config.notification_max_per_user == 1000
    assert config.data_dir == "" and config.store == "sqlite:///hubbub.db"
    loaded = Config.from_env({"HUBBUB_NOTIFICATION_TTL": "3600", "HUBBUB_NOTIFICATION_MAX_PER_USER": "50",
                              "HUBBUB_DATA_DIR": "/var/lib/hubbub",
                              "HUBBUB_STORE": "postgres://u:pw@db/hubbub"})
    assert (loaded.notification_ttl, loaded.notification_max_per_user, loaded.data_dir) == (
        3600.0, 50, "/var/lib/hubbub")
    assert loaded.masked()["HUBBUB_STORE"] == "postgres://u:***@db/hubbub"


@pytest.mark.parametrize("variable, value", [
    ("HUBBUB_NOTIFICATION_TTL", "0"),
    ("HUBBUB_NOTIFICATION_TTL", "a month"),
    ("HUBBUB_NOTIFICATION_MAX_PER_USER", "0"),
    ("HUBBUB_NOTIFICATION_MAX_PER_USER", "many"),
    ("HUBBUB_STORE", "sqlite:///"),
    ("HUBBUB_STORE", "sqlite://hubbub.db"),
    ("HUBBUB_STORE", "mysql://db/hubbub"),
])
def test_an_invalid_setting_names_its_variable(variable, value):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({variable: value})
    assert caught.value.variable == variable

"""The origin rules behind CORS and the WebSocket Origin check (hubbub.cors)."""
import pytest

from hubbub.cors import CorsPolicy, parse_origins, same_origin


def test_parse_origins_normalises_and_refuses_what_is_not_an_origin():
    assert parse_origins(" https://App.Example:443/ , http://localhost:3000", dev=False) == (
        "https://app.example", "http://localhost:3000")
    assert parse_origins("", dev=False) == ()
    for bad in ("app.example", "https://app.example/path", "ftp://x", "https://u@x"):
        with pytest.raises(ValueError, match="not an origin"):
            parse_origins(bad, dev=False)
    with pytest.raises(ValueError, match="--dev"):
        parse_origins("*", dev=False)
    assert parse_origins("*", dev=True) == ("*",)


@pytest.mark.parametrize("origin, host, same", [
    ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
    ("https://hub.example", "hub.example", True),
    ("https://hub.example", "hub.example:443", True),
    ("http://hub.example", "hub.example:8080", False),
    ("https://evil.example", "hub.example", False),
    ("null", "hub.example", False),
    ("http://127.0.0.1:8000", None, False),
])
def test_same_origin_compares_host_and_port(origin, host, same):
    assert same_origin(origin, host) is same


def test_ws_origin_rules():
    policy = CorsPolicy(parse_origins("https://app.example", dev=False))
    assert policy.ws_allowed({"host": "hub:1"})  # no Origin: not a browser
    assert policy.ws_allowed({"origin": "https://app.example", "host": "hub:1"})
    assert policy.ws_allowed({"origin": "http://hub:1", "host": "hub:1"})
    assert not policy.ws_allowed({"origin": "https://evil.example", "host": "hub:1"})
    assert CorsPolicy(("*",)).ws_allowed({"origin": "https://evil.example", "host": "hub:1"})

"""HUBBUB_JWT_LEEWAY and the core's Expiry (SPEC 10), without a server."""
import asyncio
import time
import tracemalloc

import jwt
import pytest

from hubbub.auth import Authenticator, Principal
from hubbub.config import Config, ConfigError
from hubbub.core.expiry import Expiry
from hubbub.errors import Unauthorized

SECRET = "unit-secret-that-is-long-enough-0123456789"


def test_leeway_is_validated_and_shown():
    assert Config.from_env({}).jwt_leeway == 10
    assert Config.from_env({"HUBBUB_JWT_LEEWAY": "2.5"}).jwt_leeway == 2.5
    for bad in ("-1", "nan", "4000", "soon"):
        with pytest.raises(ConfigError):
            Config.from_env({"HUBBUB_JWT_LEEWAY": bad})
    assert Config.from_env({"HUBBUB_JWT_LEEWAY": "3"}).masked()["HUBBUB_JWT_LEEWAY"] == 3


def test_decoding_uses_the_leeway_and_the_principal_carries_exp():
    exp = int(time.time()) - 3
    expired = jwt.encode({"sub": "alice", "exp": exp}, SECRET, algorithm="HS256")
    strict = Authenticator(Config.from_env({"HUBBUB_JWT_SECRET": SECRET, "HUBBUB_JWT_LEEWAY": "0"}))
    with pytest.raises(Unauthorized, match="token expired"):
        strict.decode(expired)
    lenient = Authenticator(Config.from_env({"HUBBUB_JWT_SECRET": SECRET, "HUBBUB_JWT_LEEWAY": "60"}))
    assert lenient.decode(expired).expires == exp
    forever = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    assert lenient.decode(forever).expires is None


class FakeConnection:
    def __init__(self, expires):
        self.principal = Principal(user="alice", expires=expires)
        self.closed = False
        self.expired_at = None

    def expire(self):
        self.closed = True
        self.expired_at = time.time()


def test_sweep_ends_only_what_is_due_and_follows_a_refresh():
    expiry = Expiry(leeway=1.0)
    now = time.time()
    due, later, refreshed, forever = (FakeConnection(now - 2), FakeConnection(now + 60),
                                      FakeConnection(now - 2), FakeConnection(None))
    for conn in (due, later, refreshed, forever):
        expiry.track(conn)
    refreshed.principal = Principal(user="alice", expires=now + 60)
    expiry.track(refreshed)
    assert len(expiry) == 4  # nothing for a token without exp
    assert expiry.sweep() == 1
    assert due.closed and not later.closed and not refreshed.closed
    assert len(expiry) == 2


async def test_one_timer_ends_connections_on_time():
    expiry = Expiry(leeway=0.2)
    now = time.time()
    conns = [FakeConnection(now + 0.1 * i) for i in (3, 1, 2)]
    for conn in conns:
        expiry.track(conn)
    await asyncio.sleep(0.8)
    for conn in conns:
        assert conn.closed
        assert 0 <= conn.expired_at - (conn.principal.expires + 0.2) < 0.1
    expiry.stop()


def test_tracking_costs_about_120_bytes_per_connection():
    expiry = Expiry(leeway=1.0)
    conns = [FakeConnection(time.time() + 3600) for _ in range(10_000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for conn in conns:
        expiry.track(conn)
    per_connection = (tracemalloc.get_traced_memory()[0] - before) / len(conns)
    tracemalloc.stop()
    assert per_connection < 150, per_connection  # a (deadline, seq, weakref) tuple was ~200

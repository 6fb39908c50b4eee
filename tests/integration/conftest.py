import secrets

import pytest
import redis

from tests.backplane.conftest import SHARED_URL, _unavailable, cleanup

from .server import HubProcess


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """One dev-mode hub shared by the tests that need nothing special."""
    process = HubProcess(env={"HUBBUB_HEARTBEAT": "1"}).start(tmp_path_factory.mktemp("hub"))
    yield process
    process.stop()


@pytest.fixture
def make_hub(tmp_path):
    """Start a hub with its own settings; stopped at the end of the test."""
    started = []

    def make(env=None, dev=True, args=()):
        process = HubProcess(env=env, dev=dev, args=list(args)).start(tmp_path)
        started.append(process)
        return process
    yield make
    for process in started:
        process.stop()


@pytest.fixture(params=["asgi", "native"])
def port_kind(request):
    """Every contract test runs on PORT (ASGI under Granian) and FAST_PORT (native)."""
    return request.param


@pytest.fixture
def shared(tmp_path):
    """(url, prefix) on the machine's Redis; the prefix's keys are deleted afterwards."""
    client = redis.Redis.from_url(SHARED_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        _unavailable(f"Redis at 127.0.0.1:6379 is unreachable: {error}")
    finally:
        client.close()
    prefix = f"hubbub-test-{secrets.token_hex(4)}:"
    yield SHARED_URL, prefix
    cleanup(SHARED_URL, prefix)

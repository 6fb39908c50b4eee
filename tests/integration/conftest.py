import secrets

import pytest

from tests.backplane.conftest import cleanup

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
def shared(shared_redis):
    """(url, prefix) on the machine's Redis; the prefix's keys are deleted afterwards."""
    prefix = f"hubbub-test-{secrets.token_hex(4)}:"
    yield shared_redis, prefix
    cleanup(shared_redis, prefix)

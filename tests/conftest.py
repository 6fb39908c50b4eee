import os
import shutil
import tempfile
import time
import types

import pytest
import redis

from hubbub import _fanout_py, _ring_py, _trie_py, _writer_py
from tests.backplane.conftest import SHARED_URL, RedisServer, _unavailable, free_port


def _pure() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        name="pure", Trie=_trie_py.Trie, Outbox=_ring_py.Outbox,
        Subscription=_fanout_py.Subscription, TagFilter=_fanout_py.TagFilter,
        fanout=_fanout_py.fanout, writer=_writer_py,
    )


def _native() -> types.SimpleNamespace | None:
    try:
        from hubbub import _fanout, _ring, _trie, _writer
    except ImportError:
        if os.environ.get("CI") == "true":
            raise  # a silent fallback to the pure core must fail CI
        return None
    return types.SimpleNamespace(
        name="native", Trie=_trie.Trie, Outbox=_ring.Outbox,
        Subscription=_fanout.Subscription, TagFilter=_fanout.TagFilter,
        fanout=_fanout.fanout, writer=_writer,
    )


# Hubs built in-process (Hub.from_env) open the notification store under
# HUBBUB_DATA_DIR: a temporary directory, so no test leaves hubbub.db in the repo.
os.environ.setdefault("HUBBUB_DATA_DIR", tempfile.mkdtemp(prefix="hubbub-test-data-"))

PURE = _pure()
NATIVE = _native()
CORES = [PURE] + ([NATIVE] if NATIVE else [])


@pytest.fixture(params=CORES, ids=lambda core: core.name)
def core(request):
    """Each core-level test runs once per implementation."""
    return request.param


def pytest_collection_modifyitems(items):
    """Browser tests run last: Playwright's sync API keeps an event loop
    running in the main thread while its browser is up, which breaks the
    asyncio tests of any module collected after them."""
    items.sort(key=lambda item: "tests/browser/" in item.nodeid.replace("\\", "/"))


# -- Redis: the machine's server, or a private one a test may kill ----------------
# Shared by tests/backplane and tests/integration (helpers in tests/backplane/conftest.py).


@pytest.fixture
def shared_redis() -> str:
    """The machine's Redis URL, once it answers (under CI=true a failure if it does not)."""
    client = redis.Redis.from_url(SHARED_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        _unavailable(f"Redis at 127.0.0.1:6379 is unreachable: {error}")
    finally:
        client.close()
    return SHARED_URL


@pytest.fixture(params=["serving-every-slot", "no-slots"])
def cluster_node_redis(request, tmp_path):
    """A redis-server of the test's own in cluster mode (``cluster-enabled yes``):
    a one-node cluster serving every hash slot, or a node with no slots yet."""
    if shutil.which("redis-server") is None:
        _unavailable("redis-server is not installed (apt-get install redis-server)")
    # The cluster bus listens on its own port, by default the client port +
    # 10000: past 65535 for a free port above 55535, and redis-server then
    # does not start. So the bus gets a free port of its own.
    server = RedisServer(["--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf"),
                          "--cluster-port", str(free_port())])
    server.start()
    try:
        if request.param == "serving-every-slot":
            with server.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
                deadline = time.monotonic() + 10
                while client.cluster("info")["cluster_state"] != "ok":
                    assert time.monotonic() < deadline, "the one-node cluster did not come up"
                    time.sleep(0.05)
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_server():
    """A redis-server of the test's own on a free port, to kill and restart."""
    if shutil.which("redis-server") is None:
        _unavailable("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    yield server
    if server.process is not None:
        server.resume()
    server.kill()

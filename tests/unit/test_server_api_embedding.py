"""The server API's embedding side in-process (``Hub.disconnect``,
``unsubscribe_user``, ``history``, ``topics``): a real Hub on the memory
broker, real Connections, a fake transport. The HTTP side and the fleet are
tested through real servers (tests/integration/test_server_api*.py)."""
import json

import pytest

from hubbub import Config, Hub
from hubbub.auth import Principal
from hubbub.errors import HubError
from hubbub.wire import POLL, POLL_DISCONNECTED, SSE, WS

from .test_writer import FakeTransport, turn


def connect(hub: Hub, user: str, fmt: int, *patterns: str):
    transport = FakeTransport()
    conn = hub.connection(fmt, Principal(user=user), transport)
    hub.attach(conn)
    for pattern in patterns:
        hub.subscribe(conn, pattern)
    return conn, transport


async def test_disconnect_closes_each_format_its_own_way_and_only_that_users():
    hub = Hub(Config(dev=True))
    ws, ws_t = connect(hub, "alice", WS, "public.a")
    sse, sse_t = connect(hub, "alice", SSE, "public.a")
    poll, poll_t = connect(hub, "alice", POLL, "public.a")
    bob, bob_t = connect(hub, "bob", WS, "public.a")
    assert await hub.disconnect("alice", 4001, "bye") == 3
    assert ws_t.closed_with == (4001, "bye") and not ws_t.writes  # the close frame says it all
    assert sse_t.writes == [b'event: disconnect\ndata: {"code":4001,"reason":"bye"}\n\n']
    assert sse_t.closed_with == (4001, "bye")
    assert poll.close_code == POLL_DISCONNECTED and poll.close_reason == "bye"
    assert not bob.closed and len(hub.connections) == 1
    assert await hub.disconnect("alice") == 0


async def test_disconnect_refuses_what_the_http_api_refuses():
    hub = Hub(Config(dev=True))
    for args in (("",), ("a", 1000), ("a", 4403, "x" * 121)):
        with pytest.raises(HubError) as refused:
            await hub.disconnect(*args)
        assert refused.value.code == 400


async def test_unsubscribe_user_drops_the_exact_pattern_and_tells_each_connection():
    hub = Hub(Config(dev=True))
    ws, ws_t = connect(hub, "alice", WS, "public.a.*", "public.b")
    sse, sse_t = connect(hub, "alice", SSE, "public.a.*")
    other, _ = connect(hub, "alice", WS, "public.a.x")  # another pattern: kept
    assert await hub.unsubscribe_user("alice", "public.a.*") == 2
    await turn()
    assert json.loads(ws_t.writes[-1]) == {"op": "unsubscribed", "topic": "public.a.*"}
    assert sse_t.writes[-1] == b'event: unsubscribed\ndata: {"topic":"public.a.*"}\n\n'
    assert list(ws.subscriptions) == ["public.b"] and not sse.subscriptions
    assert list(other.subscriptions) == ["public.a.x"]
    assert await hub.topics() == {"public.b": 1, "public.a.x": 1}
    assert await hub.topics("public.a") == {"public.a.x": 1}
    with pytest.raises(HubError):
        await hub.unsubscribe_user("alice", "public..a")


async def test_history_pages_and_resets():
    hub = Hub(Config(dev=True))
    ids = [await hub.publish("public.h", n) for n in range(3)]
    assert [m["data"] for m in hub.history("public.h")["messages"]] == [0, 1, 2]
    page = hub.history("public.h", since=ids[0], limit=1)
    assert [m["data"] for m in page["messages"]] == [1] and page["more"] and page["position"] == ids[1]
    assert hub.history("public.h", since="nope-1")["reset"] == {"reason": "history_gap"}
    with pytest.raises(HubError):
        hub.history("public.h", limit=0)
    with pytest.raises(HubError):
        hub.history("public.*")


async def test_topic_counts_follow_every_way_a_subscription_ends():
    """The registry keeps the counts as connections subscribe and leave; at
    every step they equal a walk of the live connections' subscriptions."""
    import random

    rng = random.Random(20)
    hub = Hub(Config(dev=True))
    core = hub.core
    patterns = ["public.a", "public.a.*", "public.a.>", "public.b.c", "public.b.*"]
    live = []

    def walked() -> dict[str, int]:
        counts: dict[str, int] = {}
        for conn in core.connections.values():
            for pattern in conn.subscriptions:
                counts[pattern] = counts.get(pattern, 0) + 1
        return counts

    for step in range(400):
        action = rng.random()
        if action < 0.3 or not live:
            live.append(connect(hub, f"u{rng.randrange(5)}", rng.choice((WS, SSE)), *rng.sample(patterns, 2))[0])
        elif action < 0.55:  # a subscribe, or a re-subscribe with a filter (no new holder)
            hub.subscribe(rng.choice(live), rng.choice(patterns), {"k": "v"} if rng.random() < 0.5 else None)
        elif action < 0.75:
            core.unsubscribe(rng.choice(live), rng.choice(patterns))
        elif action < 0.85:
            await hub.unsubscribe_user(f"u{rng.randrange(5)}", rng.choice(patterns))
        else:
            conn = live.pop(rng.randrange(len(live)))
            conn.close(4000, "bye") if rng.random() < 0.5 else conn.lost()
        assert core.registry.pattern_counts == walked(), step
    assert await hub.topics() == walked() and await hub.topics("public.b.") == {
        p: n for p, n in walked().items() if p.startswith("public.b.")}

"""The writer layer in-process: a real Hub, real Connections, a fake transport.

Covers what every transport relies on: batching into one write, coalescing
while the hub is busy, the high-water stop and wake, the close state machine
(owed frames first, detach exactly once) and heartbeats of idle connections.
"""
import asyncio
from collections import Counter

import pytest

from hubbub import Config, Hub
from hubbub.auth import DEV_ANONYMOUS
from hubbub.core.connection import CLOSE_SLOW, CLOSED, CLOSING, HIGH_WATER, OPEN, Connection
from hubbub.wire import POLL, SSE, WS


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed_with: tuple[int, str] | None = None
        self.pending = 0  # pretend bytes not yet sent
        self.pings = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def buffered(self) -> int:
        return self.pending

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)

    def heartbeat(self, idle: bool) -> None:
        if idle:
            self.pings += 1


def make_hub(**settings) -> Hub:
    return Hub(Config(dev=True, **settings))


def connect(hub: Hub, fmt: int = WS, *patterns: str) -> tuple[Connection, FakeTransport]:
    transport = FakeTransport()
    conn = hub.connection(fmt, DEV_ANONYMOUS, transport)
    hub.attach(conn)
    for pattern in patterns or ("t.>",):
        hub.subscribe(conn, pattern)
    return conn, transport


async def turn(times: int = 2) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


async def test_publications_of_one_turn_go_out_in_one_write():
    hub = make_hub()
    conn, transport = connect(hub)
    for i in range(3):
        await hub.publish("t.a", i)
    assert transport.writes == []  # nothing is written inside the publisher's turn
    await turn()
    assert len(transport.writes) == 1
    assert [line.count(b'"op":"message"') for line in transport.writes[0].split(b"\n")] == [1, 1, 1]


async def test_an_idle_hub_writes_at_once_and_a_busy_one_coalesces():
    hub = make_hub(flush_delay=50.0)  # a long window, to tell the two cases apart
    conn, transport = connect(hub)
    await hub.publish("t.a", 1)
    await turn()
    assert len(transport.writes) == 1  # idle: the next loop turn
    for i in range(5):  # one per loop turn, right after a round: held for the window
        await hub.publish("t.a", i)
        await turn()
    assert len(transport.writes) == 1
    await asyncio.sleep(0.08)
    assert len(transport.writes) == 2 and transport.writes[1].count(b"\n") == 4


async def test_the_writer_stops_at_high_water_and_resumes_when_woken():
    hub = make_hub()
    conn, transport = connect(hub)
    transport.pending = HIGH_WATER
    await hub.publish("t.a", 1)
    await turn()
    assert transport.writes == [] and conn.outbox.count == 1
    await hub.publish("t.a", 2)  # the outbox is not re-armed: no second wake
    assert not conn.scheduled
    transport.pending = 0
    conn.wake()  # what a transport's resume_writing does
    await asyncio.sleep(0.01)  # past FLUSH_DELAY: a round just ran, so this one waits for it
    assert len(transport.writes) == 1 and transport.writes[0].count(b"\n") == 1


async def test_close_writes_owed_frames_then_closes_and_detaches_once():
    hub = make_hub()
    conn, transport = connect(hub)
    await hub.publish("t.a", "backlog")  # queued, not owed
    conn.send_control(b'{"op":"error","code":429,"reason":"x"}')
    conn.close(1008, "abuse")
    assert conn.state is CLOSING and conn.id not in hub.connections
    assert transport.writes == [b'{"op":"error","code":429,"reason":"x"}']
    assert transport.closed_with == (1008, "abuse")
    conn.close(1000)  # idempotent
    conn.lost()
    assert conn.state is CLOSED and transport.closed_with == (1008, "abuse")
    await hub.publish("t.a", "after")  # nothing reaches a closed connection
    await turn()
    assert len(transport.writes) == 1 and hub.stats()["subscriptions"] == 0


async def test_a_peer_that_vanishes_is_detached_without_a_close_frame():
    hub = make_hub()
    conn, transport = connect(hub)
    conn.lost()
    assert conn.state is CLOSED and transport.closed_with is None and not hub.connections


async def test_overflow_under_disconnect_closes_4408():
    hub = make_hub(slow_consumer="disconnect", queue_max_messages=2)
    conn, transport = connect(hub)
    transport.pending = HIGH_WATER  # a stalled reader
    for i in range(3):
        await hub.publish("t.a", i)
    assert transport.closed_with == (CLOSE_SLOW, "slow consumer") and conn.state is CLOSING


async def test_drop_oldest_tells_the_client_before_the_next_delivery():
    hub = make_hub(queue_max_messages=2)
    conn, transport = connect(hub, SSE)
    transport.pending = HIGH_WATER
    for i in range(4):
        await hub.publish("t.a", i)
    transport.pending = 0
    conn.wake()
    await asyncio.sleep(0.01)
    batch = transport.writes[0]
    assert batch.startswith(b'event: dropped\ndata: {"count":2}\n\n') and batch.count(b"event: message") == 2


async def test_a_poll_connection_gets_envelopes_as_json_array_items():
    hub = make_hub()
    conn, transport = connect(hub, POLL)
    await hub.publish("t.a", 1)
    await hub.publish("t.b", 2)
    await turn()
    import orjson
    items = orjson.loads(b"[" + transport.writes[0] + b"]")
    assert [(m["topic"], m["data"]) for m in items] == [("t.a", 1), ("t.b", 2)]


async def test_heartbeat_pings_only_connections_idle_for_a_whole_interval():
    hub = make_hub(flush_delay=0)
    quiet, quiet_transport = connect(hub)
    busy, busy_transport = connect(hub, WS, "b.>")
    for _ in range(3):
        await hub.publish("b.x", 1)
        await turn()
        for conn in (quiet, busy):
            conn.heartbeat()
    assert quiet_transport.pings == 2  # the first round counts a new connection as busy
    assert busy_transport.pings == 0


async def test_the_drain_writes_held_messages_before_closing():
    hub = make_hub(flush_delay=1000.0)
    await hub.start()
    conn, transport = connect(hub)
    await hub.publish("t.a", 1)
    await turn()
    await hub.publish("t.a", 2)  # held: the previous round was just now
    await hub.stop(timeout=0.1)
    assert b'"data":2' in b"".join(transport.writes)
    assert transport.closed_with[0] == 1001


@pytest.mark.parametrize("fmt", [SSE, WS, POLL])
async def test_control_frames_go_out_before_queued_messages(fmt):
    """A replay is queued as control frames in the subscribe step: it must
    precede the live messages queued behind it, in the same write."""
    hub = make_hub()
    conn, transport = connect(hub, fmt)
    await hub.publish("t.a", "live")
    conn.send_control(b"REPLAYED")
    await turn()
    assert transport.writes[0].startswith(b"REPLAYED") and b'"live"' in transport.writes[0]
    assert len(transport.writes) == 1 and conn.state is OPEN


async def test_each_round_starts_at_its_own_point_so_no_subscriber_is_always_last():
    """Woken connections come in the fan-out's subscriber order; a round writes
    them in that order from a start that moves every round (issue 20)."""
    hub = make_hub(flush_delay=0.0)  # every publication its own round
    written: list[int] = []
    for index in range(10):
        _, transport = connect(hub)
        transport.write = lambda data, index=index: written.append(index)
    rounds = []
    for n in range(200):
        await hub.publish("t.a", n)
        await turn()
        rounds.append(written[:])
        written.clear()
    woken = rounds[0]
    rotations = [woken[i:] + woken[:i] for i in range(len(woken))]
    assert all(r in rotations for r in rounds)  # each written once, the order kept
    last = Counter(r[-1] for r in rounds)
    assert set(last) == set(range(10))  # everyone is last sometimes...
    assert max(last.values()) <= 30  # ...and nobody much more often than 1 round in 10

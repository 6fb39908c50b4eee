"""LocalBroker against a real broker process: what Redis gives a fleet, on one machine.

One order and ids for every worker, backfill and gaps, presence across
workers (a worker that dies leaves at once), fleet events, 503 in time
when the broker stalls or dies, and a worker that stops reading catches up
from the log (or is told of the gap), never a silent hole.
"""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from hubbub.backplane import BackplaneUnavailable, broker_for
from hubbub.backplane.local import LocalBroker
from hubbub.backplane.local_protocol import DELIVER, GAP, HELLO, PING, SEQ, Reader, entries, message
from hubbub.config import Config

from .helpers import wait_until

LOCAL_NODE = str(Path(__file__).with_name("local_node.py"))
TIMEOUT = 1.0
SLACK = 0.5  # seconds a loaded machine may add to any bound


class Worker:
    """A LocalBroker plus a record of everything it delivered and heard."""

    def __init__(self, path: str, **options) -> None:
        self.broker = LocalBroker(path, **options)
        self.received: list[tuple[str, int | None, bytes]] = []
        self.gaps: list[int] = []
        self.events: list[list] = []

    async def start(self, backfill: int = 0) -> "Worker":
        await self.broker.start(self._on_publication, backfill=backfill, on_gap=self.gaps.append,
                                on_event=self.events.append)
        return self

    def _on_publication(self, seq, payload) -> None:
        self.received.append((self.broker.epoch, seq, payload))

    def seqs(self) -> list[int]:
        return [seq for _, seq, _ in self.received if seq is not None]


async def test_broker_for_picks_it_when_serve_names_one():
    broker = broker_for(Config(local_broker="/nowhere/broker.sock", history_size=50))
    assert isinstance(broker, LocalBroker) and broker.stream_length == 10_000
    assert type(broker_for(Config())).__name__ == "MemoryBroker"  # --workers 1: unchanged


async def test_two_workers_publishing_concurrently_each_see_everything_once_in_order(local_broker):
    path = local_broker().path
    a, b = await Worker(path).start(), await Worker(path).start()
    try:
        async def publish_many(worker: Worker, name: str, count: int) -> list[int]:
            async def one(i: int) -> int:
                epoch, seq = await worker.broker.publish(f"{name}/{i}".encode())
                assert epoch == worker.broker.epoch
                return seq

            return await asyncio.gather(*(one(i) for i in range(count)))

        acked_a, acked_b = await asyncio.gather(publish_many(a, "a", 400), publish_many(b, "b", 400))
        acked = set(acked_a) | set(acked_b)
        assert acked == set(range(1, 801)), "one fleet-wide sequence, no seq given twice"
        for worker in (a, b):
            await wait_until(lambda w=worker: len(w.received) >= 800, what="every publication")
            assert worker.seqs() == list(range(1, 801)), "every publication once, in seq order"
        assert a.received == b.received  # same epoch, same payload for each seq
        assert {p for _, _, p in a.received} == {f"{n}/{i}".encode() for n in "ab" for i in range(400)}
        assert a.gaps == b.gaps == []
    finally:
        await a.broker.stop()
        await b.broker.stop()


async def test_ephemeral_publications_reach_every_worker_without_a_seq(local_broker):
    path = local_broker().path
    a, b = await Worker(path).start(), await Worker(path).start()
    try:
        assert await a.broker.publish(b"typing", ephemeral=True) is None
        assert (await a.broker.publish(b"kept"))[1] == 1  # ephemeral ones take no seq
        await wait_until(lambda: len(b.received) == 2, what="both publications")
        assert [(seq, p) for _, seq, p in b.received] == [(None, b"typing"), (1, b"kept")]
    finally:
        await a.broker.stop()
        await b.broker.stop()


async def test_a_worker_that_starts_late_gets_the_newest_kept_publications_first(local_broker):
    path = local_broker().path
    a = await Worker(path).start()
    try:
        for i in range(50):
            await a.broker.publish(f"early/{i}".encode())
        late = await Worker(path).start(backfill=20)
        try:
            # Before start() returned: seqs 31..50, after saying 1..30 will not come.
            assert late.gaps == [30]
            assert late.seqs() == list(range(31, 51))
            assert late.received[0][2] == b"early/30"
            assert late.broker.epoch == a.broker.epoch
            await a.broker.publish(b"live")
            await wait_until(lambda: len(late.received) == 21, what="the live publication")
            assert late.received[-1][1:] == (51, b"live")
        finally:
            await late.broker.stop()
    finally:
        await a.broker.stop()


async def test_the_log_is_bounded_by_bytes_too(local_broker):
    """Large publications: the log keeps as many of the newest as fit in its
    byte bound (64 KiB here), and a late worker hears the gap before them."""
    path = local_broker(log_bytes=64 << 10).path
    a = await Worker(path).start()
    try:
        for i in range(100):
            await a.broker.publish(b"%04d" % i + b"." * 2044)  # ~2 KiB each, with its header
        late = await Worker(path).start(backfill=100)
        try:
            kept = late.seqs()
            assert kept == list(range(kept[0], 101)) and 25 <= len(kept) <= 32, kept
            assert late.gaps == [kept[0] - 1]
            assert [p[:4] for _, _, p in late.received] == [b"%04d" % (s - 1) for s in kept]
        finally:
            await late.broker.stop()
    finally:
        await a.broker.stop()


async def test_backfill_past_what_the_log_keeps_reports_the_gap(local_broker):
    path = local_broker(history_size=10).path  # the log keeps max(10 x 10, 10,000)
    a = await Worker(path).start()
    try:
        for _ in range(210):
            await a.broker.publish_all([(b"x", False)] * 50)
        late = await Worker(path).start(backfill=20_000)
        try:
            assert late.gaps == [500]  # said before the first delivery
            assert late.seqs() == list(range(501, 10_501))
        finally:
            await late.broker.stop()
    finally:
        await a.broker.stop()


async def test_presence_is_summed_across_workers_and_a_stopped_one_leaves_at_once(local_broker):
    path = local_broker().path
    a, b = await Worker(path).start(), await Worker(path).start()
    try:
        await a.broker.presence_update("chat.1", "alice", {"name": "Alice"}, 1)
        await b.broker.presence_update("chat.1", "alice", {"name": "Alice"}, 1)
        await b.broker.presence_update("chat.1", "bob", None, 1)
        await b.broker.presence_update("chat.2", "carol", None, 1)
        expected = {"alice": {"info": {"name": "Alice"}, "connections": 2},
                    "bob": {"info": None, "connections": 1}}
        assert await a.broker.presence_list("chat.1") == expected
        assert await b.broker.presence_list("chat.1") == expected
        await b.broker.presence_update("chat.1", "bob", None, -1)
        assert "bob" not in await a.broker.presence_list("chat.1")
        await b.broker.stop()
        assert await a.broker.presence_list("chat.1") == {
            "alice": {"info": {"name": "Alice"}, "connections": 1}}
        assert await a.broker.presence_list("chat.2") == {}
        assert a.events == [["join", "chat.1", "bob", None], ["join", "chat.2", "carol", None],
                            ["leave", "chat.1", "bob", None],
                            ["leave", "chat.2", "carol", None]]  # not alice: still on a
    finally:
        await a.broker.stop()
        await b.broker.stop()


async def test_join_and_leave_are_machine_wide_and_every_other_worker_hears_them(local_broker):
    path = local_broker().path
    a, b, c = [await Worker(path).start() for _ in range(3)]
    try:
        assert await a.broker.presence_update("room", "alice", {"n": 1}, 1) == ("join", {"n": 1})
        assert await b.broker.presence_update("room", "alice", {"n": 2}, 1) is None  # a second tab
        assert await a.broker.presence_update("room", "alice", None, -1) is None  # b still holds one
        assert await b.broker.presence_update("room", "alice", None, -1) == ("leave", {"n": 2})
        await wait_until(lambda: len(c.events) == 2, what="c hears the join and the leave")
        assert c.events == [["join", "room", "alice", {"n": 1}], ["leave", "room", "alice", {"n": 2}]]
        assert a.events == [["leave", "room", "alice", {"n": 2}]]  # never its own join
        assert b.events == [["join", "room", "alice", {"n": 1}]]

        await c.broker.broadcast(["user", "alice", "unread_count", {"count": 3}])
        await wait_until(lambda: len(a.events) == 2 and len(b.events) == 2, what="the user event")
        assert a.events[-1] == b.events[-1] == ["user", "alice", "unread_count", {"count": 3}]
        assert len(c.events) == 2  # the sender handles its own
    finally:
        for worker in (a, b, c):
            await worker.broker.stop()


async def test_a_killed_worker_leaves_presence_at_once(local_broker):
    path = local_broker().path
    a = await Worker(path).start()
    proc = subprocess.Popen([sys.executable, LOCAL_NODE, path, "present", "room", "dave"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert (await a.broker.presence_list("room"))["dave"]["connections"] == 1
        assert a.events == [["join", "room", "dave", {"pid": "node"}]]
        proc.kill()  # SIGKILL: its socket closes, and the broker sees it
        proc.wait()
        await wait_until(lambda: len(a.events) == 2, timeout=SLACK * 4, what="dave's leave")
        assert a.events[-1] == ["leave", "room", "dave", {"pid": "node"}]
        assert await a.broker.presence_list("room") == {}
    finally:
        proc.kill()
        await a.broker.stop()


async def test_an_unreachable_broker_refuses_to_start_with_a_clear_error(tmp_path):
    broker = LocalBroker(str(tmp_path / "nobody.sock"), timeout=TIMEOUT)
    with pytest.raises(BackplaneUnavailable) as caught:
        await broker.start(lambda seq, payload: None)
    assert caught.value.code == 503 and "nobody.sock" in caught.value.reason


async def test_a_stalled_broker_turns_unhealthy_and_what_it_missed_is_never_delivered(local_broker):
    broker_proc = local_broker()
    a = await Worker(broker_proc.path, timeout=TIMEOUT).start()
    try:
        await a.broker.publish(b"before")
        broker_proc.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(BackplaneUnavailable) as caught:  # sent before the stall was noticed
            await a.broker.publish(b"frozen")
        assert time.monotonic() - started <= TIMEOUT + SLACK and caught.value.code == 503
        await wait_until(lambda: not a.broker.healthy, timeout=TIMEOUT * 3 / 4 + SLACK,
                         what="unhealthy")
        started = time.monotonic()
        with pytest.raises(BackplaneUnavailable):  # now refused at once
            await a.broker.publish(b"refused")
        assert time.monotonic() - started < 0.1
        await asyncio.sleep(TIMEOUT)  # past every deadline: the broker must not publish them
        broker_proc.proc.send_signal(signal.SIGCONT)
        await wait_until(lambda: a.broker.healthy, timeout=TIMEOUT + SLACK, what="healthy again")
        await a.broker.publish(b"after")
        await wait_until(lambda: len(a.received) == 2, what="the publication after")
        assert [(seq, p) for _, seq, p in a.received] == [(1, b"before"), (2, b"after")]
    finally:
        await a.broker.stop()


async def test_presence_changes_a_stalled_broker_missed_are_sent_again(local_broker):
    """A worker's presence changes made while the broker does not answer (its
    requests time out, or are refused once it counts as stalled) reach the
    broker once it answers again: no user stays present for ever, or leaves
    while still connected."""
    broker_proc = local_broker()
    a = await Worker(broker_proc.path, timeout=TIMEOUT).start()
    b = await Worker(broker_proc.path, timeout=TIMEOUT).start()
    try:
        await a.broker.presence_update("room", "alice", None, 1)
        await a.broker.presence_update("room", "bob", None, 1)
        broker_proc.proc.send_signal(signal.SIGSTOP)
        # While stalled: alice's last connection closes, carol arrives.
        assert await a.broker.presence_update("room", "alice", None, -1) is None
        await wait_until(lambda: not a.broker.healthy, timeout=TIMEOUT * 3 / 4 + SLACK, what="unhealthy")
        assert await a.broker.presence_update("room", "carol", {"c": 1}, 1) is None  # refused at once
        broker_proc.proc.send_signal(signal.SIGCONT)
        await wait_until(lambda: a.broker.healthy, timeout=TIMEOUT + SLACK, what="healthy again")

        async def listed() -> dict:
            return await b.broker.presence_list("room")

        deadline = time.monotonic() + TIMEOUT + SLACK
        while set(await listed()) != {"bob", "carol"}:
            assert time.monotonic() < deadline, await listed()
            await asyncio.sleep(0.05)
        assert (await listed())["carol"] == {"info": {"c": 1}, "connections": 1}
        # And the other worker heard what changed, as it would have at the time.
        assert ["leave", "room", "alice", None] in b.events
        assert ["join", "room", "carol", {"c": 1}] in b.events
    finally:
        await a.broker.stop()
        await b.broker.stop()


async def test_a_dead_broker_makes_publishes_503_at_once_and_is_reported(local_broker):
    broker_proc = local_broker()
    a = await Worker(broker_proc.path, timeout=TIMEOUT).start()
    try:
        broker_proc.proc.kill()
        await wait_until(lambda: not a.broker.healthy, timeout=SLACK, what="unhealthy")
        with pytest.raises(BackplaneUnavailable) as caught:
            await a.broker.publish(b"x")
        assert "gone" in caught.value.reason
        with pytest.raises(BackplaneUnavailable):
            await a.broker.presence_list("room")
        assert await a.broker.presence_update("room", "u", None, 1) is None  # never raises
        await wait_until(lambda: broker_proc.deaths, timeout=SLACK, what="the watcher's report")
        assert broker_proc.deaths == [-signal.SIGKILL]
    finally:
        await a.broker.stop()


async def test_a_worker_that_stops_reading_catches_up_from_the_log_or_hears_the_gap(local_broker):
    """A raw connection that says hello and then reads nothing while 30,000 are
    published: it gets what the socket held, then (past the lag limit) the rest
    from the log, with a GAP for what the log (10,000) no longer holds."""
    path = local_broker(history_size=10, lag_limit=64 << 10).path
    slow = socket.socket(socket.AF_UNIX)
    slow.connect(path)
    slow.sendall(message(HELLO, 1, orjson.dumps({"backfill": 0})))
    a = await Worker(path).start()
    try:
        for _ in range(300):
            await a.broker.publish_all([(b"p" * 100, False)] * 100)
        slow.setblocking(False)
        reader, seqs, gaps = Reader(), [], []
        deadline = time.monotonic() + 20
        while (not seqs or seqs[-1] < 30_000) and time.monotonic() < deadline:
            try:
                data = slow.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.01)  # the broker writes what is left as we read
                continue
            for kind, _, body in reader.feed(data):
                if kind == DELIVER:
                    seqs += [seq for seq, _ in entries(body)]
                elif kind == GAP:
                    gaps.append((len(seqs), SEQ.unpack(body)[0]))
        assert seqs[-1] == 30_000 and seqs == sorted(set(seqs)), "in order, each once"
        assert gaps, "the log holds 10,000: what it lost was said, not skipped"
        before = [(seqs[at - 1] if at else 0, upto) for at, upto in gaps]
        for at, upto in gaps:  # the gap is said right before the first seq after it
            assert seqs[at] == upto + 1
        missing = set(range(1, 30_001)) - set(seqs)
        assert all(any(prior < m <= upto for prior, upto in before) for m in missing)
    finally:
        slow.close()
        await a.broker.stop()


def test_the_setting_refuses_a_redis_backplane_without_naming_its_password():
    from hubbub.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        Config.from_env({"HUBBUB_LOCAL_BROKER": "/run/b.sock", "HUBBUB_BACKPLANE": "redis://:pw@h:6379/0"})
    assert "HUBBUB_LOCAL_BROKER" in str(caught.value) and "pw" not in str(caught.value)


async def test_a_connection_that_speaks_out_of_turn_is_cut_and_the_others_go_on(local_broker):
    path = local_broker().path
    a = await Worker(path).start()
    try:
        rude = socket.socket(socket.AF_UNIX)
        rude.connect(path)
        rude.sendall(message(PING, 1))  # before its hello
        rude.settimeout(5)
        assert rude.recv(100) == b"", "cut, not answered"
        rude.close()
        assert (await a.broker.publish(b"still"))[1] == 1
        await wait_until(lambda: a.received, what="the publication")
    finally:
        await a.broker.stop()


async def test_topic_counts_add_every_workers_up_and_a_stopped_ones_go(local_broker):
    path = local_broker().path
    a = LocalBroker(path, presence_ttl=0.3)  # snapshots every 0.1 s
    b = LocalBroker(path, presence_ttl=0.3)
    mine = {"a": {"room.1": 2, "room.2": 1, "other": 5}, "b": {"room.1": 3}}
    for name, broker in (("a", a), ("b", b)):
        broker.count_topics_with(lambda prefix, own=mine[name]: {
            p: n for p, n in own.items() if p.startswith(prefix)})
        await broker.start(lambda seq, payload: None)
    try:
        async def until(broker: LocalBroker, expected: dict) -> None:
            deadline = time.monotonic() + 5
            while (got := await broker.topic_counts("room.")) != expected:
                assert time.monotonic() < deadline, got
                await asyncio.sleep(0.05)

        await until(a, {"room.1": 5, "room.2": 1})
        await until(b, {"room.1": 5, "room.2": 1})
        mine["b"]["room.2"] = 4  # b's snapshot follows within its period
        await until(a, {"room.1": 5, "room.2": 5})
        await b.stop()  # its snapshot goes with its connection, at once
        assert await a.topic_counts("room.") == {"room.1": 2, "room.2": 1}
    finally:
        await a.stop()
        await b.stop()

"""The local broker: the shared state of one machine's workers, in a process of its own.

``hubbub serve --workers N`` without Redis starts it before Granian
(``LocalBrokerProcess``) and hands its Unix socket to the workers
(HUBBUB_LOCAL_BROKER); each worker's ``LocalBroker`` connects to it. It
holds what Redis holds for a fleet: the epoch, the seq, the log of kept
publications (``stream_length_for``, at most ``LOG_BYTES``), the Idempotency-Keys, and every
worker's presence; it numbers every publication and sends it to every
worker in seq order. One event loop, so everything it does is one atomic
step, as a Redis script is.

Batched both ways: whatever it numbered in one loop turn goes out as one
DELIVER frame, built once and written to every worker with that worker's
replies in one write. A worker that does not read (its socket buffer holds
more than ``LAG_LIMIT``) stops getting frames; once it has read them it is
sent what it missed from the log, ``LAG_LIMIT`` at a time, or a GAP when the
log no longer holds it.

Run as ``python -m hubbub.backplane.local_server SOCKET HISTORY_SIZE [LAG_LIMIT [LOG_BYTES]]``. It
prints ``ready`` once it listens, ignores SIGINT and SIGTERM (a signal to
the whole process group must not take it away from workers still draining)
and exits when its standard input closes (``hubbub serve`` closes it after
the workers stopped) or its parent is gone.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque

import orjson

from .base import stream_length_for
from .expiring_keys import ExpiringKeys
from .local_protocol import (BROADCAST, CLAIM, COUNTS, DELIVER, ENTRY, EVENT, GAP, HELLO, ITEM, LATE,
                             LIST, PING, PRESENCE, PUBLISH, PUBLISH_HEAD, PUBLISHED, RELEASE, REPLY,
                             RESERVATION_GONE, SEQ, TOPICS, Reader, message)

log = logging.getLogger("hubbub.backplane")

# Bytes a worker may leave unread before it stops getting frames (it is then
# sent what it missed from the log, this much at a time, once it has read
# them). Small, because the worker's replies and pongs queue behind the
# frames: past its timeout/2 a reply would come after the worker answered
# 503 for a publication the broker made. A backlog waits in the log instead.
LAG_LIMIT = 1 << 20
# The log keeps the newest stream_length_for(HISTORY_SIZE) publications (as
# Redis's stream does), and at most this many bytes of them: it lives in a
# process on the application's machine, and 10,000 publications of 64 KiB
# would be 640 MiB. What it no longer holds is a gap for a worker that needs it.
LOG_BYTES = 256 << 20
PARENT_CHECK = 0.5  # seconds between looks at whether the parent is still there
READY_TIMEOUT = 10.0  # seconds ``hubbub serve`` waits for the broker to listen


class LocalBrokerServer:
    def __init__(self, history_size: int, lag_limit: int = LAG_LIMIT, log_bytes: int = LOG_BYTES) -> None:
        self.lag_limit = lag_limit
        self.epoch = os.urandom(4).hex()  # a new id space per run: older ids get history_gap
        self.seq = 0
        self.log: deque[bytes] = deque()  # ENTRY + payload, the newest kept publications
        self.log_entries = stream_length_for(history_size)  # at most this many
        self.log_bytes = log_bytes  # and this many bytes (the newest is always kept)
        self._logged_bytes = 0
        self.keys = ExpiringKeys()
        # topic -> user -> {worker: [connections, info]}
        self.presence: dict[str, dict[str, dict[WorkerConnection, list]]] = {}
        self.workers: list[WorkerConnection] = []  # said hello: they get every publication
        self.pending: list[bytes] = []  # numbered this loop turn, not yet sent
        self.flushed_seq = 0  # the newest seq sent in a DELIVER frame (or in a hello)
        self._flush: asyncio.Handle | None = None

    # -- sending -----------------------------------------------------------------
    def schedule_flush(self) -> None:
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """One write per worker: what it missed (if it caught up), this turn's
        publications (one frame built once), then its replies and events."""
        if self._flush is not None:  # called directly (a hello): the scheduled one is this one
            self._flush.cancel()
            self._flush = None
        frame = message(DELIVER, 0, b"".join(self.pending)) if self.pending else None
        self.pending = []
        upto = self.seq
        more = False
        for worker in self.workers:
            parts = []
            if worker.catching_up and not worker.lagging:
                parts += self.missed(worker)
                more = more or worker.catching_up
            if not worker.lagging and not worker.catching_up:
                if frame is not None:
                    parts.append(frame)
                worker.sent_upto = upto
            if worker.out:
                parts += worker.out
                worker.out = []
            if parts:
                worker.transport.write(b"".join(parts))
        self.flushed_seq = upto
        if more:  # the rest of a catch-up, a turn at a time while the worker reads
            self.schedule_flush()

    def kept_after(self, after: int, upto: int) -> tuple[int, list[bytes]]:
        """(gap, entries): the kept publications with after < seq <= upto, and the
        newest seq among the missing ones the log no longer holds (0: none)."""
        first = self.seq - len(self.log) + 1
        gap = first - 1 if after < first - 1 else 0
        start = max(after + 1, first) - first
        return gap, list(itertools.islice(self.log, start, max(start, upto - first + 1)))

    def missed(self, worker: "WorkerConnection") -> list[bytes]:
        """What a worker that read its backlog again missed meanwhile (up to the
        frames already sent), at most ``lag_limit`` bytes of it: the worker stays
        ``catching_up`` until it has all (this turn's frame follows only then)."""
        gap, kept = self.kept_after(worker.sent_upto, self.flushed_seq)
        parts = [message(GAP, 0, SEQ.pack(gap))] if gap else []
        first = max(worker.sent_upto + 1, gap + 1)  # the seq of kept[0]
        chunk, size = [], 0
        for entry in kept:
            if chunk and size + len(entry) > self.lag_limit:
                break
            chunk.append(entry)
            size += len(entry)
        if chunk:
            parts.append(message(DELIVER, 0, b"".join(chunk)))
        worker.sent_upto = max(worker.sent_upto, gap, first + len(chunk) - 1)
        worker.catching_up = worker.sent_upto < self.flushed_seq
        return parts

    def tell_others(self, sender: "WorkerConnection | None", event: list) -> None:
        frame = message(EVENT, 0, orjson.dumps(event))
        for worker in self.workers:
            # Events are best effort (never kept or replayed): a worker that is
            # not reading does not get them, so nothing piles up for it here.
            if worker is not sender and not worker.lagging:
                worker.out.append(frame)
        self.schedule_flush()

    # -- requests -------------------------------------------------------------------
    def hello(self, worker: "WorkerConnection", body: bytes) -> bytes:
        """Join the workers: the newest ``backfill`` kept publications, then every
        one after them (nothing in between: numbered so far is in the log)."""
        if worker.registered:
            raise ValueError("a second hello")
        self.flush()  # what is pending goes to the others first: it is in the log
        backfill = orjson.loads(body)["backfill"]
        after = max(self.seq - backfill, 0)
        gap, kept = self.kept_after(after, self.seq)
        self.workers.append(worker)
        worker.registered = True
        worker.sent_upto = self.seq
        return orjson.dumps({"epoch": self.epoch, "gap": max(gap, after)}) + b"\n" + b"".join(kept)

    def publish(self, body: bytes) -> bytes:
        """Number a batch in one step, all or none (see ``local_protocol``)."""
        late, held_length = PUBLISH_HEAD.unpack_from(body)
        if late and time.monotonic() > late:  # its worker has given up, or will before a reply
            return bytes((LATE,))
        pos = PUBLISH_HEAD.size
        reservation = None
        if held_length:
            reservation = orjson.loads(body[pos:pos + held_length])  # [key, marker, ttl]
            pos += held_length
            if self.keys.get(reservation[0]) != reservation[1]:
                return bytes((RESERVATION_GONE,))
        seqs = []
        size = len(body)
        pending, logged = self.pending, self.log
        while pos < size:
            ephemeral, length = ITEM.unpack_from(body, pos)
            pos += ITEM.size
            payload = body[pos:pos + length]
            pos += length
            if ephemeral:
                pending.append(ENTRY.pack(0, length) + payload)
                seqs.append(0)
            else:
                self.seq += 1
                entry = ENTRY.pack(self.seq, length) + payload
                pending.append(entry)
                logged.append(entry)
                self._logged_bytes += len(entry)
                seqs.append(self.seq)
        while len(logged) > self.log_entries or (self._logged_bytes > self.log_bytes and len(logged) > 1):
            self._logged_bytes -= len(logged.popleft())
        if reservation is not None:
            self.keys.set(reservation[0], [f"{self.epoch}-{s}" if s else None for s in seqs],
                          reservation[2])
        self.schedule_flush()
        return bytes((PUBLISHED,)) + b"".join(SEQ.pack(s) for s in seqs)

    def claim(self, body: bytes) -> bytes:
        late, key, marker, seconds = orjson.loads(body)
        if time.monotonic() > late:
            return orjson.dumps([True, None])
        kept = self.keys.get(key)
        if kept is None:
            self.keys.set(key, marker, seconds)
        return orjson.dumps([False, kept])

    def release(self, body: bytes) -> bytes:
        key, marker = orjson.loads(body)
        if self.keys.get(key) == marker:
            self.keys.delete(key)
        return b""

    def presence_update(self, worker: "WorkerConnection", body: bytes) -> bytes:
        """Set a user's connection count (and info) at one worker; announce the
        user's first connection on the machine (join) and the last one (leave).

        The count is absolute, not a delta, so a worker can send it again (after
        a request whose reply it never got) without counting anything twice."""
        topic, user, info, count = orjson.loads(body)
        holders = self.presence.setdefault(topic, {}).setdefault(user, {})
        before = sum(entry[0] for entry in holders.values())
        entry = holders.get(worker)
        old_info = entry[1] if entry else None
        if count <= 0:
            holders.pop(worker, None)
            worker.present.discard((topic, user))
            self._forget_empty(topic, user)
        elif entry is None:
            holders[worker] = [count, info]
            worker.present.add((topic, user))
        else:
            entry[0], entry[1] = count, info  # the worker's info: its newest connection's
        after = sum(entry[0] for entry in holders.values())
        if before == 0 and after > 0:
            event = ["join", topic, user, info]
        elif before > 0 and after == 0:
            event = ["leave", topic, user, old_info]
        else:
            return b"null"
        self.tell_others(worker, event)
        return orjson.dumps([event[0], event[3]])

    def _forget_empty(self, topic: str, user: str) -> None:
        users = self.presence.get(topic)
        if users is not None and not users.get(user, True):
            del users[user]
            if not users:
                del self.presence[topic]

    def presence_list(self, body: bytes) -> bytes:
        users = {}
        for user, holders in self.presence.get(orjson.loads(body), {}).items():
            info = next((entry[1] for entry in holders.values() if entry[1] is not None), None)
            users[user] = {"info": info, "connections": sum(entry[0] for entry in holders.values())}
        return orjson.dumps(users)

    def topics(self, worker: "WorkerConnection", body: bytes) -> bytes:
        """The other workers' subscriber counts of the patterns starting with a prefix
        (the asking worker adds its own, as they are now)."""
        prefix = orjson.loads(body)
        counts: dict[str, int] = {}
        for other in self.workers:
            if other is not worker:
                for pattern, count in other.topic_counts.items():
                    if pattern.startswith(prefix):
                        counts[pattern] = counts.get(pattern, 0) + count
        return orjson.dumps(counts)

    def gone(self, worker: "WorkerConnection") -> None:
        """A worker's connection closed (it stopped, or died): its users leave now
        wherever no other worker holds them."""
        if worker in self.workers:
            self.workers.remove(worker)
        for topic, user in worker.present:
            holders = self.presence.get(topic, {}).get(user)
            if holders is None:
                continue
            entry = holders.pop(worker, None)
            if not holders:
                self._forget_empty(topic, user)
                if entry is not None:
                    self.tell_others(worker, ["leave", topic, user, entry[1]])
        worker.present.clear()


class WorkerConnection(asyncio.Protocol):
    """One worker's connection: its requests in order, its writes in one per turn."""

    def __init__(self, server: LocalBrokerServer) -> None:
        self.server = server
        self.reader = Reader()
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self.present: set[tuple[str, str]] = set()
        self.topic_counts: dict[str, int] = {}  # its snapshot for GET /topics; gone with it
        self.registered = False  # said hello: gets publications, and may ask anything
        self.sent_upto = 0
        self.lagging = False
        self.catching_up = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=self.server.lag_limit)

    def pause_writing(self) -> None:
        self.lagging = True  # it is not reading: stop sending it frames (they are in the log)

    def resume_writing(self) -> None:
        self.lagging = False
        self.catching_up = True
        self.server.schedule_flush()

    def data_received(self, data: bytes) -> None:
        server = self.server
        try:
            for kind, request, body in self.reader.feed(data):
                if not self.registered and kind != HELLO:
                    raise ValueError("a request before the hello")
                if kind == PUBLISH:
                    reply = server.publish(body)
                elif kind == PRESENCE:
                    reply = server.presence_update(self, body)
                elif kind == CLAIM:
                    reply = server.claim(body)
                elif kind == RELEASE:
                    reply = server.release(body)
                elif kind == LIST:
                    reply = server.presence_list(body)
                elif kind == BROADCAST:
                    server.tell_others(self, orjson.loads(body))
                    reply = b""
                elif kind == PING:
                    reply = b""
                elif kind == COUNTS:
                    self.topic_counts = orjson.loads(body)
                    reply = b""
                elif kind == TOPICS:
                    reply = server.topics(self, body)
                elif kind == HELLO:
                    self.transport.write(message(REPLY, request, server.hello(self, body)))
                    continue
                else:
                    raise ValueError(f"unknown message kind {kind}")
                self.out.append(message(REPLY, request, reply))
        except Exception:  # a worker that speaks nonsense is cut off, not the broker
            log.exception("local broker: bad message from a worker; closing its connection")
            self.transport.abort()
            return
        server.schedule_flush()

    def eof_received(self) -> None:
        # A worker that stops says so with EOF and waits for this side to close:
        # its users have left (and its counts gone) before its stop returns.
        if self.out:  # the answers to what it asked before the EOF
            self.transport.write(b"".join(self.out))
            self.out = []
        self.server.gone(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.gone(self)  # a second time after an EOF: nothing left to do


async def serve(path: str, history_size: int, lag_limit: int = LAG_LIMIT,
                log_bytes: int = LOG_BYTES) -> None:
    loop = asyncio.get_running_loop()
    broker = LocalBrokerServer(history_size, lag_limit, log_bytes)
    server = await loop.create_unix_server(lambda: WorkerConnection(broker), path)
    stopped = loop.create_future()

    def stdin_readable() -> None:
        if not os.read(0, 4096) and not stopped.done():  # EOF: hubbub serve is done with us
            stopped.set_result(None)

    loop.add_reader(0, stdin_readable)
    parent = os.getppid()
    print("ready", flush=True)
    # The parent's copy of our stdin can outlive it (Granian forks its
    # workers from it), so its death is watched too.
    while not stopped.done() and os.getppid() == parent:
        await asyncio.wait((stopped,), timeout=PARENT_CHECK)
    server.close()
    for remove in (os.unlink, os.rmdir):  # the socket, and its private folder if that is all
        try:
            remove(path)
        except OSError:
            pass
        path = os.path.dirname(path)


def main(argv: list[str] | None = None) -> None:
    path, history_size, *limits = (argv if argv is not None else sys.argv[1:])  # lag, log bytes
    args = (path, int(history_size), *(int(n) for n in limits))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvloop  # as the workers run: a dependency of hubbub

    uvloop.run(serve(*args))


class LocalBrokerProcess:
    """``hubbub serve``'s handle on the broker process: start, watch, stop.

    If the broker dies while the workers serve, they cannot be one hub any
    more, so ``hubbub serve`` stops (SIGTERM to itself: the workers drain, with
    /readyz 503 and publishes 503 meanwhile) and exits 1.
    """

    def __init__(self, history_size: int, on_death=None, lag_limit: int = LAG_LIMIT,
                 log_bytes: int = LOG_BYTES) -> None:
        # What to do if it dies on its own: by default stop this process (SIGTERM).
        self.on_death = on_death or (lambda status: os.kill(os.getpid(), signal.SIGTERM))
        self.folder = tempfile.mkdtemp(prefix="hubbub-broker-")  # private: mode 0700
        self.path = os.path.join(self.folder, "broker.sock")
        self.died: int | None = None  # its exit status, when it ended on its own
        self._stopping = False
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hubbub.backplane.local_server", self.path, str(history_size),
                 str(lag_limit), str(log_bytes)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self._wait_until_ready()  # it stops the broker (and removes the folder) if not ready
        self._watcher = threading.Thread(target=self._watch, name="hubbub-broker-watch", daemon=True)
        self._watcher.start()

    def _wait_until_ready(self) -> None:
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        self.proc.stdout.close()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"the local broker did not start (exit status {self.proc.returncode})")

    def _watch(self) -> None:
        status = self.proc.wait()
        if self._stopping:
            return
        self.died = status
        print(f"hubbub: the local broker (pid {self.proc.pid}) exited with status {status}; the"
              " workers cannot be one hub without it: stopping", file=sys.stderr, flush=True)
        self.on_death(status)

    def stop(self, timeout: float = 5.0) -> None:
        """Close its stdin (it exits), wait for it, and remove its folder."""
        self._stopping = True
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


if __name__ == "__main__":
    main()

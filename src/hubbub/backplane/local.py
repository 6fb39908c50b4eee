"""The worker's side of the local broker (``--workers N`` without Redis).

``LocalBroker`` speaks to the machine's broker process (``local_server``)
over its Unix socket (``local_protocol``): one asyncio Protocol, no task per
message. Everything sent in one loop turn goes out in one write; every
DELIVER frame is handed to the hub in the same callback, publication after
publication, so the hub's flusher writes each subscriber once for the batch.

Health is measured: a ping every ``timeout/4``, answered within
``timeout/2``, or the broker counts as stalled (``healthy`` False: publishes
503 at once, /readyz 503) until one is answered again. A closed connection
(the broker died) is final: ``hubbub serve`` stops the workers then.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from .base import (BackplaneUnavailable, Broker, NodePresence, OnEpochChange, OnEvent, OnGap,
                   OnPublication, Reservation, call_hub, stream_length_for)
from .local_protocol import (BROADCAST, CLAIM, COUNTS, DELIVER, EVENT, GAP, HELLO, ITEM, LATE, LIST,
                             PING, PRESENCE, PUBLISH, PUBLISH_HEAD, RELEASE, REPLY, RESERVATION_GONE,
                             SEQ, TOPICS, Reader, entries, message)

log = logging.getLogger("hubbub.backplane")


class LocalBroker(Broker):
    def __init__(self, path: str, *, history_size: int = 1000, timeout: float = 2.0,
                 presence_ttl: float = 30.0) -> None:
        self.path = path
        self.epoch = ""
        self.healthy = False
        self.stream_length = stream_length_for(history_size)  # the hub backfills this many at start
        self.timeout = timeout
        self.probe_every = timeout / 4
        # This worker's subscriber counts reach the broker this often (when they
        # changed), as a Redis node writes its snapshot: GET /topics on another
        # worker is at most this old for this one's.
        self.counts_every = min(presence_ttl / 3, 5.0)
        self._counts_sent: dict[str, int] = {}
        # This worker's presence, kept here too: a change the broker may have
        # missed (no answer in time) is sent again, as an absolute count, once
        # it answers (see _watch), so its counts never drift.
        self._presence = NodePresence()
        self._presence_unsent: set[tuple[str, str]] = set()
        self._transport: asyncio.Transport | None = None
        self._closed: asyncio.Future | None = None
        self._reader = Reader()
        self._out: list[bytes] = []
        self._flush: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_request = 0
        self._waiting: dict[int, tuple[asyncio.Future, Any]] = {}  # request -> (future, parse)
        self._answering = False
        self._connected = False
        self._stopping = False
        self._watch_task: asyncio.Task | None = None
        self._counts_task: asyncio.Task | None = None
        self._last = 0  # the newest seq handed to on_publication
        self._on_publication: OnPublication | None = None
        self._on_gap: OnGap | None = None
        self._on_event: OnEvent | None = None

    # -- lifecycle ------------------------------------------------------------------
    async def start(self, on_publication: OnPublication, *, backfill: int = 0,
                    on_epoch_change: OnEpochChange | None = None,
                    on_gap: OnGap | None = None, on_event: OnEvent | None = None) -> None:
        """Connect; the newest ``backfill`` kept publications are delivered before it returns.

        Raises BackplaneUnavailable when the broker cannot be reached in time.
        (The epoch never changes: it is the broker process's, and the workers
        stop with it.)
        """
        self._on_publication, self._on_gap, self._on_event = on_publication, on_gap, on_event
        loop = self._loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.timeout
        try:
            async with asyncio.timeout(self.timeout):
                await loop.create_unix_connection(lambda: _Connection(self), self.path)
        except (OSError, TimeoutError) as error:
            raise BackplaneUnavailable(f"cannot reach the local broker at {self.path}:"
                                       f" {error or 'no answer in time'}") from None
        self._connected = self._answering = True  # for the hello itself
        try:
            await self._call(HELLO, orjson.dumps({"backfill": backfill}), deadline, self._hello)
        except BackplaneUnavailable:
            self._transport.abort()
            raise
        self._health_changed()
        self._watch_task = asyncio.ensure_future(self._watch())
        self._counts_task = asyncio.ensure_future(self._send_counts())

    def _hello(self, body: bytes) -> None:
        head, _, kept = body.partition(b"\n")
        hello = orjson.loads(head)
        self.epoch = hello["epoch"]
        if hello["gap"]:
            self._gap(hello["gap"])
        self._deliver(kept)

    async def stop(self) -> None:
        """Leave: the broker announces the leaves of this worker's users at once."""
        self._stopping = True
        self.healthy = False  # stopped, not unreachable: nothing to warn about
        for task in (self._watch_task, self._counts_task):
            if task is not None:
                task.cancel()
        self._watch_task = self._counts_task = None
        if self._transport is not None and self._closed is not None:
            self._send_now()
            if not self._closed.done():
                # EOF, then wait for the broker to close: it has handled this
                # worker's leaving (its users' leaves) by then.
                self._transport.write_eof()
            try:
                async with asyncio.timeout(self.timeout):
                    await asyncio.shield(self._closed)
            except TimeoutError:
                pass
            self._transport.abort()  # closed by now, or not answering
        self._on_publication = None

    # -- the connection ---------------------------------------------------------------
    def _connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._closed = self._loop.create_future()

    def _connection_lost(self, exc: Exception | None) -> None:
        self._connected = False
        self._health_changed("the connection to the local broker closed"
                             + (f" ({exc})" if exc else ""))
        waiting, self._waiting = self._waiting, {}
        for future, _ in waiting.values():
            if not future.done():
                future.set_exception(BackplaneUnavailable(
                    "backplane unavailable: the local broker went away before it answered"))
        if not self._closed.done():
            self._closed.set_result(None)

    def _data_received(self, data: bytes) -> None:
        for kind, request, body in self._reader.feed(data):
            if kind == DELIVER:
                self._deliver(body)
            elif kind == REPLY:
                waiting = self._waiting.pop(request, None)
                if waiting is None:  # its caller gave up (503): nothing to answer
                    continue
                future, parse = waiting
                if future.done():
                    continue
                try:
                    future.set_result(parse(body) if parse is not None else body)
                except BackplaneUnavailable as refused:
                    future.set_exception(refused)
            elif kind == EVENT:
                self._event(body)
            elif kind == GAP:
                self._gap(SEQ.unpack(body)[0])

    def _deliver(self, body: bytes) -> None:
        on_publication = self._on_publication
        if on_publication is None:
            return
        for seq, payload in entries(body):
            if seq:
                if seq <= self._last:  # already had it (never, but never twice either)
                    continue
                self._last = seq
            call_hub(on_publication, seq or None, payload)

    def _gap(self, upto: int) -> None:
        self._last = max(self._last, upto)
        if self._on_gap is not None:
            call_hub(self._on_gap, upto)

    def _event(self, body: bytes) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(orjson.loads(body))
        except Exception:  # a bad event or a bug in the hub must not stop the connection
            log.exception("fleet event failed: %r", body[:200])

    # -- requests: batched per loop turn ----------------------------------------------
    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        if self._flush is None:
            self._flush = self._loop.call_soon(self._send_now)

    def _send_now(self) -> None:
        self._flush = None
        out, self._out = self._out, []
        if out and self._connected and not self._transport.is_closing():
            self._transport.write(b"".join(out))

    async def _call(self, kind: int, body: bytes, deadline: float, parse=None,
                    probe: bool = False) -> Any:
        """Send one request and wait for its reply until ``deadline``; 503 if none.
        Refused at once while the broker is gone or stalled (a ``probe`` still goes:
        it is how a stall is seen to end)."""
        if not self._connected or self._stopping or not (self._answering or probe):
            raise BackplaneUnavailable(f"backplane unavailable: {self._why()}")
        self._next_request = request = self._next_request % 0xFFFFFFFF + 1  # 0 is the broker's
        future = self._loop.create_future()
        self._waiting[request] = (future, parse)
        self._queue(message(kind, request, body))
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await future
        except TimeoutError:
            self._waiting.pop(request, None)
            raise BackplaneUnavailable(f"backplane unavailable: no answer from the local broker"
                                       f" in time ({self.timeout:g} s)") from None

    def _why(self) -> str:
        if self._stopping:
            return "the hub is stopping"
        if not self._connected:
            return "the local broker is gone"
        return "the local broker does not answer"

    def _late(self, deadline: float | None) -> tuple[float, float]:
        """(deadline, late): when the caller gives up, and when the broker must no
        longer act for it (half the timeout before: its reply still has time to
        come back). The broker shares this machine's monotonic clock."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        late = deadline - self.timeout / 2
        if time.monotonic() >= late:  # it would arrive late: don't send
            raise BackplaneUnavailable(f"backplane unavailable: the request could not be sent"
                                       f" within {self.timeout / 2:g} s")
        return deadline, late

    # -- publishing ----------------------------------------------------------------------
    async def publish(self, payload: bytes, ephemeral: bool = False,
                      deadline: float | None = None) -> tuple[str, int] | None:
        return (await self.publish_all([(payload, ephemeral)], deadline))[0]

    async def publish_all(self, items: list[tuple[bytes, bool]], deadline: float | None = None,
                          reservation: Reservation | None = None) -> list[tuple[str, int] | None]:
        """All in one step at the broker, or none; 503 by ``deadline``, and then never
        delivered (the broker does nothing past ``late``). With a ``reservation`` the
        ids are stored under its key in that step, only while the key holds it."""
        if not self.healthy:
            raise BackplaneUnavailable(f"backplane unavailable: {self._why()}")
        deadline, late = self._late(deadline)
        held = b"" if reservation is None else orjson.dumps(
            [reservation.key, reservation.marker, reservation.ttl])
        parts = [PUBLISH_HEAD.pack(late, len(held)), held]
        for payload, ephemeral in items:
            parts += (ITEM.pack(ephemeral, len(payload)), payload)
        return await self._call(PUBLISH, b"".join(parts), deadline, self._numbered)

    def _numbered(self, body: bytes) -> list[tuple[str, int] | None]:
        status = body[0]
        if status == LATE:
            raise BackplaneUnavailable("backplane unavailable: the local broker took the publish"
                                       " after its deadline, so it did nothing")
        if status == RESERVATION_GONE:
            raise BackplaneUnavailable("backplane unavailable: the Idempotency-Key reservation"
                                       " expired before the publish; nothing was published")
        epoch = self.epoch
        return [(epoch, seq) if seq else None for (seq,) in SEQ.iter_unpack(body[1:])]

    # -- idempotency ------------------------------------------------------------------------
    async def claim_idempotency(self, reservation: Reservation, deadline: float) -> Any:
        deadline, late = self._late(deadline)
        seconds = max(0.001, deadline - time.monotonic())  # the reservation lasts until its request gives up
        too_late, kept = await self._call(
            CLAIM, orjson.dumps([late, reservation.key, reservation.marker, seconds]), deadline,
            orjson.loads)
        if too_late:
            raise BackplaneUnavailable("backplane unavailable: the local broker took the"
                                       " Idempotency-Key claim after its deadline")
        return kept

    async def release_idempotency(self, reservation: Reservation) -> None:
        await self._call(RELEASE, orjson.dumps([reservation.key, reservation.marker]),
                         time.monotonic() + self.timeout)

    # -- fleet events and presence --------------------------------------------------------
    async def broadcast(self, event: list) -> None:
        await self._call(BROADCAST, orjson.dumps(event), time.monotonic() + self.timeout)

    async def presence_update(self, topic: str, user: str, info: Any,
                              delta: int) -> tuple[str, Any] | None:
        """The user's first / last connection on the machine: ``("join"|"leave", info)``
        (the other workers hear it as an event), else None. Never raises: while the
        broker does not answer, the change is announced to nobody here (None) and
        sent again once it answers."""
        entry = self._presence.update(topic, user, info, delta)
        try:
            event = await self._send_presence(topic, user, entry)
        except BackplaneUnavailable:
            self._presence_unsent.add((topic, user))
            return None
        return None if event is None else (event[0], event[1])

    async def _send_presence(self, topic: str, user: str, entry: list | None) -> Any:
        """This worker's count (and info) of the user on the topic, absolute: the
        broker applies it as many times as it gets it with the same result."""
        count, info = entry if entry is not None else (0, None)
        self._presence_unsent.discard((topic, user))  # what is sent now supersedes it
        return await self._call(PRESENCE, orjson.dumps([topic, user, info, count]),
                                time.monotonic() + self.timeout, orjson.loads)

    async def _resend_presence(self) -> None:
        """The changes the broker may have missed, as they stand now."""
        for topic, user in list(self._presence_unsent):
            entry = self._presence.topics.get(topic, {}).get(user)
            try:
                await self._send_presence(topic, user, entry)
            except BackplaneUnavailable:
                self._presence_unsent.add((topic, user))
                return

    async def presence_list(self, topic: str) -> dict[str, dict[str, Any]]:
        return await self._call(LIST, orjson.dumps(topic), time.monotonic() + self.timeout,
                                orjson.loads)

    # -- subscriber counts (GET /topics) ------------------------------------------------------
    async def topic_counts(self, prefix: str = "") -> dict[str, int]:
        """Every worker's subscriber counts of the patterns starting with ``prefix``:
        this one's as they are now, the others' as last sent (``counts_every``)."""
        others = await self._call(TOPICS, orjson.dumps(prefix), time.monotonic() + self.timeout,
                                  orjson.loads)
        counts = dict(self._count_topics(prefix))
        for pattern, count in others.items():
            counts[pattern] = counts.get(pattern, 0) + count
        return counts

    async def _send_counts(self) -> None:
        while self._connected and not self._stopping:
            await asyncio.sleep(self.counts_every)
            counts = self._count_topics("")
            if counts == self._counts_sent:
                continue
            try:
                await self._call(COUNTS, orjson.dumps(counts), time.monotonic() + self.timeout)
            except BackplaneUnavailable:
                continue  # sent again next time
            self._counts_sent = counts

    # -- health ------------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Ping every ``probe_every``; no answer within timeout/2 is a stall."""
        while self._connected and not self._stopping:
            await asyncio.sleep(self.probe_every)
            try:
                await self._call(PING, b"", time.monotonic() + self.timeout / 2, probe=True)
            except BackplaneUnavailable:
                self._answering = False
                self._health_changed(f"no answer to a ping within {self.timeout / 2:g} s")
            else:
                self._answering = True
                self._health_changed()
                if self._presence_unsent:
                    await self._resend_presence()

    def _health_changed(self, reason: str = "") -> None:
        healthy = self._connected and self._answering and not self._stopping
        if healthy != self.healthy:
            self.healthy = healthy
            if healthy:
                log.info("local broker connected (%s, epoch %s)", self.path, self.epoch)
            elif not self._stopping:
                log.warning("local broker unavailable (%s): publishes fail with 503 until it"
                            " answers", reason)


class _Connection(asyncio.Protocol):
    """The socket's callbacks, handed straight to the broker."""

    def __init__(self, broker: LocalBroker) -> None:
        self.broker = broker
        self.data_received = broker._data_received  # no extra call per read

    def connection_made(self, transport) -> None:
        self.broker._connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broker._connection_lost(exc)

"""The transports of ASGI streams: SSE, WebSocket and a long-poll answer.

Under Granian a ``send`` to a gone client does not raise, so each stream
watches ``receive()`` for the disconnect; and WS liveness is app-level
(``{"op":"ping"}`` from the hub), because Granian keeps protocol pings to
itself (its src/asgi/io.rs, and seen with granian 2.8.7): it answers a
client's ping and drops pongs inside ``receive()``, and ``send`` takes only
text, bytes (a binary data frame) or a close, with no ASGI extension for
pings. Nor does backpressure tell a peer that stopped reading: ``send``
waits only once the kernel buffers are full (about 4 MB on loopback), which
pings never fill.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from .. import wire
from ..core.connection import CLOSE_INTERNAL, HIGH_WATER, Connection
from .streams import SSEHeartbeat

log = logging.getLogger("hubbub.asgi")

# A client that speaks pong (it answered a hub ping, or said so at connect as
# hubbub.js and the Python client do) and then stays silent this many liveness
# periods is taken for dead or frozen; the check runs every period, so it is
# closed (4410) within 3 periods, which is at most PRESENCE_TTL. A client that
# never speaks pong, such as a bare `websockets` listener, is left to TCP: its
# protocol pongs never reach the app, so it cannot be told from a frozen one.
MISSED_PINGS_BEFORE_CLOSE = 2


class ASGISender:
    """The transport of an ASGI stream: ``write`` queues, one task awaits ``send``.

    ``buffered`` counts what is queued or being sent, so the connection's
    writer stops at the same high-water mark as on a socket and a slow
    client's backlog stays in its bounded outbox, not here.
    """

    separator = b""

    def __init__(self, send) -> None:
        self.send = send
        self.conn: Connection | None = None
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.closing: tuple[int, str] | None = None
        self.gone = False  # the peer disconnected: nothing more is sent
        self._wakeup: asyncio.Future | None = None

    def write(self, data: bytes) -> None:
        if not self.gone:
            self.queue.append(data)
            self.queued += len(data)
            self._wake()

    def buffered(self) -> int:
        return self.queued

    def close(self, code: int, reason: str) -> None:
        self.closing = (code, reason)
        self._wake()

    def heartbeat(self, idle: bool) -> None:
        pass

    def peer_gone(self) -> None:
        self.gone = True
        self._wake()
        if self.conn is not None:
            self.conn.lost()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(self) -> None:
        """Send what is written, in order, until closed or the peer is gone."""
        loop = asyncio.get_running_loop()
        while not self.gone:
            if self.queue:
                if len(self.queue) == 1:
                    data = self.queue.popleft()
                else:  # several batches since the last send: one message
                    data = self.separator.join(self.queue)
                    self.queue.clear()
                await self.send_data(data)
                self.queued -= len(data)
                conn = self.conn
                if conn is not None and conn.has_pending():
                    conn.wake()  # it may have stopped at the high-water mark
                continue
            if self.closing is not None:
                await self.send_close(*self.closing)
                return
            self._wakeup = loop.create_future()
            await self._wakeup
            self._wakeup = None

    async def send_data(self, data: bytes) -> None:
        raise NotImplementedError

    async def send_close(self, code: int, reason: str) -> None:
        raise NotImplementedError


class ASGISSE(SSEHeartbeat, ASGISender):
    async def send_data(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def send_close(self, code: int, reason: str) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})


class ASGIWebSocket(ASGISender):
    separator = b"\n"

    def __init__(self, send, heartbeat: float, text_of: "TextCache") -> None:
        super().__init__(send)
        self.interval = heartbeat
        self.text_of = text_of
        self.receiving: asyncio.Future | None = None  # the reader's pending receive()
        self.last_seen = time.monotonic()  # when the client last sent a frame
        self.answers_pings = False  # it sent {"op":"pong"} once: silence now means dead or frozen

    async def send_data(self, data: bytes) -> None:
        # ASGI wants str for a text frame; one-message batches are the bytes
        # every subscriber shares, decoded once for all of them.
        await self.send({"type": "websocket.send", "text": self.text_of(data)})

    async def send_close(self, code: int, reason: str) -> None:
        # Granian sends no close frame while a receive() is pending (seen
        # with granian 2.8.7): the reader's receive is cancelled first.
        if self.receiving is not None and not self.receiving.done():
            self.receiving.cancel()
            await asyncio.wait([self.receiving])
        await self.send({"type": "websocket.close", "code": code, "reason": reason})  # cut by Connection.close

    def pong(self) -> None:
        """The client sent ``{"op":"pong"}`` (an answer, or unasked at connect):
        from now on its silence means it is gone. Any other frame proves
        nothing: a client that publishes now and then may not speak pong."""
        self.answers_pings = True

    def heartbeat(self, idle: bool) -> bool | None:
        # Granian hides protocol pings from the app: liveness is app-level.
        now = time.monotonic()
        if self.answers_pings and now - self.last_seen > self.interval * MISSED_PINGS_BEFORE_CLOSE:
            return False  # the connection closes it: 4410 no pong
        # Ping a client that has been silent a period even while we write to
        # it: liveness is about what it sends, not about what we send.
        if idle or now - self.last_seen >= self.interval:
            self.write(wire.WS_PING)


class PollAnswer:
    """The transport of a long-poll request: the first batch written is the answer."""

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.done = asyncio.get_running_loop().create_future()

    def peer_gone(self) -> None:
        self._finish()  # nobody to answer: stop waiting

    def write(self, data: bytes) -> None:
        self.body = data if self.body is None else self.body + b"," + data
        self._finish()

    def buffered(self) -> int:
        # One batch answers the poll: after it the writer holds the rest back.
        return 0 if self.body is None else HIGH_WATER

    def close(self, code: int, reason: str) -> None:
        self._finish()

    def heartbeat(self, idle: bool) -> None:
        pass

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class TextCache:
    """Decoded text of recently sent one-message batches, bounded by bytes.

    The bound matters: batches are unique and up to BATCH_MAX_BYTES each, and
    a count bound alone let slow readers pin hundreds of MiB here.
    """

    def __init__(self, max_bytes: int = 1 << 20, max_item: int = 16 << 10) -> None:
        self.max_bytes = max_bytes
        self.max_item = max_item
        self.size = 0
        self.texts: dict[bytes, str] = {}

    def __call__(self, batch: bytes) -> str:
        text = self.texts.get(batch)
        if text is not None:
            return text
        text = batch.decode()
        if len(batch) <= self.max_item:
            while self.size + len(batch) > self.max_bytes:
                self.size -= len(self.texts.pop(next(iter(self.texts))))
            self.texts[batch] = text
            self.size += len(batch)
        return text


async def run_sender(sender: ASGISender) -> None:
    """Run a stream's sender task; a failure is logged and loses the connection."""
    try:
        await sender.run()
    except Exception:
        log.exception("ASGI sender failed")
        if sender.conn is not None:
            sender.conn.lost(CLOSE_INTERNAL)

"""The Redis broker's pub/sub connection, read in batches.

redis-py's ``PubSub.listen()`` hands over one message per ``await``, each
wrapped in a dict. Here the connection is an asyncio Protocol: every read
from the socket is parsed at once by hiredis and each message goes to
``on_message(channel, data)`` in that same callback, with no task switch and
no per-message object beyond hiredis's reply. Everything Redis had sent by
then is therefore fanned out in one loop turn, and the hub's flusher writes
each subscriber once for the whole batch, as for a burst published in-process.

While the broker catches up from the stream (``hold()`` ... ``release()``),
messages are kept in arrival order and reading is paused, so a node that
cannot keep up leaves the backlog in Redis (its output buffer limit then
drops the connection, and the broker reconnects and catches up) rather than
in this process's memory.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url

OnMessage = Callable[[bytes, bytes], None]  # (channel, data)


class SubscriptionError(ConnectionError):
    """Redis refused the subscription (an error reply: auth, ACL) or closed it."""


def _command(*args: bytes | str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _tls_context(params: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context redis-py makes for the command connections from the same
    URL (every ``ssl_*`` option it takes: CA, client certificate, hostname
    check...), so the subscription connects wherever the commands do."""
    options = {name: value for name, value in params.items() if name.startswith("ssl_")}
    return SSLConnection(**options).ssl_context.get()


class SubscriptionProtocol(asyncio.Protocol):
    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self._reader = hiredis.Reader()
        self._confirming: asyncio.Future | None = None
        self._unconfirmed = 0
        self._held: list[tuple[bytes, bytes]] | None = []  # held until the first release()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, error: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(error or SubscriptionError("Redis closed the subscription"))
        if self._confirming is not None and not self._confirming.done():
            self._confirming.set_exception(SubscriptionError("Redis closed the connection"))

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            reply = reader.gets()
            while reply is not False:
                self._reply(reply)
                reply = reader.gets()
        except hiredis.ProtocolError as error:
            self._fail(SubscriptionError(f"bad reply from Redis: {error}"))

    def _reply(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            kind = reply[0]
            if kind == b"message":
                if self._held is None:
                    self.on_message(reply[1], reply[2])
                else:
                    self._held.append((reply[1], reply[2]))
                return
            if kind == b"subscribe":
                self._unconfirmed -= 1
                if self._unconfirmed == 0 and self._confirming is not None and not self._confirming.done():
                    self._confirming.set_result(None)
                return
        if isinstance(reply, hiredis.ReplyError):  # AUTH or SUBSCRIBE refused
            self._fail(SubscriptionError(f"Redis refused the subscription: {reply}"))
        # Anything else (AUTH's +OK, a pong) needs nothing.

    def _fail(self, error: Exception) -> None:
        if self._confirming is not None and not self._confirming.done():
            self._confirming.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(error)
        if self.transport is not None:
            self.transport.abort()

    async def subscribe(self, params: dict[str, Any], channels: list[str]) -> None:
        """Authenticate if the URL says so, subscribe, and wait for every confirmation."""
        self._confirming = asyncio.get_running_loop().create_future()
        self._unconfirmed = len(channels)
        commands = []
        if params.get("password") is not None:
            user = params.get("username")
            commands.append(_command("AUTH", *([user] if user else []), params["password"]))
        commands.append(_command("SUBSCRIBE", *channels))
        self.transport.write(b"".join(commands))
        await self._confirming

    def hold(self) -> None:
        """Keep messages (in order) and stop reading, until ``release``."""
        if self._held is None:
            self._held = []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def release(self) -> None:
        """Hand over what was held, then deliver as messages arrive again.

        ``on_message`` may call ``hold()`` again (a gap to fill): the rest
        stays held, in order, for the next release.
        """
        held, self._held = self._held or [], None
        for i, (channel, data) in enumerate(held):
            self.on_message(channel, data)
            if self._held is not None:  # held again: keep the rest for the next release
                self._held[:0] = held[i + 1:]
                return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_subscription(url: str, channels: list[str], on_message: OnMessage) -> SubscriptionProtocol:
    """Connect to ``url`` (redis:// or rediss://, as Config allows), subscribe to
    ``channels`` and return the protocol, holding (call ``release()``).
    The caller bounds the time it may take."""
    params = parse_url(url)
    loop = asyncio.get_running_loop()

    def factory() -> SubscriptionProtocol:
        return SubscriptionProtocol(on_message)

    tls = _tls_context(params) if url.startswith("rediss:") else None
    _, protocol = await loop.create_connection(factory, params.get("host", "localhost"),
                                               params.get("port", 6379), ssl=tls)
    sock = protocol.transport.get_extra_info("socket")
    if sock is not None:  # a dead peer is noticed even when nobody publishes
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    try:
        await protocol.subscribe(params, channels)
    except BaseException:
        protocol.close()
        raise
    return protocol

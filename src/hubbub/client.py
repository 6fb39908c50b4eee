"""An asyncio client for Hubbub's WebSocket endpoint, on picows.

    async with hubbub.client.connect("ws://127.0.0.1:8001/ws", token=jwt,
                                     topics=["orders.*"]) as client:
        event_id = await client.publish("chat.room1", {"text": "hi"})
        async for message in client:
            print(message.topic, message.data)

The client reconnects by itself after a dropped connection (exponential
backoff with jitter) and resumes every subscription from the last event id it
saw, so the hub replays what was missed (or sends a ``reset``). A subscription
that has seen no message since its subscribe ack or a ``reset`` resumes from
the position that ack or reset gave it: after Redis lost its data that is the
start of the new epoch, whose ids may sort below the old ones. Ids are only
handed back, never compared (docs/protocol.md). Every failure to connect
(refused, closed before the handshake, a non-101 answer such as a proxy's
502, a handshake timeout) goes through the same backoff and is logged; with
``max_retries`` the client gives up after that many failures in a row and
iteration ends. It does not reconnect after ``close()``, after 4401 (a new
token is needed), or after a server-side disconnect: a close code 4000-4999
other than 4408 (slow consumer) and 4410 (no pong), which is what ``POST
/disconnect`` sends (4403 by default). Iteration then ends and ``closed_with``
holds the ``ConnectionClosed`` with the hub's code and reason. It answers the hub's ``{"op":"ping"}``, and says so at
connect, so the ASGI port can drop it (4410) if it freezes.

With ``token_factory`` (a function or coroutine function returning a JWT) the
client asks it for a token at every connect, refreshes the connection with
``{"op":"refresh"}`` at REFRESH_AT of the token's lifetime, and after a 4401
``token expired`` close reconnects with a fresh token and resumes from the
last id, so short-lived tokens lose no message (SPEC 10).
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import base64
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from picows import WSError, WSListener, WSMsgType, ws_connect

from .errors import HubError

log = logging.getLogger("hubbub.client")

# Application close codes (4000-4999) end the client, as a backend that
# disconnects a user means it to stay away (SPEC 10 "Server API"), except
# these, which ask for a reconnect and resume: 4408 slow consumer, 4410 no pong.
RECONNECT_CODES = frozenset({4408, 4410})
INBOX_EVENTS = ("notification", "notification_deleted", "unread_count")
TOKEN_EXPIRED = "token expired"  # the hub's 4401 reason when exp passed: a fresh token helps
# A connection is refreshed when this much of its token's lifetime has passed:
# the rest (plus the hub's leeway) covers a slow factory and the round trip.
REFRESH_AT = 0.8
REFRESH_RETRY = 1.0  # seconds before another try after a refused or failed refresh

TokenFactory = Callable[[], Union[str, Awaitable[str]]]
# What a failed connection attempt raises; each goes through backoff.
CONNECT_FAILURES = (OSError, WSError, asyncio.TimeoutError, ConnectionError)


@dataclasses.dataclass(frozen=True)
class Message:
    """What the hub pushes: ``kind`` is ``message``, ``reset``, ``dropped``, ``join``, ``leave``,
    ``unsubscribed`` (the server API dropped ``topic``), or one of the user's inbox events
    ``notification``, ``notification_deleted``, ``unread_count`` (their payload in ``data``)."""

    kind: str
    topic: str | None = None
    id: str | None = None
    event: str | None = None
    data: Any = None
    ts: int | None = None
    raw: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)


class ConnectionClosed(Exception):
    """The client is closed for good: ``close()``, a refusal such as 4401, or a
    server-side disconnect (``POST /disconnect``: its code and reason)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}): {reason}")
        self.code = code
        self.reason = reason


def reconnects_after(code: int | None, reason: str, renewable: bool) -> bool:
    """Whether a connection closed with ``code``/``reason`` is reconnected. None
    (cut, no close frame), 1001, 1006, 1011 and the like: yes. 4401: only a
    ``token expired`` with a token factory to ask for a fresh one. Any other
    4000-4999 but RECONNECT_CODES: no, the hub's server API disconnected the user."""
    if code == 4401:
        return reason == TOKEN_EXPIRED and renewable
    if code is not None and 4000 <= code <= 4999:
        return code in RECONNECT_CODES
    return True


class _Listener(WSListener):
    def __init__(self, client: "Client") -> None:
        self.client = client
        self.close_code: int | None = None
        self.close_reason = ""

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            for line in frame.get_payload_as_bytes().split(b"\n"):
                if line:
                    self.client._on_message(orjson.loads(line))
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            self.close_reason = frame.get_close_message().decode(errors="replace") \
                if frame.get_close_message() else ""
            transport.send_close(self.close_code)
            transport.disconnect()


class Client:
    def __init__(self, url: str, *, token: str | None = None, topics: list[str] = (),
                 reconnect: bool = True, backoff_base: float = 0.2, backoff_max: float = 10.0,
                 request_timeout: float = 10.0, max_retries: int | None = None,
                 token_factory: TokenFactory | None = None) -> None:
        self.url = url
        self.token = token
        self.token_factory = token_factory
        self.refreshes = 0  # connections extended with the refresh op
        self._refresher: asyncio.Task | None = None
        self.reconnect = reconnect
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        self.last_id: str | None = None
        self.subscriptions: dict[str, Any] = {topic: None for topic in topics}
        self.reconnects = 0
        self.last_error: Exception | None = None  # why the latest connection attempt failed
        # Why iteration ended (code and reason: 4401, a server-side disconnect,
        # close(), giving up); None while the client is live.
        self.closed_with: ConnectionClosed | None = None
        # Resume points: a subscription's ack (or reset) position, valid until
        # a message with an id arrives after it (then last_id is newer). Frames
        # arrive in hub order, so a count of ids seen tells which came last.
        self._ids_seen = 0
        self._positions: dict[str, tuple[str, int]] = {}
        self._subscribing: dict[int, str] = {}  # request id -> topic, for the ack's position
        self._messages: asyncio.Queue[Message | ConnectionClosed] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._transport = None
        self._closed = False
        self._finished = False  # the ConnectionClosed that ends iteration is queued
        self._connected = asyncio.Event()
        self._runner: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------
    async def __aenter__(self) -> "Client":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect and subscribe. When the first attempt fails the client keeps
        trying in the background (backoff) unless ``reconnect`` is off."""
        try:
            listener = await self._dial()
        except CONNECT_FAILURES as error:
            if not self.reconnect:
                raise ConnectionError(f"cannot connect to {self.url}: {error!r}") from error
            self._connect_failed(error, 1)
            listener = None
        self._runner = asyncio.ensure_future(self._run(listener))

    async def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.send_close(1000)
            self._transport.disconnect()
        if self._runner is not None:
            await asyncio.wait([self._runner], timeout=5)
            if not self._runner.done():  # asleep in a backoff
                self._runner.cancel()
        self._finish(ConnectionClosed(1000, "client closed"))

    async def _dial(self) -> _Listener:
        """Connect, then (re)subscribe every subscription from its resume point.

        Raises one of CONNECT_FAILURES; a peer that closes before the handshake
        makes picows return no listener, which is a failure like any other.
        """
        if self.token_factory is not None:  # every connect gets a fresh token
            try:
                self.token = await self._fresh_token()
            except Exception as error:
                raise ConnectionError(f"token_factory failed: {error!r}") from error
        transport, listener = await ws_connect(lambda: _Listener(self), self._url(),
                                               enable_auto_pong=True)
        if transport is None or listener is None:
            if transport is not None:
                transport.disconnect()
            raise ConnectionError("the peer closed the connection before the WebSocket handshake")
        self._transport = transport
        self._connected.set()
        try:
            for topic, tag_filter in list(self.subscriptions.items()):
                try:
                    await self._subscribe(topic, tag_filter, since=self._resume_point(topic))
                except HubError as error:
                    log.warning("hubbub client: subscribe %r refused: %s", topic, error)
            # Unasked, this tells the hub that this client answers its
            # {"op":"ping"} (see _on_message): on the ASGI port, where the
            # hub cannot see protocol pongs, only such a client is dropped
            # when it freezes, and this way from its first second.
            self._send({"op": "pong"})
        except (ConnectionClosed, ConnectionError, asyncio.TimeoutError) as error:
            transport.disconnect()
            raise ConnectionError(f"connection lost while subscribing: {error!r}") from error
        return listener

    def _resume_point(self, topic: str) -> str | None:
        position = self._positions.get(topic)
        if position is not None and position[1] == self._ids_seen:
            return position[0]  # nothing arrived since the ack: its position is the newest
        return self.last_id

    def _url(self) -> str:
        """The URL with ``token=``: the ``token`` argument wins over one already in the URL
        (the hub refuses a parameter given twice)."""
        parts = urlsplit(self.url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if self.token:
            query = [(name, value) for name, value in query if name != "token"] + [("token", self.token)]
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))

    async def _run(self, listener: _Listener | None) -> None:
        # Whatever goes wrong in here ends iteration with the reason, rather
        # than leaving `async for` waiting on a task that died.
        try:
            await self._stay_connected(listener)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("hubbub client: connection loop failed")
            self._finish(ConnectionClosed(None, f"client failed: {error!r}"))

    async def _stay_connected(self, listener: _Listener | None) -> None:
        failures = 0 if listener is not None else 1
        while True:
            if listener is not None:
                if self.token_factory is not None:
                    self._refresher = asyncio.ensure_future(self._keep_refreshed())
                try:
                    await self._transport.wait_disconnected()
                finally:
                    if self._refresher is not None:
                        self._refresher.cancel()
                        self._refresher = None
                self._connected.clear()
                self._fail_pending(ConnectionError("connection lost"))
                code = listener.close_code
                again = reconnects_after(code, listener.close_reason, self.token_factory is not None)
                if self._closed or not self.reconnect or not again:
                    self._finish(ConnectionClosed(code, listener.close_reason))
                    return
                listener = None
            if self._closed:
                self._finish(ConnectionClosed(1000, "client closed"))
                return
            if self.max_retries is not None and failures > self.max_retries:
                self._finish(ConnectionClosed(None, f"gave up after {failures} failed connection"
                                                    f" attempts; last: {self.last_error!r}"))
                return
            delay = min(self.backoff_max, self.backoff_base * 2 ** max(failures - 1, 0))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter spreads a storm
            try:
                listener = await self._dial()
            except CONNECT_FAILURES as error:
                failures += 1
                self._connect_failed(error, failures)
                continue
            self.reconnects += 1
            failures = 0

    # -- token lifetime ----------------------------------------------------------
    async def _fresh_token(self) -> str:
        token = self.token_factory()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str) or not token:
            raise ValueError(f"token_factory returned {type(token).__name__}, not a JWT string")
        return token

    async def _keep_refreshed(self) -> None:
        """While connected: refresh at REFRESH_AT of each token's lifetime. A refusal
        or a failure is retried; if the token expires meanwhile the hub closes
        4401 and the reconnect (with a fresh token, from the last id) takes over."""
        given = time.time()
        exp = token_expiry(self.token)
        while exp is not None:
            await asyncio.sleep(max(0.0, given + (exp - given) * REFRESH_AT - time.time()))
            try:
                token = await self._fresh_token()
                await self._request({"op": "refresh", "token": token})
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("hubbub client: refresh failed, retrying: %r", error)
                given = time.time()  # the next try in REFRESH_RETRY seconds
                exp = given + REFRESH_RETRY / REFRESH_AT
                continue
            self.token = token  # a reconnect would use it, though it asks the factory anyway
            self.refreshes += 1
            given, exp = time.time(), token_expiry(token)

    def _connect_failed(self, error: Exception, failures: int) -> None:
        self.last_error = error
        log.warning("hubbub client: cannot connect to %s (attempt %d, retrying with backoff): %r",
                    self.url, failures, error)

    def _finish(self, closed: ConnectionClosed) -> None:
        """End iteration once: every later read sees ``closed``."""
        if not self._finished:
            self._finished = True
            self.closed_with = closed
            self._messages.put_nowait(closed)

    # -- operations --------------------------------------------------------------
    async def subscribe(self, topic: str, *, filter: Any = None) -> None:
        await self._subscribe(topic, filter)
        self.subscriptions[topic] = filter

    async def _subscribe(self, topic: str, tag_filter: Any, since: str | None = None) -> dict:
        request_id = next(self._ids)
        self._subscribing[request_id] = topic
        try:
            return await self._request({"op": "subscribe", "topic": topic, "filter": tag_filter,
                                        "since": since}, request_id)
        finally:
            self._subscribing.pop(request_id, None)

    async def unsubscribe(self, topic: str) -> None:
        await self._request({"op": "unsubscribe", "topic": topic})
        self.subscriptions.pop(topic, None)
        self._positions.pop(topic, None)

    async def publish(self, topic: str, data: Any, *, event: str | None = None,
                      ephemeral: bool = False) -> str | None:
        ack = await self._request({"op": "publish", "topic": topic, "data": data, "event": event,
                                   "ephemeral": ephemeral})
        return ack.get("event_id")

    async def presence(self, topic: str) -> dict:
        """Who is subscribed to ``topic`` now: ``{"topic", "count", "connections", "users"}``
        (``users``: ``[{user, info, connections}]``, left out past PRESENCE_MAX_LIST).
        Raises HubError (400, 403, 503) as the hub answers."""
        reply = await self._request({"op": "presence", "topic": topic})
        return {k: v for k, v in reply.items() if k not in ("op", "id")}

    async def ping(self) -> None:
        await self._request({"op": "ping"})

    def __aiter__(self) -> "Client":
        return self

    async def __anext__(self) -> Message:
        item = await self._messages.get()
        if isinstance(item, ConnectionClosed):
            self._messages.put_nowait(item)  # every later read ends too
            raise StopAsyncIteration
        return item

    async def next(self, timeout: float | None = None) -> Message:
        """The next message, or ConnectionClosed / TimeoutError."""
        item = await asyncio.wait_for(self._messages.get(), timeout)
        if isinstance(item, ConnectionClosed):
            self._messages.put_nowait(item)
            raise item
        return item

    # -- plumbing ------------------------------------------------------------------
    async def _request(self, msg: dict, request_id: int | None = None) -> dict:
        if self._closed:
            raise ConnectionClosed(1000, "client closed")
        await asyncio.wait_for(self._connected.wait(), self.request_timeout)
        if request_id is None:
            request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._send({**{k: v for k, v in msg.items() if v is not None}, "id": request_id})
        try:
            return await asyncio.wait_for(future, self.request_timeout)
        finally:
            self._pending.pop(request_id, None)

    def _send(self, msg: dict) -> None:
        self._transport.send(WSMsgType.TEXT, orjson.dumps({k: v for k, v in msg.items() if v is not None}))

    def _on_message(self, msg: dict) -> None:
        op = msg.get("op")
        if op == "message":
            if msg.get("id") is not None:
                self.last_id = msg["id"]
                self._ids_seen += 1
            self._messages.put_nowait(Message("message", msg.get("topic"), msg.get("id"), msg.get("event"),
                                              msg.get("data"), msg.get("ts"), msg))
        elif op in ("ack", "pong", "presence", "refreshed") and msg.get("id") in self._pending:
            topic = self._subscribing.get(msg["id"]) if op == "ack" else None
            if topic is not None and isinstance(msg.get("position"), str):
                self._positions[topic] = (msg["position"], self._ids_seen)
            future = self._pending[msg["id"]]
            if not future.done():
                future.set_result(msg)
        elif op == "error":
            future = self._pending.get(msg.get("id"))
            if future is not None and not future.done():
                future.set_exception(HubError(msg.get("code", 400), msg.get("reason", "")))
            else:
                log.warning("hub error: %s", msg)
        elif op == "ping":
            self._send({"op": "pong"})
        elif op in ("reset", "dropped", "join", "leave"):
            if op == "reset":
                self._reset(msg)
            self._messages.put_nowait(Message(op, msg.get("topic"), data=msg, raw=msg))
        elif op in INBOX_EVENTS:
            self._messages.put_nowait(Message(op, data=msg.get("data"), raw=msg))
        elif op == "unsubscribed":
            # The server API took the topic away: not renewed on a reconnect either.
            self.subscriptions.pop(msg.get("topic"), None)
            self._positions.pop(msg.get("topic"), None)
            self._messages.put_nowait(Message(op, msg.get("topic"), data=msg, raw=msg))

    def _reset(self, msg: dict) -> None:
        """The hub could not cover this subscription's gap; its ``position`` is
        where to resume from now. After Redis lost its data that is the start
        of a new epoch: ids before it are of another epoch and never compared
        with it, and resuming from one would only be answered with another
        reset, losing what was published meanwhile (docs/protocol.md)."""
        topic, position = msg.get("topic"), msg.get("position")
        if topic in self.subscriptions and isinstance(position, str):
            self._positions[topic] = (position, self._ids_seen)

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()


def token_expiry(token: str | None) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it (the hub verifies);
    None when it has none or the token cannot be read."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
    except Exception:
        return None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


def connect(url: str, **kwargs: Any) -> Client:
    """A client to use with ``async with``; see ``Client`` for the options."""
    return Client(url, **kwargs)

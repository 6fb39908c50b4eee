"""An asyncio client for Hubbub's WebSocket endpoint, on picows.

    async with hubbub.client.connect("ws://127.0.0.1:8001/ws", token=jwt,
                                     topics=["orders.*"]) as client:
        event_id = await client.publish("chat.room1", {"text": "hi"})
        async for message in client:
            print(message.topic, message.data)

The client reconnects by itself after a dropped connection (exponential
backoff with jitter) and resumes every subscription from the last event id it
saw, so the hub replays what was missed (or sends a ``reset``). It does not
reconnect after 4401 (a new token is needed) or after ``close()``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from picows import WSListener, WSMsgType, ws_connect

from .errors import HubError

log = logging.getLogger("hubbub.client")

NO_RECONNECT = {4401}


@dataclasses.dataclass(frozen=True)
class Message:
    """What the hub pushes: ``kind`` is ``message``, ``reset``, ``dropped``, ``join`` or ``leave``."""

    kind: str
    topic: str | None = None
    id: str | None = None
    event: str | None = None
    data: Any = None
    ts: int | None = None
    raw: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)


class ConnectionClosed(Exception):
    """The client is closed for good (``close()`` or a refusal such as 4401)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}): {reason}")
        self.code = code
        self.reason = reason


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
                 request_timeout: float = 10.0) -> None:
        self.url = url
        self.token = token
        self.reconnect = reconnect
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        self.last_id: str | None = None
        self.subscriptions: dict[str, Any] = {topic: None for topic in topics}
        self.reconnects = 0
        self._messages: asyncio.Queue[Message | ConnectionClosed] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._transport = None
        self._closed = False
        self._connected = asyncio.Event()
        self._runner: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------
    async def __aenter__(self) -> "Client":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        listener = await self._dial(resume=False)
        self._runner = asyncio.ensure_future(self._run(listener))

    async def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.send_close(1000)
            self._transport.disconnect()
        if self._runner is not None:
            await asyncio.wait([self._runner], timeout=5)

    async def _dial(self, resume: bool) -> _Listener:
        """Connect; the first time the topics ride in the query, on a reconnect
        every subscription is renewed from the last event id seen."""
        url = self._url(topics=[] if resume else list(self.subscriptions))
        transport, listener = await ws_connect(lambda: _Listener(self), url, enable_auto_pong=True)
        self._transport = transport
        self._connected.set()
        if resume:
            for topic, tag_filter in self.subscriptions.items():
                self._send({"op": "subscribe", "topic": topic, "filter": tag_filter,
                            "since": self.last_id})
        return listener

    def _url(self, topics: list[str]) -> str:
        parts = urlsplit(self.url)
        query = [("topic", topic) for topic in topics]
        if self.token:
            query.append(("token", self.token))
        extra = urlencode(query)
        merged = "&".join(q for q in (parts.query, extra) if q)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, merged, ""))

    async def _run(self, listener: _Listener) -> None:
        attempt = 0
        while True:
            await self._transport.wait_disconnected()
            self._connected.clear()
            self._fail_pending(ConnectionError("connection lost"))
            code = listener.close_code
            if self._closed or not self.reconnect or code in NO_RECONNECT:
                self._messages.put_nowait(ConnectionClosed(code, listener.close_reason))
                return
            while not self._closed:
                delay = min(self.backoff_max, self.backoff_base * 2 ** attempt)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter spreads a storm
                attempt += 1
                try:
                    listener = await self._dial(resume=True)
                except OSError as error:
                    log.info("reconnect failed: %s", error)
                    continue
                self.reconnects += 1
                attempt = 0
                break

    # -- operations --------------------------------------------------------------
    async def subscribe(self, topic: str, *, filter: Any = None) -> None:
        await self._request({"op": "subscribe", "topic": topic, "filter": filter})
        self.subscriptions[topic] = filter

    async def unsubscribe(self, topic: str) -> None:
        await self._request({"op": "unsubscribe", "topic": topic})
        self.subscriptions.pop(topic, None)

    async def publish(self, topic: str, data: Any, *, event: str | None = None,
                      ephemeral: bool = False) -> str | None:
        ack = await self._request({"op": "publish", "topic": topic, "data": data, "event": event,
                                   "ephemeral": ephemeral})
        return ack.get("event_id")

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
    async def _request(self, msg: dict) -> dict:
        if self._closed:
            raise ConnectionClosed(1000, "client closed")
        await asyncio.wait_for(self._connected.wait(), self.request_timeout)
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
            self._messages.put_nowait(Message("message", msg.get("topic"), msg.get("id"), msg.get("event"),
                                              msg.get("data"), msg.get("ts"), msg))
        elif op in ("ack", "pong", "presence") and msg.get("id") in self._pending:
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
            self._messages.put_nowait(Message(op, msg.get("topic"), data=msg, raw=msg))

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()


def connect(url: str, **kwargs: Any) -> Client:
    """A client to use with ``async with``; see ``Client`` for the options."""
    return Client(url, **kwargs)

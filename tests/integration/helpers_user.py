"""Shared by the inbox and presence tests: a secured hub's settings and readers
for what a user's connections receive on each transport."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import weakref

import httpx

from .tokens import API_KEY, AUDIENCE, SECRET

SECURED_ENV = {"HUBBUB_JWT_SECRET": SECRET, "HUBBUB_JWT_AUDIENCE": AUDIENCE, "HUBBUB_API_KEY": API_KEY,
               "HUBBUB_HEARTBEAT": "1"}
KEY = {"Authorization": f"Bearer {API_KEY}"}


def bearer(jwt: str) -> dict:
    return {"Authorization": f"Bearer {jwt}"}


def postgres_schema():
    """A context manager: a fresh schema on the real PostgreSQL, as a store URL; dropped after.

    Unreachable: a skip with the reason, or a failure under CI=true."""
    from tests.inbox.conftest import fresh_schema

    return fresh_schema("hubbub_it_")


class SSEReader:
    """Events of one SSE stream as (event, data) pairs, read in the background."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url
        self.events: asyncio.Queue = asyncio.Queue()
        self.status: int | None = None
        self._task: asyncio.Task | None = None
        self._opened = asyncio.Event()

    async def __aenter__(self) -> "SSEReader":
        self._task = asyncio.ensure_future(self._run())
        async with asyncio.timeout(5):
            await self._opened.wait()
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def _run(self) -> None:
        async with self.client.stream("GET", self.url) as response:
            self.status = response.status_code
            self._opened.set()
            event, data = "message", []
            async for line in response.aiter_lines():
                if line == "":
                    if data:
                        await self.events.put((event, json.loads("\n".join(data))))
                    event, data = "message", []
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])

    async def next(self, event: str | None = None, timeout: float = 5.0) -> tuple[str, object]:
        """The next event (of that name, skipping others)."""
        async with asyncio.timeout(timeout):
            while True:
                item = await self.events.get()
                if event is None or item[0] == event:
                    return item

    async def nothing_for(self, seconds: float, events=("notification", "notification_deleted",
                                                          "unread_count", "join", "leave")) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    item = await self.events.get()
                    assert item[0] not in events, f"unexpected {item}"


# Lines of a frame read but not yet handed out: one frame may batch several
# messages, and those after the one a call wanted belong to later calls.
_unread: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


async def ws_next(ws, op: str, timeout: float = 5.0) -> dict:
    """The next message with this op, skipping others (pings answered)."""
    pending = _unread.setdefault(ws, collections.deque())
    async with asyncio.timeout(timeout):
        while True:
            if not pending:
                pending.extend((await ws.recv()).split("\n"))
            message = json.loads(pending.popleft())
            if message.get("op") == "ping":
                await ws.send('{"op":"pong"}')
            if message.get("op") == op:
                return message


async def ws_quiet(ws, seconds: float, ops=("notification", "notification_deleted", "unread_count",
                                            "join", "leave")) -> None:
    """Nothing with these ops arrives for ``seconds``."""
    for line in _unread.pop(ws, ()):  # already read, not yet looked at
        assert json.loads(line).get("op") not in ops, f"unexpected {line}"
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                for line in (await ws.recv()).split("\n"):
                    message = json.loads(line)
                    assert message.get("op") not in ops, f"unexpected {message}"

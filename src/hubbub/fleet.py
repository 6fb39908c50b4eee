"""What the hub needs to act as one hub over a shared backplane (SPEC 13).

- ``encode``/``decode``: a prepared publication as the opaque bytes a broker
  carries between nodes. The memory broker never leaves the process, so it
  carries the ``Publication`` object itself and nothing is encoded.
- ``reset_all``: tell every live subscriber that it may have missed
  publications (the backplane lost data or this node fell too far behind),
  so no client is left with a silent hole.
- ``IdempotencyGuard``: ``POST /publish``'s Idempotency-Key across nodes.
- ``share_user_event`` / ``on_event``: per-user inbox events and presence
  join/leave between nodes, as fleet events (``broker.broadcast``, the
  broker's events channel): ``["user", user, event, payload]`` and
  ``["join"|"leave", topic, user, info]``. A node handles its own where it
  makes them and never hears them back.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from typing import TYPE_CHECKING

import orjson

from . import wire
from .connection import CLOSE_SHUTDOWN
from .errors import HubError

if TYPE_CHECKING:
    from .backplane import Broker
    from .hub import Hub, Publication

log = logging.getLogger("hubbub.fleet")


# -- the publication on the wire between nodes --------------------------------
# A JSON header line, then the data exactly as validated (already JSON): the
# data is neither parsed nor re-encoded on the way. orjson never writes a raw
# newline, so the first b"\n" ends the header.
def encode(pub: "Publication") -> bytes:
    head = orjson.dumps([pub.topic, pub.event, pub.priority, pub.key, pub.tags, pub.ts])
    return head + b"\n" + pub.data_json


def decode(payload: bytes, ephemeral: bool) -> "Publication":
    from .hub import Publication

    head, _, data_json = payload.partition(b"\n")
    topic, event, priority, key, tags, ts = orjson.loads(head)
    return Publication(topic, data_json, event, priority, key, tags, ephemeral, ts)


# -- a hole nobody can fill ---------------------------------------------------
def reset_all(hub: "Hub", reason: str) -> int:
    """Send every live subscription a ``reset`` (a poll is answered so it re-polls).

    Returns how many connections were told.
    """
    told = 0
    for conn in list(hub.connections.values()):
        patterns = list(conn.subscriptions)
        if not patterns:
            continue
        if conn.fmt == wire.WS:
            conn.send_control(*(wire.ws_op("reset", topic=p, reason=reason) for p in patterns))
        elif conn.fmt == wire.SSE:
            conn.send_control(wire.sse_event("reset", {"topics": patterns, "reason": reason},
                                             hub.last_event_id))
        else:  # a waiting poll: its next poll with since= gets the reset
            conn.close(CLOSE_SHUTDOWN, reason)
        told += 1
    return told


# -- Idempotency-Key across nodes ---------------------------------------------
PENDING = ["pending"]  # no real id list looks like this (ids are "epoch-seq" or null)
IN_FLIGHT_WAIT = 2.0  # seconds a retry waits for the first request with its key to finish
IN_FLIGHT_POLL = 0.05


class IdempotencyGuard:
    """Reserve the key before publishing, so two nodes never both publish.

    ``claim`` returns None when this request owns the key (publish, then
    ``settle`` with the ids or ``release`` on failure) or the ids stored by
    the request that did. A request that finds the key still reserved waits
    up to IN_FLIGHT_WAIT for the first one to settle, then gets 409.

    What remains: if a node dies between publishing and ``settle`` the key
    stays reserved until its TTL and retries get 409, never a second publish.
    """

    def __init__(self, broker: "Broker", ttl: float) -> None:
        self.broker = broker
        self.ttl = ttl

    async def claim(self, key: str) -> list | None:
        deadline = time.monotonic() + IN_FLIGHT_WAIT
        while True:
            kept = await self.broker.remember_idempotency(key, PENDING, self.ttl)
            if kept != PENDING:
                return kept
            if time.monotonic() >= deadline:
                raise HubError(409, "a request with this Idempotency-Key is still in progress")
            await asyncio.sleep(IN_FLIGHT_POLL)

    async def settle(self, key: str, ids: list) -> None:
        await self.broker.settle_idempotency(key, ids, self.ttl)

    async def release(self, key: str) -> None:
        try:
            await self.broker.release_idempotency(key)
        except HubError:
            pass  # unreachable: the reservation expires with its TTL


# -- events between nodes -------------------------------------------------------
def share_user_event(hub: "Hub", user: str, event: str, payload: Any) -> "asyncio.Task":
    """Send an inbox event to the user's connections on the other nodes.

    A task, started now: the inbox awaits it, so a user's events leave this
    node in the order they happened (``notification`` before its
    ``unread_count``); a failure is logged (the event is a live echo of what
    the store already holds, and the next connect brings the count).
    """
    return asyncio.ensure_future(_broadcast(hub.broker, ["user", user, event, payload]))


async def _broadcast(broker: "Broker", event: list) -> None:
    try:
        await broker.broadcast(event)
    except HubError as error:
        log.warning("fleet event %r for %r not sent: %s", event[2], event[1], error.reason)


def on_event(hub: "Hub", event: list) -> None:
    """The broker's ``on_event``: a fleet event another node sent."""
    kind = event[0]
    if kind == "user":
        _, user, name, payload = event
        hub.emit_here(user, name, payload)
    elif kind in ("join", "leave"):
        _, topic, user, info = event
        hub.presence.fleet_event(kind, topic, user, info)
    else:
        log.warning("unknown fleet event %r (a newer node?)", kind)

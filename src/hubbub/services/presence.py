"""Presence (SPEC 6, 10): who is subscribed to a topic right now.

An entry is (topic, user): the topic is the subscription pattern exactly as
the client gave it (a user subscribed to ``chat.room1`` is present in
``chat.room1``; one subscribed to ``chat.>`` is present in ``chat.>``). Many
connections (tabs) of one user are one entry with a connection count and the
``info`` of the token that joined first.

Who takes part:
- connections of an authenticated user, over WS and SSE;
- not anonymous connections (``--dev`` without a token): there is no one to
  show, so they neither appear nor count;
- not long-poll requests: each lives only while one poll waits, so a poll
  client would leave and join again on every request.

Join and leave events go only to connections that asked (WS subscribe
``presence: true``, SSE ``presence=1``) on that same pattern, and only when a
user's first connection joins or last one leaves; the connection whose
subscribe caused a join is not told of it (it asks with the ``presence`` op
or ``GET /presence/{topic}``). An entry goes away when the subscription does:
unsubscribe, close, or a dead peer closed by the transport's liveness pings,
which run often enough to take it out within PRESENCE_TTL (see
``Config.liveness_period``).

``PresenceStore`` is the replaceable part; ``Presence`` follows the hub
core's subscription hooks (``attach``) and owns the local watchers and
event delivery. Two stores:

- ``LocalPresence`` (BACKPLANE=memory): counts in this process, changed in
  the caller's own step; join/leave decided and sent at once.
- ``FleetPresence`` (a shared backplane): counts in the broker (Redis), per
  node, summed over the live nodes. A change is one round trip, made in a
  task (in order: the broker applies one node's changes one at a time), and
  the broker says whether it was the user's first connection in the whole
  fleet (join) or the last (leave). This node tells its own watchers; the
  other nodes hear the same event on the backplane and tell theirs
  (``fleet_event``). A node that dies without a goodbye is retired by a
  surviving node within PRESENCE_TTL, which announces the leave of each of
  its users present nowhere else (see ``backplane.redis_broker.REAP``).
"""
from __future__ import annotations

import abc
import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .. import wire

if TYPE_CHECKING:
    from ..backplane import Broker
    from ..core.connection import Connection
    from ..core.hub import HubCore

log = logging.getLogger("hubbub.presence")


class PresenceStore(abc.ABC):
    """Per topic, per user: connection count and info."""

    synchronous = True  # add/remove answer in the caller's step; else ``change`` (async)

    @abc.abstractmethod
    def add(self, topic: str, user: str, info: Any) -> bool:
        """One more connection of ``user`` in ``topic``; True when it is the first."""

    @abc.abstractmethod
    def remove(self, topic: str, user: str) -> Any:
        """One connection fewer; the entry's info when that was the last, else ``KEEP``."""

    @abc.abstractmethod
    async def members(self, topic: str, max_list: int) -> dict[str, Any]:
        """``{"users": [{user, info, connections}], "count", "connections"}``;
        without ``users`` when ``count`` is over ``max_list``."""


KEEP = object()  # ``remove``: the user still has connections in the topic


class LocalPresence(PresenceStore):
    """This process's presence: {topic: {user: [connections, info]}}."""

    def __init__(self) -> None:
        self.topics: dict[str, dict[str, list]] = {}

    def add(self, topic: str, user: str, info: Any) -> bool:
        users = self.topics.setdefault(topic, {})
        entry = users.get(user)
        if entry is None:
            users[user] = [1, info]
            return True
        entry[0] += 1
        return False

    def remove(self, topic: str, user: str) -> Any:
        users = self.topics.get(topic)
        entry = users.get(user) if users else None
        if entry is None:
            return KEEP
        entry[0] -= 1
        if entry[0] > 0:
            return KEEP
        del users[user]
        if not users:
            del self.topics[topic]
        return entry[1]

    async def members(self, topic: str, max_list: int) -> dict[str, Any]:
        users = self.topics.get(topic, {})
        answer: dict[str, Any] = {"count": len(users),
                                  "connections": sum(entry[0] for entry in users.values())}
        if len(users) <= max_list:
            answer["users"] = [{"user": user, "info": info, "connections": n}
                               for user, (n, info) in users.items()]
        return answer


class FleetPresence(PresenceStore):
    """Every node's presence, kept by the broker (see the module docstring)."""

    synchronous = False

    def __init__(self, broker: "Broker") -> None:
        self.broker = broker

    def add(self, topic: str, user: str, info: Any) -> bool:
        raise TypeError("FleetPresence changes through change()")

    def remove(self, topic: str, user: str) -> Any:
        raise TypeError("FleetPresence changes through change()")

    async def change(self, topic: str, user: str, info: Any, delta: int) -> tuple[str, Any] | None:
        """``("join"|"leave", info)`` when the fleet-wide count went from / to 0."""
        return await self.broker.presence_update(topic, user, info, delta)

    async def members(self, topic: str, max_list: int) -> dict[str, Any]:
        users = await self.broker.presence_list(topic)  # 503 while the backplane is down
        answer: dict[str, Any] = {"count": len(users),
                                  "connections": sum(e["connections"] for e in users.values())}
        if len(users) <= max_list:
            answer["users"] = [{"user": user, "info": e["info"], "connections": e["connections"]}
                               for user, e in users.items()]
        return answer


class Presence:
    """Follows subscriptions (the core's hooks) and tells watchers of joins and leaves."""

    def __init__(self, store: PresenceStore | None = None, max_list: int = 1000) -> None:
        self.store = store or LocalPresence()
        self.max_list = max_list
        # topic -> connections that asked for join/leave events on it
        self.watchers: dict[str, set[Connection]] = {}
        self._changing: set[asyncio.Task] = set()  # FleetPresence changes not yet applied

    @classmethod
    def for_broker(cls, broker: "Broker", max_list: int = 1000) -> "Presence":
        """Local presence alone; fleet-wide presence over a shared backplane."""
        return cls(LocalPresence() if broker.synchronous else FleetPresence(broker), max_list)

    def attach(self, core: "HubCore") -> None:
        """Follow ``core``'s subscriptions from now on."""
        core.on_subscribed.append(self.subscribed)
        core.on_unsubscribed.append(self.unsubscribed)
        core.on_signed_in.append(self.signed_in)

    @staticmethod
    def takes_part(conn: "Connection") -> bool:
        return conn.principal.user is not None and conn.fmt != wire.POLL

    def subscribed(self, conn: "Connection", topic: str, watch: bool, new: bool) -> None:
        """``conn`` subscribed to ``topic`` (``new``: not a re-subscribe of the same pattern)."""
        if watch:
            self.watchers.setdefault(topic, set()).add(conn)
        else:
            self._unwatch(conn, topic)
        if new and self.takes_part(conn):
            user = conn.principal.user
            if not self.store.synchronous:
                self._change_later(conn, topic, user, conn.principal.info, 1)
            elif self.store.add(topic, user, conn.principal.info):
                self._announce("join", topic, user, conn.principal.info, skip=conn)

    def signed_in(self, conn: "Connection") -> None:
        """An anonymous connection became a user's: it joins where it is subscribed
        (anonymous connections take no part), watching what it watched."""
        for topic in conn.subscriptions:
            self.subscribed(conn, topic, conn in self.watchers.get(topic, ()), new=True)

    def unsubscribed(self, conn: "Connection", topic: str) -> None:
        self._unwatch(conn, topic)
        if self.takes_part(conn):
            user = conn.principal.user
            if not self.store.synchronous:
                self._change_later(conn, topic, user, None, -1)
                return
            info = self.store.remove(topic, user)
            if info is not KEEP:
                self._announce("leave", topic, user, info)

    # -- fleet-wide presence ----------------------------------------------------
    def _change_later(self, conn: "Connection", topic: str, user: str, info: Any, delta: int) -> None:
        task = asyncio.ensure_future(self._change(conn, topic, user, info, delta))
        self._changing.add(task)
        task.add_done_callback(self._changing.discard)

    async def _change(self, conn: "Connection", topic: str, user: str, info: Any, delta: int) -> None:
        try:
            changed = await self.store.change(topic, user, info, delta)
        except Exception:  # the count is the broker's to keep; an event lost is logged
            log.exception("presence change of %r in %r failed", user, topic)
            return
        if changed is not None:
            event, event_info = changed
            self._announce(event, topic, user, event_info, skip=conn if event == "join" else None)

    def fleet_event(self, event: str, topic: str, user: str, info: Any) -> None:
        """A join or leave another node announced (or one a dead node's reaper did)."""
        self._announce(event, topic, user, info)

    async def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the changes still on their way to the broker."""
        if self._changing:
            await asyncio.wait(set(self._changing), timeout=timeout)

    async def members(self, topic: str) -> dict[str, Any]:
        return {"topic": topic, **await self.store.members(topic, self.max_list)}

    def _unwatch(self, conn: "Connection", topic: str) -> None:
        watching = self.watchers.get(topic)
        if watching is not None:
            watching.discard(conn)
            if not watching:
                del self.watchers[topic]

    def _announce(self, event: str, topic: str, user: str, info: Any,
                  skip: "Connection | None" = None) -> None:
        watching = self.watchers.get(topic)
        if not watching:
            return
        payload = {"topic": topic, "user": user, "info": info}
        frames = {}
        for conn in watching:
            if conn is skip:
                continue
            frame = frames.get(conn.fmt)
            if frame is None:
                frame = frames[conn.fmt] = wire.presence_event(conn.fmt, event, payload)
            conn.send_control(frame)

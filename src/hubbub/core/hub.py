"""The hub core: connections, subscriptions and the one publication path.

It knows no transport, service or endpoint. Transports make connections
(``connection``) and hand them in (``attach``); services follow what
happens through the hooks below; the app (``hubbub.app.Hub``) starts the
broker with ``receive``, ``on_gap`` and ``on_epoch_change`` and runs the
timers (``heartbeat``, ``recovery.history.expire``).

Hooks, plain lists of callables the services append to:

- ``on_subscribed(conn, pattern, presence, new)``: a subscription was made
  (``new``: not a re-subscribe of the same pattern; ``presence``: the
  connection asked for join/leave events of it);
- ``on_unsubscribed(conn, pattern)``: one went (unsubscribe, or detach);
- ``on_signed_in(conn)``: an anonymous connection became a user's;
- ``on_connected(conn)``: a connection is open and told so (SSE after
  ``connected``, WS after auth): the inbox sends its ``unread_count``.

Publishing: every publication goes through the broker (``submit``) and
comes back through ``receive``, this node's own included; ``_fan_out``
encodes it once per wire format, matches once (the trie caches per topic)
and hands the same frames to every matching outbox through the compiled
``fanout``. Writers of outboxes that went from idle to busy are woken once;
outboxes that overflowed under ``disconnect`` have their connection closed
(4408). Nothing here waits on any subscriber.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import wire
from .._core import Outbox, Subscription, Trie, fanout
from ..auth import may_subscribe
from ..errors import Forbidden, HubError
from ..filters import FilterError, compile_filter
from ..limits import PerKeyLimiter
from ..priority import Priority
from ..topics import requested_pattern
from .codec import Publication, decode, encode, prepare
from .connection import CLOSE_SHUTDOWN, CLOSE_SLOW, Connection, Transport
from .counters import Counters
from .expiry import Expiry
from .flusher import Flusher
from .freed_memory import FreedMemory
from .history import HISTORY_GAP
from .recovery import Recovery
from .registry import Registry
from .user_actions import UserActions

if TYPE_CHECKING:
    from ..auth import Principal
    from ..backplane import Broker
    from ..backplane.base import Reservation
    from ..config import Config

log = logging.getLogger("hubbub")

MATCH_CACHE_SIZE = 16384


class HubCore:
    def __init__(self, config: "Config", broker: "Broker") -> None:
        self.config = config
        self.broker = broker
        self.counters = Counters()
        self.registry = Registry(config.max_connections_per_user)
        self.connections = self.registry.connections
        self.flusher = Flusher(config.flush_delay / 1000)
        self.users = UserActions(self.registry, self.flusher, self.unsubscribe)  # a user's connections
        self.trie = Trie(MATCH_CACHE_SIZE)
        self.recovery = Recovery(config, broker, self.counters)
        self.freed = FreedMemory()  # backlogs let go of in bulk, given back to the OS
        self.connect_limiter = PerKeyLimiter(config.connect_rate)
        self.expiry = Expiry(config.jwt_leeway)  # ends connections whose token expired (SPEC 10)
        self.draining = False  # refuses new connections (the app's drain sets it)
        self.stopping = False  # refuses new publications
        self._fanout_seq = 0
        self.on_subscribed: list[Callable[[Connection, str, bool, bool], None]] = []
        self.on_unsubscribed: list[Callable[[Connection, str], None]] = []
        self.on_signed_in: list[Callable[[Connection], None]] = []
        self.on_connected: list[Callable[[Connection], None]] = []
        self._on_closed = self._closed  # bound once: every connection holds this one object
        if broker.synchronous:  # usable before start, as a hub always was
            broker.attach(self.receive)

    # -- connections -------------------------------------------------------------
    def connection(self, fmt: int, principal: "Principal", transport: Transport) -> Connection:
        """A new connection (not attached yet) with its bounded outbox."""
        config = self.config
        outbox = Outbox(config.queue_max_messages, config.queue_max_bytes,
                        config.slow_consumer_policy, wire.SEPARATORS[fmt])
        return Connection(fmt, principal, transport, outbox, self.flusher.schedule, self._on_closed)

    def admit(self, client_ip: str | None) -> None:
        """A new connection attempt from ``client_ip``; 429 past CONNECT_RATE."""
        if self.draining:
            raise HubError(503, "hub is shutting down")
        if not self.connect_limiter.allow(client_ip):
            raise HubError(429, "too many connection attempts from this address")

    def attach(self, conn: Connection) -> None:
        if self.draining:
            raise HubError(503, "hub is shutting down")
        self.registry.add(conn)
        self.expiry.track(conn)

    def connected(self, conn: Connection) -> None:
        """The transport told ``conn`` it is connected: run ``on_connected``."""
        for hook in self.on_connected:
            hook(conn)

    def _closed(self, conn: Connection, code: int | None) -> None:
        self.counters.closed(code, conn.port, conn.fmt)
        self.detach(conn)

    def detach(self, conn: Connection) -> None:
        if not self.registry.remove(conn):
            return
        for pattern, sub in conn.subscriptions.items():
            self.trie.unsubscribe(pattern, sub)
            self.registry.unsubscribed(pattern)
            for hook in self.on_unsubscribed:
                hook(conn, pattern)
        conn.subscriptions.clear()
        self.counters.dropped_closed += conn.outbox.dropped_total
        self.freed.add(conn.outbox.nbytes)
        conn.outbox.clear()  # a backlog is never owed once the connection closes: free it now

    def sign_in(self, conn: Connection, principal: "Principal") -> list[str]:
        """Make an attached dev-anonymous connection ``principal``'s (an ``auth``
        frame after an anonymous ``--dev`` handshake). Its subscriptions are
        kept where the new principal may have them; returns those dropped.
        Raises HubError 429 past the per-user cap (the connection stays as it was)."""
        if principal.user is not None:
            self.registry.check_cap(principal.user)  # before anything changes
        dropped = [p for p in conn.subscriptions if not may_subscribe(principal, p)]
        for pattern in dropped:
            self.unsubscribe(conn, pattern)
        self.registry.sign_in(conn, principal)
        for hook in self.on_signed_in:
            hook(conn)
        return dropped

    def subscribe(self, conn: Connection, pattern: Any, filter_spec: Any = None,
                  presence: bool = False) -> None:
        """Subscribe ``conn``; raises HubError (400, 403, 429) naming the problem.

        ``presence``: the connection gets join/leave events of this pattern."""
        pattern = requested_pattern(pattern)
        if type(pattern) is str:  # interned: a topic's many connections share one key (56+ B each)
            pattern = sys.intern(pattern)
        try:
            tag_filter = compile_filter(filter_spec)
        except FilterError as error:
            raise HubError(400, str(error)) from None
        if not may_subscribe(conn.principal, pattern):
            raise Forbidden(f"not allowed to subscribe to {pattern!r}")
        old = conn.subscriptions.get(pattern)
        limit = self.config.max_topics_per_connection
        if old is None and len(conn.subscriptions) >= limit:
            raise HubError(429, f"at most {limit} subscriptions per connection")
        if old is not None:
            self.trie.unsubscribe(pattern, old)
        else:
            self.registry.subscribed(pattern)
        sub = Subscription(conn.outbox, conn.fmt, pattern, tag_filter)
        self.trie.subscribe(pattern, sub)
        conn.subscriptions[pattern] = sub
        for hook in self.on_subscribed:
            hook(conn, pattern, presence, old is None)

    def unsubscribe(self, conn: Connection, pattern: Any) -> bool:
        """Drop a subscription; an invalid pattern is a 400 as for ``subscribe``."""
        pattern = requested_pattern(pattern)
        sub = conn.subscriptions.pop(pattern, None)
        if sub is None:
            return False
        self.trie.unsubscribe(pattern, sub)
        self.registry.unsubscribed(pattern)
        for hook in self.on_unsubscribed:
            hook(conn, pattern)
        return True

    def heartbeat(self) -> None:
        """One liveness round: each transport pings an idle peer its own way."""
        for conn in list(self.connections.values()):
            conn.heartbeat()
        self.expiry.sweep()  # a backstop: its own timer ends them on time
        self.freed.maybe_trim()

    def close_all(self, code: int, reason: str) -> None:
        self.flusher.run()  # writes held for coalescing go out before the close frames
        for conn in list(self.connections.values()):
            conn.close(code, reason)

    # -- publishing ---------------------------------------------------------------
    def prepare(self, topic: Any, data: Any, *, event: Any = "message", priority: Any = Priority.NORMAL,
                key: Any = None, tags: Any = None, ephemeral: Any = False) -> Publication:
        """Validate one publication; raises HubError 400 or 413 naming the problem."""
        return prepare(topic, data, max_bytes=self.config.max_message_bytes, event=event,
                       priority=priority, key=key, tags=tags, ephemeral=ephemeral)

    async def submit(self, pub: Publication) -> str | None:
        """Publish a prepared publication on any backplane; its event id.

        Raises HubError 503 when the backplane cannot take it (nothing published)."""
        if self.broker.synchronous:
            return self.publish_now(pub)
        if self.stopping:
            raise HubError(503, "hub is shutting down")
        numbered = await self.broker.publish(encode(pub), pub.ephemeral)
        self.counters.published += 1  # counted where accepted: workers' and nodes' counts add up
        return None if numbered is None else f"{numbered[0]}-{numbered[1]}"

    async def submit_all(self, pubs: list[Publication], deadline: float | None = None,
                         reservation: "Reservation | None" = None) -> list[str | None]:
        """Publish prepared publications all at once, or none; their event ids.

        Raises HubError 503 by ``deadline`` (time.monotonic()) when the
        backplane cannot take them: then none is ever delivered. With a
        ``reservation`` the broker stores the ids under its Idempotency-Key.
        """
        if self.stopping:
            raise HubError(503, "hub is shutting down")
        # The memory broker never leaves the process: it carries the Publication itself.
        items = [(pub if self.broker.synchronous else encode(pub), pub.ephemeral) for pub in pubs]
        numbered = await self.broker.publish_all(items, deadline, reservation)
        self.counters.published += len(pubs)
        return [None if n is None else f"{n[0]}-{n[1]}" for n in numbered]

    def publish_now(self, pub: Publication) -> str | None:
        """Publish in this step, no await (only with a synchronous broker: memory).

        The memory broker never leaves the process, so it carries the
        Publication itself: nothing is encoded or decoded.
        """
        if self.stopping:
            raise HubError(503, "hub is shutting down")
        numbered = self.broker.publish_now(pub, pub.ephemeral)
        self.counters.published += 1
        return None if numbered is None else f"{numbered[0]}-{numbered[1]}"

    def receive(self, seq: int | None, payload: Any) -> None:
        """The broker's ``on_publication``: one publication of the fleet, in seq order."""
        pub = payload if isinstance(payload, Publication) else decode(payload, seq is None)
        if seq is None:
            self._fan_out(pub, None)
            return
        self.recovery.delivered(seq)
        self._fan_out(pub, f"{self.broker.epoch}-{seq}", seq)

    def _fan_out(self, pub: Publication, event_id: str | None, seq: int = 0) -> None:
        # Draining refuses new publishes (submit), but publications still
        # reach the connections kept open through the drain grace.
        envelope = wire.envelope(pub.topic, event_id, pub.event, pub.data_json, pub.ts)
        counts = self.counters.topic_publications
        counts[pub.topic] = counts.get(pub.topic, 0) + 1
        frames = wire.frames(envelope, event_id, pub.event)
        if event_id is not None:
            self.recovery.keep(pub, seq, event_id, frames)
        subs = self.trie.match(pub.topic)
        if subs:
            self._fanout_seq += 1
            woken: list = []
            overflowed: list = []
            self.counters.delivered += fanout(subs, pub.tags, frames, pub.priority, pub.key,
                                              self._fanout_seq, woken, overflowed)
            if woken and self.flusher.woken_at is None:  # for the publish-to-write latency
                self.flusher.woken_at = time.perf_counter()
            self.flusher.wake_all(woken)
            for conn in overflowed:
                self.counters.disconnect_drops += conn.outbox.count + 1  # its backlog and the refused one
                conn.close(CLOSE_SLOW, "slow consumer")

    # -- what the backplane says about the id space ----------------------------------
    def on_gap(self, upto: int) -> None:
        """Publications up to ``upto`` that this node did not deliver never will be."""
        self.recovery.forget_upto(upto)
        if self.reset_all(HISTORY_GAP):  # at start there is nobody to tell yet
            log.warning("backplane: publications up to %s were lost to this node;"
                        " live subscribers were reset", upto)

    def on_epoch_change(self, epoch: str) -> None:
        """The backplane lost its data: old ids can no longer be resumed from."""
        self.recovery.new_epoch()
        self.reset_all(HISTORY_GAP)

    def reset_all(self, reason: str) -> int:
        """Tell every live subscription that it may have missed publications, so no
        client is left with a silent hole (a waiting poll is answered: its next
        poll with since= gets the reset). Returns how many connections were told."""
        told = 0
        for conn in list(self.connections.values()):
            patterns = list(conn.subscriptions)
            if not patterns:
                continue
            if conn.fmt == wire.POLL:
                conn.close(CLOSE_SHUTDOWN, reason)
            else:
                conn.send_control(*wire.reset(conn.fmt, patterns, reason, self.recovery.last_event_id))
            told += 1
        return told

    # -- introspection --------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        conns = self.connections.values()
        counters = self.counters
        return {
            "connections": len(self.connections),
            "subscriptions": len(self.trie),
            "published": counters.published,
            "delivered": counters.delivered,
            "dropped": counters.dropped_closed + sum(c.outbox.dropped_total for c in conns),
            "queued": sum(c.outbox.count for c in conns),
            "draining": self.draining,
        }

"""The hub: connection registry, subscriptions and the publication path.

Also the per-user side (issue 11): an index of each user's connections, so
inbox events (``notification``, ``notification_deleted``, ``unread_count``)
reach every open tab of that user without it subscribing to anything
(``emit``); the notification ``Inbox`` it owns and starts and stops with
itself (``notify``); and ``presence`` (see ``presence.py``).

``publish`` validates once, encodes once per wire format, matches once (the
trie caches per topic) and hands the same frames to every matching outbox
through the compiled ``fanout``. Writers of outboxes that went from idle to
busy are woken once; outboxes that overflowed under ``disconnect`` have
their connection closed (4408). Nothing here waits on any subscriber.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson

from . import fleet, wire
from ._core import Subscription, Trie, fanout
from .auth import AuthenticateHook, Authenticator, Principal, may_publish, may_subscribe
from .backplane import broker_for
from .config import Config
from .connection import CLOSE_SHUTDOWN, CLOSE_SLOW, Connection
from .errors import Forbidden, HubError
from .filters import FilterError, compile_filter, validate_tags
from .flusher import Flusher
from .history import HISTORY_GAP, Gap, History, Kept
from .limits import PerKeyLimiter
from .memory import FreedMemory
from .presence import Presence
from .priority import Priority
from .telemetry import Telemetry
from .topics import TopicError, validate_pattern, validate_topic

if TYPE_CHECKING:
    from .inbox import Inbox, NotificationEndpoints
    from .transports.native import NativeServer

log = logging.getLogger("hubbub")

MATCH_CACHE_SIZE = 16384
MAX_SEQ_DIGITS = 19  # a sequence fits in 63 bits
INBOX_RETRY_MAX = 30.0  # seconds between attempts to open a store that failed at start
# How long a resume waits for this node to deliver an id it has not seen yet
# (the client reached it before the publication did; see ``caught_up``).
FUTURE_ID_WAIT = 1.0


class Publication:
    """A validated publication, its data already JSON-encoded."""

    __slots__ = ("topic", "data_json", "event", "priority", "key", "tags", "ephemeral", "ts")

    def __init__(self, topic: str, data_json: bytes, event: str, priority: int,
                 key: str | None, tags: dict | None, ephemeral: bool, ts: int | None = None) -> None:
        self.topic = topic
        self.data_json = data_json
        self.event = event
        self.priority = priority
        self.key = key
        self.tags = tags
        self.ephemeral = ephemeral
        # Milliseconds since the epoch, taken once where it was published, so
        # every node delivers the same envelope and ages its history alike.
        self.ts = int(time.time() * 1000) if ts is None else ts


class Hub:
    def __init__(self, config: Config | None = None, *,
                 authenticate: AuthenticateHook | None = None) -> None:
        self.config = config or Config.from_env()
        self.auth = Authenticator(self.config, authenticate)
        self.trie = Trie(MATCH_CACHE_SIZE)
        self.connections: dict[str, Connection] = {}
        self.users: Counter[str] = Counter()
        self.user_conns: dict[str, set[Connection]] = {}  # user -> its live connections
        # The inbox opens at start; until its store answers, /notifications is a 503.
        self.inbox: Inbox | None = None
        self.notifications: NotificationEndpoints | None = None
        self.inbox_error = "not started"
        self._inbox_opener: asyncio.Task | None = None
        self._greeters: set[asyncio.Task] = set()
        # -- the backplane (SPEC 13): every publication goes through the broker
        # and comes back through _receive, this node's own included.
        self.broker = broker_for(self.config)
        if self.broker.synchronous:  # usable before start, as a hub always was
            self.broker.attach(self._receive)
        self.presence = Presence.for_broker(self.broker, max_list=self.config.presence_max_list)
        self._event_seq = 0  # the newest seq delivered here
        self._catching_up: list[tuple[int, asyncio.Future]] = []  # resumes waiting for a seq
        self._starting: asyncio.Future | None = None
        self._fanout_seq = 0
        self.started = False
        self.draining = False
        self.published = 0
        self.delivered = 0
        self.dropped_closed = 0  # drops counted on connections already gone
        self._servers: list[NativeServer] = []
        self._stopping: asyncio.Future | None = None
        self.history = History(self.config.history_size, self.config.history_ttl)
        self.connect_limiter = PerKeyLimiter(self.config.connect_rate)
        self._expiry: asyncio.Task | None = None
        self._heartbeat: asyncio.Task | None = None
        self.flusher = Flusher(self.config.flush_delay / 1000)
        self.freed = FreedMemory()  # backlogs let go of in bulk, given back to the OS (memory.py)
        # Metrics (telemetry.py): publications per topic since the last
        # one-second sample, for the dashboard's busiest topics.
        self.topic_publications: dict[str, int] = {}
        self.telemetry = Telemetry(self)

    @classmethod
    def from_env(cls, **overrides: Any) -> "Hub":
        return cls(Config.from_env(**overrides))

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Idempotent; a hub that was stopped stays stopped (draining).

        Raises BackplaneUnavailable (503) when the backplane cannot be
        reached: a node does not start as a hub of its own.
        """
        if self.started or self.draining:
            return
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        try:
            await asyncio.shield(self._starting)
        except BaseException:
            if self._starting.done():
                self._starting = None  # a failed start may be tried again
            raise

    async def _start(self) -> None:
        # A node that starts late fills its history from the backplane's
        # stream (as many as it keeps), so it can serve recovery for what was
        # published before it started; coverage begins at the first one.
        await self.broker.start(self._receive, backfill=getattr(self.broker, "stream_length", 0),
                                on_epoch_change=self._on_epoch_change, on_gap=self._on_gap,
                                on_event=lambda event: fleet.on_event(self, event))
        self.started = True
        self._expiry = asyncio.ensure_future(self._expire_history())
        self._heartbeat = asyncio.ensure_future(self._heartbeats())
        self.telemetry.start()
        if not await self._open_inbox():
            self._inbox_opener = asyncio.ensure_future(self._keep_opening_inbox())
        if self.config.dev:
            log.warning("hubbub is in dev mode: anonymous clients may subscribe and publish to"
                        " anything, and the publish API needs no key from loopback")

    async def stop(self, timeout: float | None = None) -> None:
        """Drain: refuse new work, close every connection (WS 1001, SSE end), wait for them.

        Concurrent or repeated calls share the one drain.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._drain(timeout))
        await asyncio.shield(self._stopping)

    async def _drain(self, timeout: float | None) -> None:
        self.draining = True
        self.flusher.run()  # writes held for coalescing go out before the close frames
        for conn in list(self.connections.values()):
            conn.close(CLOSE_SHUTDOWN, "hub shutting down")
        deadline = time.monotonic() + (self.config.drain_timeout if timeout is None else timeout)
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for server in self._servers:
            await server.close()
        self._servers.clear()
        for task in (self._expiry, self._heartbeat, self._inbox_opener, *self._greeters):
            if task is not None:
                task.cancel()
        self.flusher.cancel()
        self.telemetry.stop()
        inbox, self.inbox, self.notifications = self.inbox, None, None
        if inbox is not None:
            await inbox.stop()
        starting = self._starting
        if starting is not None and starting.done() and not starting.cancelled() \
                and starting.exception() is None:
            await self.presence.settle(1.0)  # the closed connections' leaves, before the broker goes
            await self.broker.stop()
        self.started = False

    async def _open_inbox(self) -> bool:
        """Open the notification store; False (logged) when it cannot be opened.

        A store that is down does not keep the hub from serving publications:
        /notifications answers 503 while the hub keeps trying."""
        from .inbox import Inbox, NotificationEndpoints

        try:
            inbox = Inbox.from_config(self.config, emit=self.emit)
            await inbox.start()
        except Exception as error:
            self.inbox_error = str(getattr(error, "reason", None) or error)
            log.warning("notification store unavailable: %s; /notifications answers 503 until it"
                        " opens", self.inbox_error)
            return False
        self.inbox = inbox
        self.notifications = NotificationEndpoints(inbox, self.auth)
        return True

    async def _keep_opening_inbox(self) -> None:
        delay = 1.0
        while not await self._open_inbox():
            await asyncio.sleep(delay)
            delay = min(delay * 2, INBOX_RETRY_MAX)
        log.info("notification store open")

    async def _expire_history(self) -> None:
        # Topics that stop receiving publications are forgotten once their
        # last entry outlives the TTL, so history memory follows live topics.
        period = min(self.config.history_ttl, 60.0)
        while True:
            await asyncio.sleep(period)
            self.history.expire()

    async def _heartbeats(self) -> None:
        # One timer for every connection: each transport pings an idle peer
        # its own way (SSE comment, protocol ping on the fast port, app-level
        # WS ping on ASGI). Every liveness period (at most HEARTBEAT), so a
        # dead WS peer is closed, and leaves presence, within PRESENCE_TTL.
        while True:
            await asyncio.sleep(self.config.liveness_period)
            for conn in list(self.connections.values()):
                conn.heartbeat()
            self.freed.maybe_trim()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None):
        """For an embedding app's lifespan: ``Starlette(lifespan=hub.lifespan)``.

        Routers do not pass lifespan events to mounted apps; without this the
        hub starts on its first request and is not drained at shutdown.
        """
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def asgi(self):
        """The ASGI app serving every endpoint, to run alone or mount in a router."""
        from .cors import CorsMiddleware, CorsPolicy
        from .transports.asgi import HubApp

        return CorsMiddleware(HubApp(self), CorsPolicy.of(self.config))  # SPEC 1: origins

    async def listen(self, host: str = "127.0.0.1", port: int = 0, *, ssl=None,
                     reuse_port: bool = False) -> "NativeServer":
        """Start the native fast listener (``/ws`` and ``/sse``) on the running loop.

        ``reuse_port`` lets several worker processes share the port.
        """
        from .transports.native import NativeServer

        await self.start()
        server = NativeServer(self)
        await server.start(host, port, ssl=ssl, reuse_port=reuse_port)
        self._servers.append(server)
        return server

    # -- connections and subscriptions ---------------------------------------
    def admit(self, client_ip: str | None) -> None:
        """A new connection attempt from ``client_ip``; 429 past CONNECT_RATE."""
        if self.draining:
            raise HubError(503, "hub is shutting down")
        if not self.connect_limiter.allow(client_ip):
            raise HubError(429, "too many connection attempts from this address")

    def attach(self, conn: Connection) -> None:
        if self.draining:
            raise HubError(503, "hub is shutting down")
        user = conn.principal.user
        if user is not None:
            if self.users[user] >= self.config.max_connections_per_user:
                raise HubError(429, f"too many connections for user {user!r}")
            self.users[user] += 1
            self.user_conns.setdefault(user, set()).add(conn)
        self.connections[conn.id] = conn

    def detach(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is None:
            return
        for pattern, sub in conn.subscriptions.items():
            self.trie.unsubscribe(pattern, sub)
            self.presence.unsubscribed(conn, pattern)
        conn.subscriptions.clear()
        self.dropped_closed += conn.outbox.dropped_total
        self.freed.add(conn.outbox.nbytes)
        conn.outbox.clear()  # a backlog is never owed once the connection closes: free it now
        user = conn.principal.user
        if user is not None:
            self.users[user] -= 1
            if self.users[user] <= 0:
                del self.users[user]
            conns = self.user_conns.get(user)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self.user_conns[user]

    def reauthenticate(self, conn: Connection, principal: Principal) -> list[str]:
        """Make an attached dev-anonymous connection ``principal``'s (an ``auth``
        frame after an anonymous ``--dev`` handshake). Its subscriptions are
        kept where the new principal may have them; returns those dropped.
        Raises HubError 429 past the per-user cap (the connection stays as it was)."""
        user = principal.user
        if user is not None and self.users[user] >= self.config.max_connections_per_user:
            raise HubError(429, f"too many connections for user {user!r}")
        dropped = [p for p in conn.subscriptions if not may_subscribe(principal, p)]
        for pattern in dropped:
            self.unsubscribe(conn, pattern)
        watched = {p for p in conn.subscriptions if conn in self.presence.watchers.get(p, ())}
        conn.principal = principal
        if user is not None:
            self.users[user] += 1
            self.user_conns.setdefault(user, set()).add(conn)
        for pattern in conn.subscriptions:  # anonymous was in no presence: join now
            self.presence.subscribed(conn, pattern, pattern in watched, new=True)
        return dropped

    def subscribe(self, conn: Connection, pattern: Any, filter_spec: Any = None,
                  presence: bool = False) -> None:
        """Subscribe ``conn``; raises HubError (400, 403, 429) naming the problem.

        ``presence``: the connection gets join/leave events of this pattern."""
        try:
            pattern = validate_pattern(pattern)
            tag_filter = compile_filter(filter_spec)
        except (TopicError, FilterError) as error:
            raise HubError(400, str(error)) from None
        if not may_subscribe(conn.principal, pattern):
            raise Forbidden(f"not allowed to subscribe to {pattern!r}")
        old = conn.subscriptions.get(pattern)
        if old is None and len(conn.subscriptions) >= self.config.max_topics_per_connection:
            raise HubError(429, f"at most {self.config.max_topics_per_connection} subscriptions"
                                f" per connection")
        if old is not None:
            self.trie.unsubscribe(pattern, old)
        sub = Subscription(conn.outbox, conn.fmt, pattern, tag_filter)
        self.trie.subscribe(pattern, sub)
        conn.subscriptions[pattern] = sub
        self.presence.subscribed(conn, pattern, presence, new=old is None)

    def unsubscribe(self, conn: Connection, pattern: Any) -> bool:
        """Drop a subscription; an invalid pattern is a 400 as for ``subscribe``."""
        try:
            pattern = validate_pattern(pattern)
        except TopicError as error:
            raise HubError(400, str(error)) from None
        sub = conn.subscriptions.pop(pattern, None)
        if sub is None:
            return False
        self.trie.unsubscribe(pattern, sub)
        self.presence.unsubscribed(conn, pattern)
        return True

    # -- per-user events and the inbox ---------------------------------------
    def emit(self, user: str, event: str, payload: Any) -> "asyncio.Task | None":
        """Send an inbox event to every live connection of ``user`` (any port,
        any transport), encoded once per wire format; see ``wire.user_event``.

        Over a shared backplane the other nodes get it too: returns the task
        sending it (await it to keep one user's events in order), else None."""
        self.emit_here(user, event, payload)
        if self.broker.synchronous:
            return None
        return fleet.share_user_event(self, user, event, payload)

    def emit_here(self, user: str, event: str, payload: Any) -> None:
        """``emit`` to this node's connections of ``user`` only."""
        conns = self.user_conns.get(user)
        if not conns:
            return
        frames: dict[int, bytes] = {}
        for conn in list(conns):
            frame = frames.get(conn.fmt)
            if frame is None:
                frame = frames[conn.fmt] = wire.user_event(conn.fmt, event, payload)
            conn.send_control(frame)

    async def notify(self, user: str, title: str, message: str, *, level: str = "info",
                     priority: str = "normal", data: Any = None) -> dict[str, Any]:
        """Store a notification for ``user`` and deliver it live: the same
        validation (HubError 400/413) and events as ``POST /notifications``.
        Raises HubError 503 while the store is unavailable."""
        if self.inbox is None:
            raise HubError(503, f"notification store unavailable: {self.inbox_error}")
        return await self.inbox.notify(user, title, message, level=level, priority=priority, data=data)

    async def unread_count_or_none(self, user: str | None) -> int | None:
        """The user's unread count, or None (anonymous, or the store failed: logged)."""
        inbox = self.inbox
        if user is None or inbox is None:
            return None
        try:
            return await inbox.unread_count_in_order(user)
        except Exception as error:
            log.warning("unread_count for user %r unavailable: %s", user,
                        getattr(error, "reason", None) or error)
            return None

    def greet(self, conn: Connection) -> None:
        """On connect of a user (SSE after ``connected``, WS after auth): send
        ``unread_count``. In the background: a slow store never holds a connect."""
        if conn.principal.user is None or self.inbox is None:
            return
        task = asyncio.ensure_future(self._greet(conn))
        self._greeters.add(task)
        task.add_done_callback(self._greeters.discard)

    async def _greet(self, conn: Connection) -> None:
        count = await self.unread_count_or_none(conn.principal.user)
        if count is not None:
            conn.send_control(wire.user_event(conn.fmt, "unread_count", {"count": count}))

    # -- publishing -----------------------------------------------------------
    def prepare(self, topic: Any, data: Any, *, event: Any = "message", priority: Any = Priority.NORMAL,
                key: Any = None, tags: Any = None, ephemeral: Any = False) -> Publication:
        """Validate one publication; raises HubError 400 or 413 naming the problem."""
        try:
            topic = validate_topic(topic)
            tags = validate_tags(tags)
        except (TopicError, FilterError) as error:
            raise HubError(400, str(error)) from None
        if event is None:
            event = "message"
        if not isinstance(event, str) or not wire.EVENT_NAME.match(event):
            raise HubError(400, "event must be 1-64 characters of letters, digits, '_', '-', '.', ':'")
        try:
            priority = Priority.parse(priority)
        except ValueError as error:
            raise HubError(400, str(error)) from None
        if key is not None and not isinstance(key, str):
            raise HubError(400, "key must be a string")
        if not isinstance(ephemeral, bool):
            raise HubError(400, "ephemeral must be true or false")
        try:
            data_json = orjson.dumps(data)
        except TypeError as error:
            raise HubError(400, f"data is not JSON-serialisable: {error}") from None
        if len(data_json) > self.config.max_message_bytes:
            raise HubError(413, f"data is {len(data_json)} bytes, over the"
                                f" {self.config.max_message_bytes}-byte limit")
        return Publication(topic, data_json, event, int(priority), key, tags, ephemeral)

    async def publish(self, topic: str, data: Any, *, event: str = "message",
                      priority: Any = Priority.NORMAL, key: str | None = None,
                      tags: dict[str, str] | None = None, ephemeral: bool = False) -> str | None:
        """Publish from application code; returns the event id (None when ephemeral).

        Raises HubError 503 when the backplane cannot take it (nothing published).
        """
        pub = self.prepare(topic, data, event=event, priority=priority, key=key, tags=tags,
                           ephemeral=ephemeral)
        return await self.submit(pub)

    def client_publication(self, principal: Principal, msg: dict) -> Publication:
        """A WS client's publish op, validated and authorized (not yet published)."""
        topic = msg.get("topic")
        if isinstance(topic, str) and not may_publish(principal, topic):
            raise Forbidden(f"not allowed to publish to {topic!r}")
        if "data" not in msg:
            raise HubError(400, "publish needs 'data'")
        return self.prepare(topic, msg["data"], event=msg.get("event"),
                            ephemeral=msg.get("ephemeral", False))

    async def client_publish(self, principal: Principal, msg: dict) -> str | None:
        return await self.submit(self.client_publication(principal, msg))

    # -- the one publish path: hand to the broker, deliver what it gives back --
    async def submit(self, pub: Publication) -> str | None:
        """Publish a prepared publication on any backplane; its event id."""
        if self.broker.synchronous:
            return self.publish_now(pub)
        if self._stopping is not None:
            raise HubError(503, "hub is shutting down")
        await self.start()
        numbered = await self.broker.publish(fleet.encode(pub), pub.ephemeral)
        self.published += 1  # counted where accepted: workers' and nodes' counts add up
        return None if numbered is None else f"{numbered[0]}-{numbered[1]}"

    def publish_now(self, pub: Publication) -> str | None:
        """Publish in this step, no await (only with a synchronous broker: memory).

        The memory broker never leaves the process, so it carries the
        Publication itself: nothing is encoded or decoded.
        """
        if self._stopping is not None:
            raise HubError(503, "hub is shutting down")
        numbered = self.broker.publish_now(pub, pub.ephemeral)
        self.published += 1
        return None if numbered is None else f"{numbered[0]}-{numbered[1]}"

    def deliver(self, pub: Publication) -> str | None:
        """Kept for callers of the single-process API: ``publish_now``."""
        return self.publish_now(pub)

    @property
    def epoch(self) -> str:
        """The id space: the backplane's, shared by every node of the fleet."""
        return self.broker.epoch

    async def caught_up(self, event_id: Any, timeout: float = FUTURE_ID_WAIT) -> None:
        """Wait (at most ``timeout``) until this node delivered ``event_id``.

        A client may resume here with an id another node gave it before the
        publication reached this node (its publish ack, or a message read
        from a faster node). Resuming before it arrived would replay nothing
        and then deliver, live, publications the client already has; so the
        resume waits for delivery to catch up. An id still ahead after the
        wait is treated as covered (see ``parse_event_id``).
        """
        if self.broker.synchronous or not isinstance(event_id, str):
            return
        epoch, _, seq = event_id.rpartition("-")
        if epoch != self.epoch or not seq.isascii() or not seq.isdigit() or len(seq) > MAX_SEQ_DIGITS:
            return
        wanted = int(seq)
        if wanted <= self._event_seq:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._catching_up.append((wanted, waiter))
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            if not waiter.done():
                waiter.cancel()
            self._catching_up = [(s, w) for s, w in self._catching_up if not w.done()]

    def _receive(self, seq: int | None, payload: Any) -> None:
        """The broker's ``on_publication``: one publication of the fleet, in seq order."""
        pub = payload if isinstance(payload, Publication) else fleet.decode(payload, seq is None)
        event_id = None
        if seq is not None:
            self._event_seq = seq
            event_id = f"{self.broker.epoch}-{seq}"
        self._fan_out(pub, event_id, seq)
        if self._catching_up:
            for wanted, waiter in self._catching_up:
                if wanted <= self._event_seq and not waiter.done():
                    waiter.set_result(None)

    def _on_gap(self, upto: int) -> None:
        """Publications up to ``upto`` that this node did not deliver never will be."""
        self.history.forgotten_upto = max(self.history.forgotten_upto, upto)  # history_gap below it
        self._event_seq = max(self._event_seq, upto)
        if self.started and fleet.reset_all(self, HISTORY_GAP):  # at start there is nobody yet
            log.warning("backplane: publications up to %s were lost to this node;"
                        " live subscribers were reset", upto)

    def _on_epoch_change(self, epoch: str) -> None:
        """The backplane lost its data: old ids can no longer be resumed from."""
        self.history = History(self.config.history_size, self.config.history_ttl)
        self._event_seq = 0
        if self.started:
            fleet.reset_all(self, HISTORY_GAP)

    @property
    def last_event_id(self) -> str:
        """The id of the newest kept publication (or of none yet): a resume point for 'now'."""
        return f"{self.epoch}-{self._event_seq}"

    def parse_event_id(self, event_id: Any) -> int:
        """The sequence inside an id this hub gave out; Gap for any other id.

        An id from another epoch (this hub restarted without shared history),
        a malformed id or one from the future cannot be resumed from.
        """
        if not isinstance(event_id, str):
            raise Gap(HISTORY_GAP)
        epoch, _, seq = event_id.rpartition("-")
        # ASCII digits only, and no longer than any sequence this hub can
        # reach: str.isdigit() also accepts Unicode digits that int() rejects,
        # and a 5,000-digit number is no id of ours either.
        if (epoch != self.epoch or not seq or len(seq) > MAX_SEQ_DIGITS or not seq.isascii()
                or not seq.isdigit()):
            raise Gap(HISTORY_GAP)
        if int(seq) > self._event_seq:
            # From the future. Alone, no hub gave it out. In a fleet, another
            # node may have (the resume already waited in ``caught_up``):
            # it is covered, and replay has nothing after it yet.
            if self.broker.synchronous:
                raise Gap(HISTORY_GAP)
        return int(seq)

    def replay(self, conn: Connection, patterns: list[str], since: Any) -> list[Kept]:
        """Kept publications after ``since`` for these subscriptions of ``conn``.

        All or nothing: raises Gap when history does not cover ``since`` or the
        replay would exceed RECOVERY_MAX. Called in the same step as the
        subscribe, so no live publication can fall between replay and live.
        """
        try:
            seq = self.parse_event_id(since)
            subscriptions = [(p, conn.subscriptions[p].filter) for p in patterns if p in conn.subscriptions]
            kept = self.history.recover(subscriptions, seq, self.config.recovery_max)
        except Gap as gap:
            self.telemetry.reset(gap.reason)
            raise
        self.telemetry.replayed(len(kept))
        return kept

    def _fan_out(self, pub: Publication, event_id: str | None, seq: int | None) -> None:
        # Draining refuses new publishes (submit), but publications still
        # reach the connections kept open through the drain grace.
        envelope = wire.envelope(pub.topic, event_id, pub.event, pub.data_json, pub.ts)
        counts = self.topic_publications
        counts[pub.topic] = counts.get(pub.topic, 0) + 1
        frames = wire.frames(envelope, event_id, pub.event)
        if event_id is not None:
            # Aged from when it was published, so a backfilled entry expires
            # when it would have on the node that published it.
            expires = time.monotonic() + self.config.history_ttl - max(0.0, time.time() - pub.ts / 1000)
            self.history.append(pub.topic, Kept(seq, event_id, frames, pub.tags, expires))
        subs = self.trie.match(pub.topic)
        if subs:
            self._fanout_seq += 1
            woken: list = []
            overflowed: list = []
            self.delivered += fanout(subs, pub.tags, frames, pub.priority, pub.key,
                                     self._fanout_seq, woken, overflowed)
            if woken and self.flusher.woken_at is None:  # for the publish-to-write latency
                self.flusher.woken_at = time.perf_counter()
            for conn in woken:
                conn.wake()
            for conn in overflowed:
                self.telemetry.disconnect_drops += conn.outbox.count + 1  # its backlog and the refused one
                conn.close(CLOSE_SLOW, "slow consumer")

    # -- introspection --------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        conns = self.connections.values()
        return {
            "connections": len(self.connections),
            "subscriptions": len(self.trie),
            "published": self.published,
            "delivered": self.delivered,
            "dropped": self.dropped_closed + sum(c.outbox.dropped_total for c in conns),
            "queued": sum(c.outbox.count for c in conns),
            "draining": self.draining,
        }

"""The hub an application embeds: ``Hub`` assembles the layers and runs them.

It makes the broker (``backplane``), the core (``core.hub.HubCore``), the
services (presence, the notification inbox, telemetry, per-user events),
the endpoints (``endpoints.router.Router``) and, when asked, the transports
(``asgi()``, ``listen()``), wires each to the hooks of the layer below, and
owns the lifecycle: ``start``, the timers, the drain (``stop``) and the
``lifespan`` of an embedding app.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from . import signals
from .auth import AuthenticateHook, Authenticator
from .backplane import broker_for
from .config import Config
from .core.connection import CLOSE_SHUTDOWN, Connection, Transport
from .core.hub import HubCore
from .endpoints.health import HealthEndpoints
from .endpoints.notifications import NotificationsGate
from .endpoints.operations import OperationsEndpoints
from .endpoints.presence import PresenceEndpoint
from .endpoints.publish import PublishEndpoint
from .endpoints.router import Router
from .endpoints.server_api import (MAX_LIMIT, ServerAPI, disconnect_args, history_answer, history_topic,
                                   unsubscribe_args)
from .errors import HubError
from .priority import Priority
from .services.inbox import Inbox
from .services.inbox.unread import UnreadCounts
from .services.presence import Presence
from .services.telemetry import Telemetry
from .services.user_events import UserEvents
from .startup import checked, weak_secrets
from .transports.streams import Streams

if TYPE_CHECKING:
    from .auth import Principal
    from .transports.native import NativeServer

log = logging.getLogger("hubbub")

INBOX_RETRY_MAX = 30.0  # seconds between attempts to open a store that failed at start


class Hub:
    def __init__(self, config: Config | None = None, *,
                 authenticate: AuthenticateHook | None = None) -> None:
        config = self.config = config or checked(Config.from_env())
        auth = self.auth = Authenticator(config, authenticate)
        # -- the backplane (SPEC 13): every publication goes through the broker
        # and comes back through the core's receive, this node's own included.
        broker = self.broker = broker_for(config)
        core = self.core = HubCore(config, broker)
        # -- services, on the core's hooks
        self.presence = Presence.for_broker(broker, max_list=config.presence_max_list)
        self.presence.attach(core)
        self.telemetry = Telemetry(core, config, broker)
        self.user_events = UserEvents(core, broker, self.presence)
        self.unread = UnreadCounts()  # unread_count on connect, once the inbox is open
        core.on_connected.append(self.unread.greet)
        # The inbox opens at start; until its store answers, /notifications is a 503.
        self.inbox: Inbox | None = None
        self.notifications = NotificationsGate(auth)
        # -- endpoints, and what the transports share
        self.operations = OperationsEndpoints(config, auth, core, self.telemetry)
        self.server_api = ServerAPI(core, auth, self.user_events)
        self.router = Router(dev=config.dev, publish=PublishEndpoint(core, auth),
                             presence=PresenceEndpoint(auth, self.presence),
                             notifications=self.notifications, operations=self.operations,
                             # Ready once started, with the backplane up and the store open.
                             health=HealthEndpoints(core, lambda: self.started,
                                                    self.notifications.unavailable),
                             server_api=self.server_api)
        self.streams = Streams(config, core, auth, self.presence)
        # -- lifecycle
        self.started = False
        self._starting: asyncio.Future | None = None
        self._stopping: asyncio.Future | None = None
        self._servers: list[NativeServer] = []
        self._tasks: list[asyncio.Task] = []  # timers and the inbox opener

    @classmethod
    def from_env(cls, **overrides: Any) -> "Hub":
        """A hub configured by the HUBBUB_* environment (and ``overrides``).

        Raises ConfigError, naming what is missing, as ``hubbub serve`` refuses
        to start: no JWT secret or API key outside dev mode, or a backend whose
        package is not installed."""
        return cls(checked(Config.from_env(**overrides)))

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
        core = self.core
        await self.broker.start(core.receive, backfill=getattr(self.broker, "stream_length", 0),
                                on_epoch_change=core.on_epoch_change, on_gap=core.on_gap,
                                on_event=self.user_events.on_fleet_event)
        self.started = True
        signals.running(self)  # a SIGTERM drains it first (signals.py)
        self._tasks += [asyncio.ensure_future(self._expire_history()),
                        asyncio.ensure_future(self._heartbeats())]
        self.telemetry.start()
        if not await self._open_inbox():
            self._tasks.append(asyncio.ensure_future(self._keep_opening_inbox()))
        for warning in weak_secrets(self.config):
            log.warning("%s", warning)
        if self.config.dev:
            log.warning("hubbub is in dev mode: anonymous clients may subscribe and publish to"
                        " anything, and the publish API needs no key from loopback")

    async def stop(self, timeout: float | None = None) -> None:
        """Drain: refuse new work, close every connection (WS 1001, SSE end), wait for them.

        Concurrent or repeated calls share the one drain.
        """
        if self._stopping is None:
            self.core.stopping = True  # new publications are refused from now on
            self._stopping = asyncio.ensure_future(self._drain(timeout))
        await asyncio.shield(self._stopping)

    async def _drain(self, timeout: float | None) -> None:
        core = self.core
        core.draining = True
        core.close_all(CLOSE_SHUTDOWN, "hub shutting down")
        deadline = time.monotonic() + (self.config.drain_timeout if timeout is None else timeout)
        while core.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for server in self._servers:
            await server.close()
        self._servers.clear()
        for task in self._tasks:
            task.cancel()
        self.unread.cancel()
        core.flusher.cancel()
        self.telemetry.stop()
        inbox, self.inbox, self.unread.inbox = self.inbox, None, None
        self.notifications.close()
        if inbox is not None:
            await inbox.stop()
        starting = self._starting
        if starting is not None and starting.done() and not starting.cancelled() \
                and starting.exception() is None:
            await self.presence.settle(1.0)  # the closed connections' leaves, before the broker goes
            await self.broker.stop()
        self.started = False
        signals.stopped(self)

    async def _open_inbox(self) -> bool:
        """Open the notification store; False (logged) when it cannot be opened.

        A store that is down does not keep the hub from serving publications:
        /notifications (and /readyz) answer 503 while the hub keeps trying."""
        try:
            inbox = Inbox.from_config(self.config, emit=self.user_events.emit,
                                      observe=self.telemetry.observe_store)
            await inbox.start()
        except Exception as error:
            self.notifications.failed(error)
            log.warning("notification store unavailable: %s; /notifications and /readyz answer 503"
                        " until it opens", self.notifications.error)
            return False
        self.inbox = self.unread.inbox = inbox
        self.notifications.open(inbox)
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
            self.core.recovery.history.expire()

    async def _heartbeats(self) -> None:
        # One timer for every connection: each transport pings an idle peer
        # its own way (SSE comment, protocol ping on the fast port, app-level
        # WS ping on ASGI). Every liveness period (at most HEARTBEAT), so a
        # dead WS peer is closed, and leaves presence, within PRESENCE_TTL.
        while True:
            await asyncio.sleep(self.config.liveness_period)
            self.core.heartbeat()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None):
        """For an embedding app's lifespan: ``Starlette(lifespan=hub.lifespan)``.

        Routers do not pass lifespan events to mounted apps; without this the
        hub starts on its first request and is not drained at shutdown.

        The server's SIGTERM/SIGINT drain the hub before they stop the server
        (``signals.py``): servers stop serving before the lifespan shutdown,
        too late for connections that never end by themselves. A shutdown
        without a signal drains here, at the lifespan shutdown.
        """
        await self.start()
        signals.drain_first()
        try:
            yield
        finally:
            await self.stop()

    # -- transports -------------------------------------------------------------
    def asgi(self):
        """The ASGI app serving every endpoint, to run alone or mount in a router."""
        from .cors import CorsPolicy
        from .transports.asgi import HubApp
        from .transports.cors_middleware import CorsMiddleware

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

    # -- the application's API ------------------------------------------------------
    async def publish(self, topic: str, data: Any, *, event: str = "message",
                      priority: Any = Priority.NORMAL, key: str | None = None,
                      tags: dict[str, str] | None = None, ephemeral: bool = False) -> str | None:
        """Publish from application code; returns the event id (None when ephemeral).

        Raises HubError 400/413 for an invalid publication, 503 when the
        backplane cannot take it (nothing published).
        """
        pub = self.core.prepare(topic, data, event=event, priority=priority, key=key, tags=tags,
                                ephemeral=ephemeral)
        if not self.broker.synchronous and not self.core.stopping:
            await self.start()  # a shared backplane publishes only once connected
        return await self.core.submit(pub)

    async def notify(self, user: str, title: str, message: str, *, level: str = "info",
                     priority: str = "normal", data: Any = None) -> dict[str, Any]:
        """Store a notification for ``user`` and deliver it live: the same
        validation (HubError 400/413) and events as ``POST /notifications``.
        Raises HubError 503 while the store is unavailable."""
        if self.inbox is None:
            raise HubError(503, f"notification store unavailable: {self.notifications.error}")
        return await self.inbox.notify(user, title, message, level=level, priority=priority, data=data)

    async def disconnect(self, user: str, code: int = 4403, reason: str = "") -> int:
        """Close every connection of ``user`` on every node, as ``POST /disconnect``
        (WS close ``code``, SSE ``event: disconnect``, a waiting poll 410).
        Returns how many were closed on this node. HubError 400 for an invalid
        argument, 503 when the backplane cannot tell the other nodes."""
        user, code, reason = disconnect_args({"user": user, "code": code, "reason": reason})
        return await self.user_events.disconnect(user, code, reason)

    async def unsubscribe_user(self, user: str, topic: str) -> int:
        """Drop the subscription ``topic`` (the exact pattern subscribed) from every
        connection of ``user`` on every node, as ``POST /unsubscribe``; returns
        this node's count. (``unsubscribe`` is one connection's.)"""
        user, topic = unsubscribe_args({"user": user, "topic": topic})
        return await self.user_events.unsubscribe(user, topic)

    def history(self, topic: str, since: str | None = None, limit: int = 100) -> dict[str, Any]:
        """The kept publications of ``topic``, as ``GET /history/{topic}`` (the
        envelopes as dicts)."""
        if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
            raise HubError(400, f"'limit' must be an integer from 1 to {MAX_LIMIT}")
        return history_answer(self.core, history_topic(topic), since, limit, orjson.loads)

    async def topics(self, prefix: str = "") -> dict[str, int]:
        """Subscribed patterns of live connections (starting with ``prefix``) and
        how many connections hold each, as ``GET /topics``: this node's, or the
        fleet's with a backplane (HubError 503 while it cannot be read)."""
        return await self.broker.topic_counts(prefix)

    def stats(self) -> dict[str, Any]:
        return self.core.stats()

    @property
    def epoch(self) -> str:
        """The id space: the backplane's, shared by every node of the fleet."""
        return self.core.recovery.epoch

    @property
    def last_event_id(self) -> str:
        return self.core.recovery.last_event_id

    @property
    def draining(self) -> bool:
        return self.core.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        """Set first by a server's drain grace: /healthz 503, new subscribers 503,
        existing connections still served."""
        self.core.draining = value

    # -- connections, for code that carries its own (the core's API) ---------------------
    @property
    def connections(self) -> dict[str, Connection]:
        return self.core.connections

    def connection(self, fmt: int, principal: "Principal", transport: Transport) -> Connection:
        return self.core.connection(fmt, principal, transport)

    def attach(self, conn: Connection) -> None:
        self.core.attach(conn)

    def subscribe(self, conn: Connection, pattern: Any, filter_spec: Any = None,
                  presence: bool = False) -> None:
        self.core.subscribe(conn, pattern, filter_spec, presence)

    def unsubscribe(self, conn: Connection, pattern: Any) -> bool:
        return self.core.unsubscribe(conn, pattern)

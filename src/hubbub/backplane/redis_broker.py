"""The Redis broker (BACKPLANE=redis://...): every worker and node is one hub.

See the package docstring for the keys, the channel and the guarantees.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .base import (BackplaneUnavailable, Broker, NodePresence, OnEpochChange, OnEvent, OnGap,
                   OnPublication, Reservation, call_hub, stream_length_for)
from .redis_subscription import SubscriptionProtocol, open_subscription

log = logging.getLogger("hubbub.backplane")

FILL_BATCH = 1000  # stream entries read per XRANGE when catching up: bounds one read's memory
BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0


def current_epoch(candidate: str) -> str:
    """Lua setting ``epoch``: the current one; a missing epoch key means Redis lost
    its data, so a new id space (``candidate``, the argument holding it) starts
    with an empty seq and stream. KEYS: epoch, seq, stream."""
    return f"""
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = {candidate}
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
"""


# Past the deadline (ARGV[1] of each script below, Redis time in seconds) a
# script does nothing: the node that sent it has given up, or will before a
# reply could reach it, and answered 503. See "Deadlines" in the package docstring.
LATE = """
local t = redis.call('TIME')
if tonumber(t[1]) + tonumber(t[2]) / 1000000 > tonumber(ARGV[1]) then return 0 end
"""

# Append, number and announce a batch in one atomic step, so no two nodes hand
# out the same seq, no subscriber hears of a seq the stream does not hold yet,
# and a batch is published whole or not at all. With an Idempotency-Key
# (KEYS[4]) it publishes only while the key holds this request's reservation
# and replaces it with the ids in the same step: a retry replays them even if
# this reply is lost. Returns {epoch, seq or 0 (ephemeral), ...}; 0 when late,
# -1 when the reservation is gone.
# KEYS: epoch, seq, stream[, idempotency key]. ARGV: deadline, candidate epoch,
# MAXLEN, stream TTL, channel, reservation, ids TTL ms, then 'k' (kept) or 'e'
# (ephemeral) and the payload for each publication.
PUBLISH = LATE + """
if KEYS[4] and redis.call('GET', KEYS[4]) ~= ARGV[6] then return -1 end
""" + current_epoch("ARGV[2]") + """
local out, ids, kept = {epoch}, {}, false
for i = 8, #ARGV, 2 do
  if ARGV[i] == 'e' then
    redis.call('PUBLISH', ARGV[5], '-:0:' .. ARGV[i + 1])
    out[#out + 1] = 0
    ids[#ids + 1] = cjson.null
  else
    local seq = redis.call('INCR', KEYS[2])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'p', ARGV[i + 1])
    redis.call('PUBLISH', ARGV[5], epoch .. ':' .. seq .. ':' .. ARGV[i + 1])
    out[#out + 1] = seq
    ids[#ids + 1] = epoch .. '-' .. seq
    kept = true
  end
end
if kept then redis.call('EXPIRE', KEYS[3], ARGV[4]) end
if KEYS[4] then redis.call('SET', KEYS[4], cjson.encode(ids), 'PX', ARGV[7]) end
return out
"""

ENSURE_EPOCH = current_epoch("ARGV[1]") + """
return {epoch, tonumber(redis.call('GET', KEYS[2]) or '0')}
"""

# Reserve an Idempotency-Key for one request (ARGV[2], until it gives up: PX
# ARGV[3]), or return what the key holds: the ids published with it, or
# another request's reservation. 0 when late, 1 when reserved.
CLAIM = LATE + """
local kept = redis.call('GET', KEYS[1])
if kept then return kept end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

# Forget a reservation, only if the key still holds it (never another
# request's, never the ids a publish stored in its place).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# Server time, so nodes' clocks need not agree. Returns {fresh, seconds,
# microseconds}: fresh is 1 when this node was absent or already counted dead
# (its presence must be written again); the time measures the clock offset.
# A write, so it stalls wherever a publish would (CLIENT PAUSE WRITE included).
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local fresh = 0
if (not old) or tonumber(old) < now then fresh = 1 end
return {fresh, t[1], t[2]}
"""

# Read the topic's hash of every live node. Dead nodes are left in the zset
# for REAP, which must see them to announce their users' leaves.
PRESENCE_LIST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  local h = redis.call('HGETALL', ARGV[1] .. node .. ':' .. ARGV[2])
  if #h > 0 then out[#out + 1] = h end
end
return out
"""

# The nodes whose heartbeat has not run out, by Redis's clock (GET /topics
# reads their count snapshots, one command at a time outside any script).
# KEYS: nodes zset.
LIVE_NODES = """
local t = redis.call('TIME')
return redis.call('ZRANGEBYSCORE', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1000000, '+inf')
"""

# Write this node's count of (topic, user), then count the user's connections
# on the other live nodes: the fleet-wide count before and after the change.
# The first connection anywhere publishes the join, the last one anywhere the
# leave, inside the script: Redis runs scripts one at a time, so two nodes
# never both announce one join, and every node hears a user's joins and
# leaves in the order they happened.
# KEYS: nodes zset, this node's hash for the topic, this node's topic set.
# ARGV: node, hash key prefix, topic, user, entry ('' when none left here),
#       key ttl ms, this node's count before, after, events channel, message.
PRESENCE_UPDATE = """
if ARGV[5] == '' then
  redis.call('HDEL', KEYS[2], ARGV[4])
  if redis.call('HLEN', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[3]) end
else
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  redis.call('SADD', KEYS[3], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local others = 0
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  if node ~= ARGV[1] then
    local v = redis.call('HGET', ARGV[2] .. node .. ':' .. ARGV[3], ARGV[4])
    if v then others = others + tonumber(string.match(v, '^%[(%d+),')) end
  end
end
local before = others + tonumber(ARGV[7])
local after = others + tonumber(ARGV[8])
if before == 0 and after > 0 then
  redis.call('PUBLISH', ARGV[9], ARGV[10])
  return 1
end
if before > 0 and after == 0 then
  redis.call('PUBLISH', ARGV[9], ARGV[10])
  return -1
end
return 0
"""

# Retire the nodes whose heartbeat ran out (and ARGV[3], a node leaving on
# purpose): publish a leave for each of their users present on no live node,
# once per (topic, user), then delete their presence. Every node runs it
# periodically; the ZREM inside makes exactly one of them announce a death.
# An entry is JSON [count, info]: the info is spliced in as stored, so the
# leave carries the same JSON bytes the node wrote.
# KEYS: nodes zset. ARGV: key prefix, events channel, node to retire or ''.
REAP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
if ARGV[3] ~= '' then gone[#gone + 1] = ARGV[3] end
if #gone == 0 then return 0 end
for _, node in ipairs(gone) do redis.call('ZREM', KEYS[1], node) end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local hashes = ARGV[1] .. 'presence:'
local told = {}
for _, node in ipairs(gone) do
  local topics_key = ARGV[1] .. 'presence-topics:' .. node
  for _, topic in ipairs(redis.call('SMEMBERS', topics_key)) do
    local key = hashes .. node .. ':' .. topic
    local h = redis.call('HGETALL', key)
    for i = 1, #h, 2 do
      local user, v = h[i], h[i + 1]
      local id = cjson.encode({topic, user})
      if not told[id] then
        told[id] = true
        local present = false
        for _, other in ipairs(live) do
          if redis.call('HEXISTS', hashes .. other .. ':' .. topic, user) == 1 then
            present = true
            break
          end
        end
        if not present then
          local count = string.match(v, '^%[(%d+),')
          local info = string.sub(v, #count + 3, -2)
          redis.call('PUBLISH', ARGV[2], node .. '\\n["leave",' .. cjson.encode(topic) .. ','
                     .. cjson.encode(user) .. ',' .. info .. ']')
        end
      end
    end
    redis.call('DEL', key)
  end
  redis.call('DEL', topics_key)
end
return #gone
"""

_UNREACHABLE = (RedisError, OSError)  # asyncio's TimeoutError included: an OSError
_NO_ANSWER = (TimeoutError, RedisTimeoutError)  # a stall, rather than a refusal


# One script call carries at most this many callers' publications (or bytes):
# Redis runs a script alone, so a huge one would delay every other client.
BATCH_CALLS = 256
BATCH_BYTES = 1 << 20


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # looked at: no "exception was never retrieved" for a gone caller


_background: set[asyncio.Task] = set()  # referenced until done, so none is collected early


def in_background(awaitable) -> asyncio.Task:
    """Run ``awaitable`` on its own; what it raises is dropped (logged at debug)."""
    task = asyncio.ensure_future(awaitable)
    _background.add(task)
    task.add_done_callback(_forget)
    return task


def _forget(task: asyncio.Task) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.debug("backplane background task failed: %r", task.exception())


async def answered_by(awaitable, deadline: float) -> Any:
    """What ``awaitable`` returns, or TimeoutError at ``deadline`` (time.monotonic()).

    At the deadline itself: the command is cancelled and left to redis-py's
    clean-up in the background (closing the connection, handing it back to
    the pool), which may itself wait, so the caller's answer never does.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait((task,), timeout=max(0.0, deadline - time.monotonic()))
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        in_background(task)
        raise TimeoutError
    return task.result()


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def masked(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class RedisBroker(Broker):
    def __init__(self, url: str, *, prefix: str = "hubbub:", history_size: int = 1000,
                 history_ttl: float = 3600.0, presence_ttl: float = 30.0,
                 stream_length: int | None = None, timeout: float = 2.0,
                 pool_size: int = 32) -> None:
        self.url = url
        self.prefix = prefix
        self.epoch = ""
        # Measured, not assumed: healthy while the subscription is up and
        # caught up, and the last heartbeat was answered in time.
        self.healthy = False
        self._subscribed = False
        self._answering = False
        self.node = secrets.token_hex(8)
        self.stream_length = stream_length or stream_length_for(history_size)
        self.history_ttl = max(1, math.ceil(history_ttl))
        self.presence_ttl = presence_ttl
        # Every node looks for dead ones this often. A node counts as dead
        # this long before PRESENCE_TTL after its last heartbeat, so its
        # users' leaves go out within PRESENCE_TTL of its death.
        self.reap_every = min(presence_ttl / 6, 1.0)
        self._node_ttl = presence_ttl - self.reap_every
        # Presence hashes outlive their node's heartbeat (listings read live
        # nodes only), so the node that reaps a dead one still finds its users.
        self._presence_ttl_ms = max(1, int(presence_ttl * 2000))
        # The bound on every publish, from its call to its answer (pool, script,
        # reply), and on noticing a Redis that stopped answering (see _watch).
        self.timeout = timeout
        # The heartbeat is also the probe of Redis's health: every
        # `probe_every`, allowed timeout/2, so a stall is noticed within 3/4 of
        # the timeout; often enough too that one lost beat leaves the node live.
        self.probe_every = min(timeout / 4, presence_ttl / 3)
        self.clock_offset = 0.0  # Redis's clock minus time.monotonic(), from the last heartbeat
        self.clock_error = math.inf  # at most this far off: half the heartbeat's round trip
        self.channel = f"{prefix}publications"
        # Fleet events (presence join/leave, per-user inbox events): not
        # publications, so never numbered, kept or matched against topics,
        # and their own channel keeps the publication channel's format as is.
        self.events_channel = f"{prefix}events"
        self._epoch_key, self._seq_key, self._stream = (f"{prefix}epoch", f"{prefix}seq",
                                                        f"{prefix}stream")
        self._nodes_key = f"{prefix}nodes"
        self._epoch_keys = [self._epoch_key, self._seq_key, self._stream]
        self.reconnects = 0  # subscriptions re-established after a loss (for stats and tests)
        self._last = 0  # the newest seq handed to on_publication
        self._epoch_b = b""
        self._candidate = secrets.token_hex(4)  # the epoch to create if Redis lost its data
        # No retries inside redis-py: a publish retried after a lost reply could
        # run twice, and reconnecting is this class's job (with backoff).
        no_retry = Retry(NoBackoff(), 0)
        # Commands: a bounded pool. The callers bound each whole command (the
        # wait for a connection included) with their deadline; these timeouts
        # only back that up.
        self._redis = Redis.from_pool(BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=no_retry))
        # The heartbeat: a connection of its own, so that a full pool (a busy
        # node, not a stalled Redis) never makes it late.
        self._probe_redis = Redis.from_pool(ConnectionPool.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=no_retry))
        self._publish = self._redis.register_script(PUBLISH)
        self._ensure_epoch = self._redis.register_script(ENSURE_EPOCH)
        self._claim = self._redis.register_script(CLAIM)
        self._release = self._redis.register_script(RELEASE)
        self._heartbeat_script = self._probe_redis.register_script(HEARTBEAT)
        self._presence_list = self._redis.register_script(PRESENCE_LIST)
        self._presence_update = self._redis.register_script(PRESENCE_UPDATE)
        self._reap = self._redis.register_script(REAP)
        self._node_b = self.node.encode()
        self._events_channel_b = self.events_channel.encode()
        self._topics_key = f"{prefix}presence-topics:{self.node}"
        self._presence = NodePresence()
        self._presence_dirty = False
        self._presence_gone: set[str] = set()  # topics emptied here while Redis missed it
        self._presence_lock = asyncio.Lock()
        # The subscription: a connection of its own, read in batches (redis_subscription.py).
        self._subscription: SubscriptionProtocol | None = None
        self._filling: asyncio.Task | None = None  # a gap being filled from the stream
        # (items, deadline, answer) published this loop turn, sent together (publish_all).
        self._outgoing: list[tuple[list, float, asyncio.Future]] = []
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._on_publication: OnPublication | None = None
        self._on_epoch_change: OnEpochChange | None = None
        self._on_gap: OnGap | None = None
        self._on_event: OnEvent | None = None

    # -- lifecycle ------------------------------------------------------------
    async def start(self, on_publication: OnPublication, *, backfill: int = 0,
                    on_epoch_change: OnEpochChange | None = None,
                    on_gap: OnGap | None = None, on_event: OnEvent | None = None) -> None:
        """Connect, then deliver the newest ``backfill`` kept publications before returning.

        Raises BackplaneUnavailable when Redis cannot be reached: a node does
        not start as a hub of its own.
        """
        self._on_publication = on_publication
        self._on_epoch_change = on_epoch_change
        self._on_gap = on_gap
        self._on_event = on_event
        try:
            refusal = await self._cluster_refusal()
            if refusal is None:
                await self._heartbeat()  # measures the clock offset the deadlines need
                subscription = await self._connect(backfill=backfill)
        except _UNREACHABLE as error:
            await self._close_clients()
            raise BackplaneUnavailable(f"cannot reach the backplane at {masked(self.url)}:"
                                       f" {error or 'no answer in time'}") from None
        if refusal is not None:
            await self._close_clients()
            raise BackplaneUnavailable(refusal)
        self._subscribed = self._answering = True
        self._health_changed()
        self._tasks = [asyncio.ensure_future(self._subscriber(subscription)),
                       asyncio.ensure_future(self._watch()),
                       asyncio.ensure_future(self._presence_refresher()),
                       asyncio.ensure_future(self._reaper())]

    async def _cluster_refusal(self) -> str | None:
        """Why this Redis cannot be the backplane, when it is a Redis Cluster node.

        Each script keeps a publication's id, history and pub/sub message (or
        presence, or an idempotency key) together in one atomic step on one
        instance; Redis Cluster spreads those keys over shards and refuses
        such scripts (CROSSSLOT, MOVED, "hash slot not served"). Said at start,
        in those words, rather than as that error on every publish.
        """
        try:
            async with asyncio.timeout(self.timeout):
                info = await self._probe_redis.info("cluster")
        except ResponseError:  # INFO is not allowed to this user (ACL): nothing to learn
            return None
        if not info.get("cluster_enabled"):
            return None
        return (f"the backplane at {masked(self.url)} is a Redis Cluster node: the backplane needs"
                f" one standalone Redis (cluster-enabled no), whose scripts keep a publication's"
                f" id, history and message together on one instance. Redis Cluster is not supported.")

    async def stop(self) -> None:
        self._stopping = True
        pending = set(self._tasks)
        while pending:
            # Cancel again if need be: a cancel that lands inside a redis-py
            # command can come out as a connection error, which the loops
            # survive; they also stop on their own once they see _stopping.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        self._tasks = []
        self.healthy = False  # stopped, not unreachable: nothing to warn about
        try:  # leave presence now rather than after PRESENCE_TTL, announcing the leaves
            async with asyncio.timeout(self.timeout):
                await self._reap(keys=[self._nodes_key],
                                 args=[self.prefix, self.events_channel, self.node])
        except _UNREACHABLE:
            pass
        await self._close_clients()

    async def _close_clients(self) -> None:
        self._drop_subscription()
        await self._redis.aclose()
        await self._probe_redis.aclose()

    def _health_changed(self, reason: str = "") -> None:
        healthy = self._subscribed and self._answering and not self._stopping
        if healthy != self.healthy:
            self.healthy = healthy
            if healthy:
                log.info("backplane connected (%s, epoch %s)", masked(self.url), self.epoch)
            elif not self._stopping:
                log.warning("backplane unreachable (%s%s): publishes fail with 503 until it is back",
                            masked(self.url), f", {reason}" if reason else "")

    # -- publishing -----------------------------------------------------------
    async def publish(self, payload: bytes, ephemeral: bool = False,
                      deadline: float | None = None) -> tuple[str, int] | None:
        """Publish to every node; returns (epoch, seq), or None when ephemeral.

        See ``publish_all``: the same, for one publication.
        """
        return (await self.publish_all([(payload, ephemeral)], deadline))[0]

    async def publish_all(self, items: list[tuple[bytes, bool]], deadline: float | None = None,
                          reservation: Reservation | None = None) -> list[tuple[str, int] | None]:
        """Publish ``(payload, ephemeral)`` items, all in one atomic step; (epoch, seq) for
        each, None for an ephemeral one.

        Answers by ``deadline`` (time.monotonic(); default: ``timeout`` from
        now), counting everything: the wait for a pooled connection, the
        script and its reply. Returns only once Redis holds the
        publications; otherwise raises BackplaneUnavailable (503), and then
        none of them is ever delivered, whatever Redis does later: the
        script refuses to run past ``deadline - timeout/2`` (Redis's clock),
        see "Deadlines" in the package docstring for the one narrow window
        left. With a ``reservation`` the ids are stored under its
        Idempotency-Key in the same step, and only while the key holds it.

        Calls made in the same loop turn without a reservation share one
        script call (see ``_send_outgoing``): one round trip for all of them.
        """
        if not self.healthy:
            raise BackplaneUnavailable("backplane unavailable: Redis is unreachable")
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        if reservation is not None:  # its own script: the key goes with it
            return await self._publish_items(items, deadline, reservation)
        answer = asyncio.get_running_loop().create_future()
        answer.add_done_callback(_retrieved)  # a caller may have been cancelled meanwhile
        self._outgoing.append((items, deadline, answer))
        if len(self._outgoing) == 1:
            asyncio.get_running_loop().call_soon(self._send_outgoing)
        # Shielded: a cancelled caller must not cancel the others' publications.
        return await asyncio.shield(answer)

    def _send_outgoing(self) -> None:
        """Send what was published this loop turn, in order, as few script calls as
        the batch bounds allow; each caller's publications stay in one call, so
        each call is still all-or-none."""
        outgoing, self._outgoing = self._outgoing, []
        batch: list = []
        size = 0
        too_late = time.monotonic() + self.timeout / 2  # see _run: such a caller would refuse alone
        for entry in outgoing:
            if entry[1] <= too_late:  # its own 503, so the batch keeps the others' deadlines
                if not entry[2].done():
                    entry[2].set_exception(BackplaneUnavailable(
                        f"backplane unavailable: the publish could not be sent within"
                        f" {self.timeout / 2:g} s"))
                continue
            bytes_ = sum(len(payload) for payload, _ in entry[0])
            if batch and (len(batch) >= BATCH_CALLS or size + bytes_ > BATCH_BYTES):
                in_background(self._publish_batch(batch))
                batch, size = [], 0
            batch.append(entry)
            size += bytes_
        if batch:
            in_background(self._publish_batch(batch))

    async def _publish_batch(self, batch: list) -> None:
        """One script call for several callers; each gets its own ids, or the error.

        The script's deadline is the earliest caller's, so it answers every
        caller by its own deadline, and one that ran late did nothing for any."""
        items = [item for entry in batch for item in entry[0]]
        try:
            numbered = await self._publish_items(items, min(entry[1] for entry in batch))
        except BaseException as error:  # noqa: BLE001 - handed to every caller
            if isinstance(error, asyncio.CancelledError):  # the broker is stopping
                error = BackplaneUnavailable("backplane unavailable: the hub is stopping")
            for _, _, answer in batch:
                if not answer.done():
                    answer.set_exception(error)
            return
        start = 0
        for calls_items, _, answer in batch:
            if not answer.done():
                answer.set_result(numbered[start:start + len(calls_items)])
            start += len(calls_items)

    async def _publish_items(self, items: list[tuple[bytes, bool]], deadline: float,
                             reservation: Reservation | None = None) -> list[tuple[str, int] | None]:
        keys = self._epoch_keys
        held = ids_ttl = b""
        if reservation is not None:
            keys = [*keys, self._idempotency_key(reservation.key)]
            held, ids_ttl = orjson.dumps(reservation.marker), max(1, int(reservation.ttl * 1000))
        args = [self._script_deadline(deadline), self._candidate, self.stream_length,
                self.history_ttl, self.channel, held, ids_ttl]
        for payload, ephemeral in items:
            args += (b"e" if ephemeral else b"k", payload)
        result = await self._run(self._publish, keys, args, deadline, "the publish")
        if result == -1:
            raise BackplaneUnavailable("backplane unavailable: the Idempotency-Key reservation"
                                       " expired before the publish; nothing was published")
        epoch = self._epoch_seen(result[0])
        return [(epoch, seq) if seq else None for seq in result[1:]]

    # -- deadlines --------------------------------------------------------------
    def _script_deadline(self, deadline: float) -> bytes:
        """When, in Redis's clock, a script of a caller that gives up at
        ``deadline`` must stop doing anything: half the timeout before it.

        A script that ran by then has its reply read before ``deadline``
        unless the reply takes over timeout/2 - clock_error to come back (see
        "Deadlines" in the package docstring).
        """
        return b"%.6f" % (deadline - self.timeout / 2 + self.clock_offset)

    async def _run(self, script, keys: list, args: list, deadline: float, what: str) -> Any:
        """Run a script whose first argument is its deadline, answering by ``deadline``.

        Raises BackplaneUnavailable (503) if the script is late (then it did
        nothing), when Redis cannot be reached or does not answer in time.
        """
        if time.monotonic() >= deadline - self.timeout / 2:  # it would arrive late: don't send
            raise BackplaneUnavailable(f"backplane unavailable: {what} could not be sent within"
                                       f" {self.timeout / 2:g} s")
        try:
            result = await answered_by(script(keys=keys, args=args), deadline)
        except _NO_ANSWER:
            # The heartbeat notices too, within 3/4 of the timeout; this may be sooner.
            self._stalled(f"no answer to {what} within {self.timeout:g} s")
            raise BackplaneUnavailable(f"backplane unavailable: no answer from Redis to {what} in"
                                       f" time ({self.timeout:g} s); nothing was published") from None
        except _UNREACHABLE as error:
            raise BackplaneUnavailable(f"backplane unavailable: {error}") from None
        if result == 0:
            raise BackplaneUnavailable(f"backplane unavailable: Redis ran {what} after its"
                                       f" deadline, so it did nothing")
        return result

    # -- the subscription -----------------------------------------------------
    async def _connect(self, backfill: int | None = None) -> SubscriptionProtocol:
        """Subscribe, learn the epoch and catch up from the stream; the subscription, delivering.

        Subscribing before reading the stream means nothing published in
        between is missed: it is either in what we read or in what we hear
        (held meanwhile, reading paused), and what we hear twice is skipped by seq.
        """
        subscription = None
        try:
            # Bounded: a stalled Redis still accepts connections (the kernel
            # does), then answers nothing.
            async with asyncio.timeout(self.timeout):
                subscription = await open_subscription(self.url, [self.channel, self.events_channel],
                                                       self._message)
                subscription.hold()
                epoch, seq_now = await self._ensure_epoch(keys=self._epoch_keys,
                                                          args=[self._candidate])
            epoch = self._epoch_seen(epoch)
            if backfill is not None:  # first start: resume `backfill` publications back
                self.epoch, self._epoch_b = epoch, epoch.encode()
                self._last = max(seq_now - backfill, 0)
                if self._last:
                    self._gap(self._last)
            elif epoch != self.epoch:
                self._adopt(epoch)
            await self._fill(seq_now)
        except BaseException:
            if subscription is not None:
                subscription.close()
            raise
        self._subscription = subscription
        subscription.release()  # what was heard meanwhile, then live
        return subscription

    def _epoch_seen(self, epoch: bytes) -> str:
        epoch = epoch.decode()
        if epoch == self._candidate:  # it was created from it: the next loss needs a new one
            self._candidate = secrets.token_hex(4)
        return epoch

    async def _subscriber(self, subscription: SubscriptionProtocol | None) -> None:
        """Listen; on any failure go unhealthy and reconnect with backoff and jitter."""
        delay = BACKOFF_MIN
        while not self._stopping:
            if subscription is None:
                try:
                    subscription = await self._connect()
                except _UNREACHABLE as error:  # TimeoutError included: an OSError
                    log.debug("backplane reconnect failed: %s", error)
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, BACKOFF_MAX)
                    continue
                delay = BACKOFF_MIN
                self.reconnects += 1
                # Connections pooled before the outage are dead; drop the idle ones.
                await self._redis.connection_pool.disconnect(inuse_connections=False)
                await self._probe_redis.connection_pool.disconnect(inuse_connections=False)
                self._subscribed = True
                self._health_changed()
            # Messages are delivered from the protocol's own callback; this
            # task only waits for the connection to end.
            error = await subscription.closed
            log.debug("backplane subscription lost: %s", error)
            self._subscribed = False
            self._health_changed("subscription lost")
            self._drop_subscription()
            subscription = None
            await asyncio.sleep(random.uniform(0, BACKOFF_MIN))

    def _drop_subscription(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
            self._filling = None
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def _message(self, channel: bytes, data: bytes) -> None:
        """One pub/sub message, in the subscription's read callback."""
        if channel == self._events_channel_b:
            self._event(data)
            return
        try:
            epoch, seq, payload = data.split(b":", 2)
            seq = int(seq)
        except ValueError:  # not this hub's format: another writer on the channel
            log.error("backplane: ignored a malformed message on %s: %r", self.channel, data[:100])
            return
        if seq == 0:
            self._deliver(None, payload)
            return
        if epoch != self._epoch_b:  # Redis lost its data and a node started a new epoch
            self._adopt(epoch.decode())
        if seq <= self._last:  # already read from the stream while catching up
            return
        if seq > self._last + 1:
            # A hole in the channel's seqs. Not expected while subscribed (the
            # script publishes in seq order); kept as a safety net, tested by
            # writing to the stream behind the channel's back: fill from the
            # stream first; later messages wait, in order.
            self._subscription.hold()
            self._filling = in_background(self._fill_before(seq, payload))
            return
        self._last = seq
        self._deliver(seq, payload)

    async def _fill_before(self, seq: int, payload: bytes) -> None:
        """Deliver the kept publications before ``seq``, then it, then what was held."""
        subscription = self._subscription
        try:
            await self._fill(seq - 1)
        except Exception as error:  # noqa: BLE001 - whatever it was, the reconnect recovers
            # The reconnect catches up from the stream, this one included.
            log.debug("backplane: filling a gap failed: %r", error)
            if subscription is not None:
                subscription.close()
            return
        self._filling = None
        if seq > self._last:
            self._last = seq
            self._deliver(seq, payload)
        if subscription is not None and subscription is self._subscription:
            subscription.release()

    async def _fill(self, upto: int) -> None:
        """Deliver the kept publications after the last one delivered, up to ``upto``."""
        while self._last < upto:
            entries = await self._redis.xrange(self._stream, min=f"{self._last + 1}-0",
                                               max=f"{upto}-0", count=FILL_BATCH)
            if not entries:
                self._gap(upto)
                return
            for entry_id, fields in entries:
                seq = int(entry_id.split(b"-", 1)[0])
                if seq > self._last + 1:
                    self._gap(seq - 1)
                self._last = seq
                self._deliver(seq, fields[b"p"])

    def _event(self, data: bytes) -> None:
        """A fleet event: ``{node}\\n{JSON array}``; this node's own were handled where made."""
        node, _, body = data.partition(b"\n")
        if node == self._node_b or self._on_event is None:
            return
        try:
            self._on_event(orjson.loads(body))
        except Exception:  # a bad event or a bug in the hub must not stop the subscription
            log.exception("fleet event failed: %r", data[:200])

    async def broadcast(self, event: list) -> None:
        """Send ``event`` (a JSON-able list) to every other node's ``on_event``.

        Not kept anywhere: a node that is not subscribed at that moment never
        hears it. Raises BackplaneUnavailable (503) when Redis cannot take it.
        """
        if not self.healthy:
            raise BackplaneUnavailable("backplane unavailable: Redis is unreachable")
        try:
            async with asyncio.timeout(self.timeout):
                await self._redis.publish(self.events_channel,
                                          self._node_b + b"\n" + orjson.dumps(event))
        except _UNREACHABLE as error:
            raise BackplaneUnavailable(f"backplane unavailable: {error}") from None

    def _deliver(self, seq: int | None, payload: bytes) -> None:
        call_hub(self._on_publication, seq, payload)

    def _adopt(self, epoch: str) -> None:
        log.warning("backplane epoch changed %s -> %s: Redis lost its data", self.epoch, epoch)
        self.epoch, self._epoch_b = epoch, epoch.encode()
        self._last = 0
        if self._on_epoch_change is not None:
            call_hub(self._on_epoch_change, epoch)

    def _gap(self, upto: int) -> None:
        self._last = upto
        if self._on_gap is not None:
            call_hub(self._on_gap, upto)

    # -- idempotency ----------------------------------------------------------
    def _idempotency_key(self, key: str) -> str:
        return f"{self.prefix}idempotency:{key}"

    async def claim_idempotency(self, reservation: Reservation, deadline: float) -> Any:
        """Reserve the key for the request that gives up at ``deadline``; None when
        reserved, else what it holds: the ids a request with this key published
        (a list), or another request's reservation (a dict).

        The reservation lasts until ``deadline`` at most, so a request that
        could not release it (Redis unreachable) holds it no longer than it
        could still publish with it. A claim that reaches Redis late reserves
        nothing (BackplaneUnavailable).
        """
        if not self.healthy:
            raise BackplaneUnavailable("backplane unavailable: Redis is unreachable")
        lasts_ms = max(1, math.ceil((deadline - time.monotonic()) * 1000))
        kept = await self._run(self._claim, [self._idempotency_key(reservation.key)],
                               [self._script_deadline(deadline), orjson.dumps(reservation.marker),
                                lasts_ms], deadline, "the Idempotency-Key claim")
        return None if kept == 1 else orjson.loads(kept)

    async def release_idempotency(self, reservation: Reservation) -> None:
        """Forget the reservation if the key still holds it. Safe whenever it
        runs: a publish that comes later is past its deadline or finds the
        reservation gone, and ids a publish stored in its place are kept."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._release(keys=[self._idempotency_key(reservation.key)],
                                    args=[orjson.dumps(reservation.marker)])
        except _UNREACHABLE as error:
            raise BackplaneUnavailable(f"backplane unavailable: {error}") from None

    # -- presence -------------------------------------------------------------
    def _presence_key(self, topic: str) -> str:
        return f"{self.prefix}presence:{self.node}:{topic}"  # node first: topics may hold ':'

    async def presence_update(self, topic: str, user: str, info: Any,
                              delta: int) -> tuple[str, Any] | None:
        """Count ``delta`` connections of ``user`` on ``topic`` at this node.

        Returns ``("join", info)`` when that was the user's first connection
        in the whole fleet, ``("leave", info)`` when it was the last one, else
        None; the other nodes hear the same event on the events channel.
        Never raises for an outage: the local count is kept and written to
        Redis again by the next heartbeat that gets through, and the change
        is then announced to nobody (None).
        """
        users = self._presence.topics.get(topic)
        old = users.get(user) if users else None
        before, old_info = (old[0], old[1]) if old else (0, None)
        entry = self._presence.update(topic, user, info, delta)
        after = entry[0] if entry else 0
        if not self.healthy:
            self._presence_missed(topic)
            return None
        event = ("join", info) if after > before else ("leave", old_info)
        message = self._node_b + b"\n" + orjson.dumps([event[0], topic, user, event[1]])
        async with self._presence_lock:  # one writer: a resync never overwrites a newer update
            try:
                changed = await self._presence_update(
                    keys=[self._nodes_key, self._presence_key(topic), self._topics_key],
                    args=[self.node, f"{self.prefix}presence:", topic, user,
                          orjson.dumps(entry) if entry else b"", self._presence_ttl_ms,
                          before, after, self.events_channel, message])
            except _UNREACHABLE:
                self._presence_missed(topic)
                return None
        return event if changed else None

    def _presence_missed(self, topic: str) -> None:
        self._presence_dirty = True
        if topic not in self._presence.topics:
            self._presence_gone.add(topic)

    async def presence_list(self, topic: str) -> dict[str, dict[str, Any]]:
        """Users present on ``topic`` on every live node: {user: {"info", "connections"}}."""
        if not self.healthy:
            raise BackplaneUnavailable("backplane unavailable: Redis is unreachable")
        try:
            async with asyncio.timeout(self.timeout):
                hashes = await self._presence_list(keys=[self._nodes_key],
                                                   args=[f"{self.prefix}presence:", topic])
        except _UNREACHABLE as error:
            raise BackplaneUnavailable(f"backplane unavailable: {error}") from None
        users: dict[str, dict[str, Any]] = {}
        for flat in hashes:
            for i in range(0, len(flat), 2):
                count, info = orjson.loads(flat[i + 1])
                seen = users.setdefault(flat[i].decode(), {"info": None, "connections": 0})
                seen["connections"] += count
                if seen["info"] is None:
                    seen["info"] = info
        return users

    # -- health: measured by the heartbeat -------------------------------------
    async def _watch(self) -> None:
        """Heartbeat every ``probe_every`` s; no answer within timeout/2 is a stall.

        So a Redis that stops answering without closing its sockets (SIGSTOP,
        a partition) turns ``healthy`` False within 3/4 of the timeout even
        when nobody publishes, before any publish waiting on it gives up.
        """
        while not self._stopping:
            await asyncio.sleep(self.probe_every)
            try:
                await self._heartbeat_on_a_live_connection()
            except _NO_ANSWER:
                self._presence_dirty = True  # updates may be missed meanwhile: write all again
                self._stalled(f"no answer to the heartbeat within {self.timeout / 2:g} s")
            except _UNREACHABLE as error:
                # Refused or reset: Redis is down (the subscription then ends by
                # itself, after reading what had reached it) or out of connections.
                self._presence_dirty = True
                self._answering = False
                self._health_changed(f"heartbeat: {error}")
            else:
                self._answering = True
                self._health_changed()

    async def _heartbeat_on_a_live_connection(self) -> None:
        """``_heartbeat``, tried once more on a fresh connection when its pooled one
        fails: a connection opened before Redis restarted fails once although Redis
        is back (redis-py drops it on the error), and that is no outage to report."""
        try:
            await self._heartbeat()
        except _NO_ANSWER:
            raise
        except _UNREACHABLE:
            await self._heartbeat()

    async def _heartbeat(self) -> None:
        """Mark this node live (HEARTBEAT) within timeout/2, and measure Redis's clock.

        Redis read its clock somewhere between sending and receiving, so the
        offset taken at the midpoint is off by at most half the round trip.
        """
        sent = time.monotonic()
        fresh, seconds, micros = await answered_by(
            self._heartbeat_script(keys=[self._nodes_key], args=[self.node, self._node_ttl]),
            sent + self.timeout / 2)
        received = time.monotonic()
        self.clock_offset = int(seconds) + int(micros) / 1e6 - (sent + received) / 2
        self.clock_error = (received - sent) / 2
        if fresh:  # Redis lost this node's entry (a restart), or counted it dead
            self._presence_dirty = True

    def _stalled(self, reason: str) -> None:
        """Redis did not answer in time: unhealthy now (publishes refused at once,
        /healthz 503) until a heartbeat is answered again, and the subscription
        dropped, since its socket may say nothing for ever: the subscriber
        reconnects, and is healthy again once caught up."""
        self._answering = False
        self._health_changed(reason)
        if self._subscription is not None and not self._stopping:
            self._subscription.close()

    async def _presence_refresher(self) -> None:
        # Three refreshes per PRESENCE_TTL (at most 5 s apart): the presence
        # keys (PEXPIRE 2 x PRESENCE_TTL) outlive a lost one.
        every = min(self.presence_ttl / 3, 5.0)
        while not self._stopping:
            await asyncio.sleep(every)
            if not self.healthy:
                continue  # written again once it is back (dirty)
            try:
                async with asyncio.timeout(self.timeout):
                    await self._refresh_presence()
                    await self._write_topic_counts()
            except _UNREACHABLE as error:
                log.debug("backplane presence refresh failed: %s", error)

    async def _refresh_presence(self) -> None:
        """Extend this node's presence keys; write them all again when dirty."""
        ttl = self._presence_ttl_ms
        async with self._presence_lock:
            rewrite, gone = self._presence_dirty, self._presence_gone
            if not rewrite and not self._presence.topics:
                return
            self._presence_dirty, self._presence_gone = False, set()
            pipe = self._redis.pipeline(transaction=rewrite)
            if rewrite:
                for topic in gone - self._presence.topics.keys():
                    pipe.delete(self._presence_key(topic))
                pipe.delete(self._topics_key)
                if self._presence.topics:
                    pipe.sadd(self._topics_key, *self._presence.topics)
            if self._presence.topics:
                pipe.pexpire(self._topics_key, ttl)
            for topic, users in self._presence.topics.items():
                key = self._presence_key(topic)
                if rewrite:  # Redis lost it, or missed updates while unreachable
                    pipe.delete(key)
                    pipe.hset(key, mapping={u: orjson.dumps(e) for u, e in users.items()})
                pipe.pexpire(key, ttl)
            try:
                await pipe.execute()
            except BaseException:  # a timeout included: write it all next time
                self._presence_dirty = True
                self._presence_gone |= gone
                raise

    async def _reaper(self) -> None:
        """Retire dead nodes (REAP) every ``reap_every`` seconds; see PRESENCE_UPDATE."""
        while not self._stopping:
            await asyncio.sleep(self.reap_every)
            if not self.healthy:
                continue
            try:
                await self._reap(keys=[self._nodes_key], args=[self.prefix, self.events_channel, ""])
            except _UNREACHABLE as error:
                log.debug("backplane reap failed: %s", error)

    # -- subscriber counts (GET /topics), fleet-wide -----------------------------
    # Each node keeps a snapshot of its counts in Redis, {prefix}topic-counts:{node}
    # (hash pattern -> count), rewritten by the presence refresher when they
    # changed and otherwise only extended: other nodes' counts are at most one
    # refresh period old, min(PRESENCE_TTL/3, 5 s). A change writes only the
    # patterns that changed. A listing adds this node's own current counts to
    # the other live nodes' snapshots, read with HSCAN a thousand fields at a
    # time: never one long command or script that would hold up publishes.
    _live_nodes_script = None
    _counts_written: dict[str, int] | None = None  # the snapshot Redis holds, as last written

    def _topic_counts_key(self, node: str = "") -> str:
        return f"{self.prefix}topic-counts:{node}"

    async def _write_topic_counts(self) -> None:
        counts = self._count_topics("")
        key = self._topic_counts_key(self.node)
        written = self._counts_written
        # Still there? (Gone: Redis lost its data, or it expired while this
        # node was cut off; then it is written again, whole.)
        kept = bool(written) and await self._redis.pexpire(key, self._presence_ttl_ms)
        if counts == written and (kept or not counts):
            return
        pipe = self._redis.pipeline(transaction=True)  # readers never see it half written
        if kept:  # only what changed
            gone = [pattern for pattern in written if pattern not in counts]
            changed = {p: n for p, n in counts.items() if written.get(p) != n}
            if gone:
                pipe.hdel(key, *gone)
            if changed:
                pipe.hset(key, mapping=changed)
        else:
            pipe.delete(key)
            if counts:
                pipe.hset(key, mapping=counts)
        if counts:
            pipe.pexpire(key, self._presence_ttl_ms)
        self._counts_written = None  # unknown until the write is answered
        await pipe.execute()
        self._counts_written = counts

    async def topic_counts(self, prefix: str = "") -> dict[str, int]:
        """The fleet's subscriber counts of the patterns starting with ``prefix``:
        this node's as they are now, plus every other live node's snapshot."""
        if not self.healthy:
            raise BackplaneUnavailable("backplane unavailable: Redis is unreachable,"
                                       " the fleet's counts cannot be read")
        if self._live_nodes_script is None:
            self._live_nodes_script = self._redis.register_script(LIVE_NODES)
        counts = dict(self._count_topics(prefix))
        match = _glob_escape(prefix) + "*"
        try:
            async with asyncio.timeout(self.timeout):
                for node in await self._live_nodes_script(keys=[self._nodes_key]):
                    if node == self._node_b:
                        continue  # this node's own are counted as they are now
                    key = self._topic_counts_key(node.decode())
                    async for pattern, count in self._redis.hscan_iter(key, match=match, count=1000):
                        pattern = pattern.decode()
                        counts[pattern] = counts.get(pattern, 0) + int(count)
        except _UNREACHABLE as error:
            raise BackplaneUnavailable(f"backplane unavailable: {error}") from None
        return counts

"""The backplane: one publish path, in one process or across a fleet (SPEC 13).

The interface (``Broker``)
--------------------------
The hub hands every validated publication, encoded as opaque bytes, to the
broker and delivers what the broker gives back::

    await broker.start(on_publication, backfill=N, on_epoch_change=f, on_gap=g, on_event=e)
    await broker.publish(payload, ephemeral=False, deadline=None) -> (epoch, seq) | None
    await broker.publish_all([(payload, ephemeral), ...], deadline, reservation)
        -> [(epoch, seq) | None, ...]           # all in one step, or none
    await broker.stop()
    broker.epoch, broker.healthy
    await broker.claim_idempotency(reservation, deadline)  # None: reserved; else the ids
        -> None | [ids] | {"pending": token}    # (a list) or another request's reservation
    await broker.release_idempotency(reservation)  # only if the key still holds it
    broker.synchronous / broker.publish_now(payload)  # memory only: no await, no task
    await broker.presence_update(topic, user, info, delta)   # delta = +1 / -1 connection
        -> ("join"|"leave", info) | None   # the user's first / last connection in the fleet
    await broker.presence_list(topic) -> {user: {"info": ..., "connections": n}}
    await broker.broadcast(event)      # a JSON-able list to every other node's on_event
    broker.count_topics_with(counter)  # counter(prefix) -> this node's {pattern: subscribers}
    await broker.topic_counts(prefix) -> {pattern: subscribers}   # the fleet's (GET /topics)

- ``on_publication(seq, payload)`` is called for every publication of the
  fleet, this node's own included, exactly once and in strictly increasing
  seq order (``seq`` is None for an ephemeral one, which is never kept or
  numbered). ``broker.epoch`` is the epoch of the publication being
  delivered: the hub's event id is ``f"{broker.epoch}-{seq}"``.
- ``publish`` returns ``(epoch, seq)`` rather than a bare seq: the id a
  publisher reports must carry the epoch it was numbered in, even if this
  node's subscriber has not yet heard that the epoch changed. It raises
  ``BackplaneUnavailable`` (a HubError 503) when it cannot publish, by
  ``deadline`` (``time.monotonic()``; default: the broker's timeout from
  now) at the latest; it never accepts and then drops, and never delivers
  what it answered 503 (see Deadlines).
- ``publish_all`` publishes a batch in one atomic step; with a
  ``reservation`` (an Idempotency-Key claimed by ``claim_idempotency``) it
  stores the ids under the key in that same step, and publishes only while
  the key still holds that reservation (``backplane/idempotency.py``).
- ``start(backfill=N)`` replaces a separate ``backfill()`` call: a node that
  starts late gets the newest N kept publications through ``on_publication``
  before ``start`` returns, then everything after them, then live ones, with
  no overlap and no hole for the hub to merge. (At start the hub has no
  subscribers, so those deliveries only fill its history.)
- ``on_gap(upto)``: every publication with seq <= ``upto`` that was not
  delivered never will be (a late start before the kept range, or a node
  that fell behind further than the stream keeps). The hub treats ids below
  it as not covered (``history_gap``), never as an empty replay.
- ``on_epoch_change(epoch)``: Redis lost its data; seqs start again at 1 in
  the new epoch and every older id must get ``history_gap``.
- ``on_event(event)``: a fleet event from another node (never this node's
  own): ``["user", user, event, payload]`` sent by ``broadcast`` (the inbox's
  live events), ``["join"|"leave", topic, user, info]`` from presence. Not
  publications: never numbered, kept or replayed; a node that is not
  subscribed when one is sent never hears it.

``MemoryBroker`` (BACKPLANE=memory) numbers locally and calls
``on_publication`` inside ``publish``: today's single-process cost.
``RedisBroker`` is the fleet.

Redis keys and channel (``prefix`` default ``hubbub:``)
-------------------------------------------------------
- ``{prefix}epoch``  string, the id space; ``SET`` when missing (first start,
  or Redis lost its data: then seq and stream are cleared with it).
- ``{prefix}seq``    the fleet-wide counter (INCR).
- ``{prefix}stream`` stream of publications, entry id ``{seq}-0``, field
  ``p`` = payload; ``MAXLEN ~ stream_length_for(HISTORY_SIZE)`` =
  max(10 x HISTORY_SIZE, 10,000), ``EXPIRE HISTORY_TTL`` refreshed on every
  publish. It serves late-start backfill and gap filling after a reconnect.
- channel ``{prefix}publications``: ``{epoch}:{seq}:{payload}`` (``-:0:`` for
  ephemeral ones).
- ``{prefix}idempotency:{key}`` while a request holds it, its reservation
  ``{"pending": token}`` (PX: until that request gives up); once published,
  the JSON ids (PX: the Idempotency-Key TTL), written by the publish script.
- ``{prefix}nodes`` zset node -> heartbeat expiry (Redis server time),
  written by the node's heartbeat (every min(timeout/4, PRESENCE_TTL/3)).
- ``{prefix}presence:{node}:{topic}`` hash user -> JSON [connections, info],
  and ``{prefix}presence-topics:{node}`` the set of that node's topics, both
  EXPIRE 2 x PRESENCE_TTL, refreshed by that node every
  min(PRESENCE_TTL/3, 5 s). The heartbeat counts a node live until
  PRESENCE_TTL - r after it (r = min(PRESENCE_TTL/6, 1 s)); a listing reads
  only live nodes, so a SIGKILLed node leaves listings within PRESENCE_TTL.
  The hashes outlive the heartbeat so that the node that retires a dead one
  still finds its users. A node whose entry had vanished (Redis restart, or
  retired while alive but stalled) writes its presence again, silently (no
  new joins are announced for it).
- ``{prefix}topic-counts:{node}`` hash pattern -> that node's subscriber
  count (``GET /topics``), written by the node's presence refresher every
  min(PRESENCE_TTL/3, 5 s): the patterns whose count changed since the last
  write are written (HSET/HDEL in one MULTI), the whole hash only when Redis
  lost it; PEXPIRE 2 x PRESENCE_TTL. A listing reads the live nodes
  (LIVE_NODES) and then each one's hash but its own with HSCAN (MATCH the
  prefix, 1,000 fields a step), adding this node's current counts: no long
  command or script holds up publishes, however many patterns the fleet
  has. Other nodes' counts are at most one refresh period old; a dead
  node's leave with its heartbeat (within PRESENCE_TTL).
- channel ``{prefix}events``: fleet events, ``{node}\n{JSON array}``; a node
  skips those it sent itself. A second channel rather than markers on the
  publications channel: the publication path (hot) stays one format with no
  test per message, and events have no seq, no history, no topic matching.

Presence join/leave, fleet-wide
-------------------------------
``presence_update`` is one script (PRESENCE_UPDATE): write this node's count,
sum the user's count on the other live nodes (one HGET per node), and if the
fleet count went from 0 it PUBLISHes the join, to 0 the leave, on the events
channel inside the script. Scripts run one at a time, so one join per first
connection even when two nodes connect the same user at once, and every node
hears a user's joins and leaves in the order Redis applied them. The node
that made the change tells its own watchers from the reply. A node applies
its own changes one at a time (a lock), so +1/-1 of one connection never
cross.

Dead nodes: every node runs REAP every r seconds (one EVALSHA that reads the
nodes zset by score; nothing else while no heartbeat has run out). It ZREMs
the nodes whose heartbeat expired (ZREM inside the script: exactly one
survivor retires a given node), PUBLISHes a leave for each of their users
present on no live node, once per (topic, user), and deletes their presence.
A dead node's users therefore leave, on every node, within PRESENCE_TTL of
its last heartbeat. A node that stops cleanly retires itself the same way.
While Redis is unreachable, changes are kept locally and written again when
it is back, but not announced (nobody could hear them).

Keys are built inside scripts, so this is for one Redis (or a Sentinel
primary), not Redis Cluster.

Why one channel, broadcast to every node, matched locally
---------------------------------------------------------
Subscriptions use wildcards (``*``, ``>``) and tag filters that Redis
channels cannot express; a channel per topic would need PSUBSCRIBE patterns
translated per subscription and a SUBSCRIBE/UNSUBSCRIBE on every local
subscription change, and ordering across channels would be lost. One
channel keeps one fleet-wide order (the seq), costs one PUBLISH per
publication, and each node already has the trie that matches locally. The
cost is that every node receives every publication: fine for the fleets
this is for (a handful of nodes); a large fleet with disjoint audiences
would want sharding, which this does not do.

Per publication
---------------
One round trip: ``EVALSHA`` of one script running TIME (the deadline), GET
epoch, INCR, XADD (MAXLEN ~), PUBLISH, EXPIRE; a batch is the same script
with the middle three per publication. Publications made in the same loop
turn (concurrent requests, client frames, ``hub.publish`` calls) share one
script call, up to 256 callers or 1 MiB: one round trip for all of them,
each caller's own publications still all-or-none, the script's deadline the
earliest caller's. Bytes: the payload goes to Redis once (plus ~150 bytes
of command, shared by a batch), is stored once in the stream, and goes out
once to each node's subscription (plus ``epoch:seq:``, ~15 bytes). An
ephemeral publication goes through the same script (for its deadline) and
is only PUBLISHed, stored nowhere. ``bench/backplane.py`` measures one
broker, ``bench/fleet_fanout.py`` a subscriber node against the memory broker.

Slow or unreachable Redis; bounded everywhere
----------------------------------------------
One setting, ``timeout`` (HUBBUB_BACKPLANE_TIMEOUT, default 2 s), bounds it:

- Publish: every publish answers within ``timeout`` of its call, counting
  everything: the wait for a connection of the bounded pool (``pool_size``),
  the script and its reply (``POST /publish`` counts its Idempotency-Key
  claim in the same bound). Then 503. At the deadline sharp: the command is
  abandoned to redis-py's clean-up in the background. No redis-py retries:
  a script retried after a lost reply could run twice.
- Health is measured, not assumed: ``healthy`` is True while the
  subscription is up and caught up and the last heartbeat was answered in
  time. The heartbeat (a write script, on a connection of its own so a busy
  pool never delays it) runs every ``timeout/4`` (at most PRESENCE_TTL/3)
  and must be answered within ``timeout/2``: a Redis that stops answering
  without closing its sockets (SIGSTOP, a partition that keeps TCP open) is
  noticed within 3/4 of ``timeout`` even when nobody publishes, before any
  publish waiting on it gives up; a publish that gets no answer in time
  says so too. A stall also drops the subscription (its socket may say
  nothing for ever), to be made again. A refused connection or a closed
  socket (Redis killed) is noticed at once. While unhealthy, publishes fail
  at once with 503 without touching the network.
- Subscription: read in batches (``redis_subscription.py``): everything a
  socket read brought is parsed by hiredis and delivered in that read's
  callback, so a burst is fanned out in one loop turn and each subscriber
  written once for it. Nothing queues in the node beyond one read's
  messages (held while a gap is filled from the stream, with reading
  paused). A node that cannot keep up leaves
  the backlog in its socket and then in Redis's output buffer for the
  connection; past Redis's ``client-output-buffer-limit pubsub`` Redis
  disconnects it, the node reconnects and catches up from the stream in
  batches of 1,000 (XRANGE), and if the stream no longer holds what it
  missed it reports ``on_gap`` (clients then get ``history_gap``/``reset``,
  never a silent hole).
- Outage: the subscriber reconnects with exponential backoff (50 ms
  doubling to 5 s, jittered; each attempt bounded by ``timeout``) and is
  healthy again once it has caught up and a heartbeat was answered. Nothing
  spins while Redis is down.

Deadlines: a publish answered 503 is never delivered
----------------------------------------------------
A frozen Redis still holds the commands it was sent, and runs them when it
resumes, long after the node answered 503: a client retrying would publish
twice. So every script of a publish (the publication, ephemeral ones
included, and the Idempotency-Key claim) starts with a deadline check
(``LATE``): past it, it does nothing and says so. The node gives up at
``deadline`` (its monotonic clock); the script's deadline is ``deadline -
timeout/2`` in Redis's clock (``TIME``), through the offset measured by
every heartbeat: Redis read its clock between the heartbeat's send and its
reply, so the offset taken at the midpoint is off by at most half that
round trip (``clock_error``). A script that ran by its deadline has then
``timeout/2 - clock_error`` (about 1 s by default) for its reply to reach
the node and be read before the node gives up; one that comes later does
nothing. The node does not even send a script that could only arrive late.

What remains, honestly: a script that ran in time but whose reply takes
longer than that margin to be read, so that the node answers 503 for a
publication Redis made. That needs a pathological stall between the two:
Redis frozen (or killed) in the microseconds between running the script
and writing its reply, a partition of more than ``timeout/2`` in exactly
that window, the node's event loop blocked that long, or Redis's wall clock
stepped back by that much between two heartbeats. With an Idempotency-Key
even that is covered: the script stores the ids under the key in the step
that publishes, so a retry with the key replays them.

The reservations: a key holds ``{"pending": token}`` until its request
gives up (PX), so one that could not be released (Redis unreachable) never
outlives its request. A 503'd request releases it in the background (the
503 is not delayed), deleting it only if it still holds its own token; the
release cannot race a late publish script, which does nothing past its
deadline and publishes only while the reservation is there.

The local broker: ``--workers N`` without Redis
-----------------------------------------------
``hubbub serve --workers N`` (N > 1) with BACKPLANE=memory starts a broker
process of its own before Granian's workers (``local_server``), on a Unix
socket in a private temporary folder (mode 0700) named to the workers by
HUBBUB_LOCAL_BROKER; each worker's ``LocalBroker`` (``local``) connects to
it. The broker holds what Redis holds for a fleet, in one event loop (so
each request is one atomic step, as a script is): the epoch (new per run),
the seq, a log of the newest ``stream_length_for(HISTORY_SIZE)`` kept
publications, at most 256 MiB of them (backfill at a worker's start,
catch-up of a lagging one, 1 MiB at a time),
the Idempotency-Keys with their TTLs, and presence per worker. The wire
format is in ``local_protocol``: length-prefixed messages, binary on the
publication path, JSON for the rest.

- One order: the broker numbers and forwards every publication to every
  worker (the publisher's own included) in seq order, on the one connection
  that also carries that worker's replies: a worker that keeps up has
  delivered its own publication before its publish returns.
- Batched both ways: a worker writes everything it sent in one loop turn in
  one write; the broker writes everything it numbered in one loop turn as
  one DELIVER frame (built once, written to each worker), and the worker
  hands the whole frame to ``on_publication`` in one callback, so the hub's
  flusher writes each subscriber once for the batch.
- Deadlines: the same clock on both sides (CLOCK_MONOTONIC is the
  machine's), so a publish or claim carries ``deadline - timeout/2`` and the
  broker does nothing past it; the worker answers 503 at ``deadline``. As
  with Redis, what remains is a broker that ran the publish in time whose
  reply took over timeout/2 to be read.
- Health: a ping every timeout/4 answered within timeout/2 (a SIGSTOPped
  broker turns ``healthy`` False within 3/4 of the timeout; publishes fail
  at once then, /readyz 503), healthy again once one is answered.
- Presence: the broker counts each user's connections per worker; the
  first connection on the machine is the join, the last the leave, told to
  the other workers as events. A worker whose connection closes (it stopped,
  or died) leaves at once: the broker announces its users' leaves.
- Subscriber counts (``GET /topics``): each worker sends the broker a
  snapshot of its counts when they changed, every min(PRESENCE_TTL/3, 5 s)
  (as a Redis node writes its ``topic-counts`` hash); a listing adds the
  asking worker's current counts to the others' snapshots. A worker's
  snapshot goes with its connection.
- A worker that stops reading (more than ``LAG_LIMIT`` unread in its
  socket) stops getting frames; once it has read them it is sent what it
  missed from the log, after a GAP (``on_gap``) for what the log no longer
  holds: never a silent hole.
- The broker process dies: ``hubbub serve`` stops (its workers drain, exit
  status 1) rather than restarting it, since the workers cannot be one hub
  without it and a new broker would be a new epoch anyway; meanwhile the
  workers answer 503. ``serve`` stops the broker after its workers (it
  ignores SIGINT/SIGTERM so that a signal to the process group leaves it
  to the draining workers) and removes its folder; the broker exits by
  itself when ``serve`` is gone (its stdin closes, or its parent changes).
"""
from __future__ import annotations

from typing import Any

from .base import BackplaneUnavailable, Broker
from .memory import MemoryBroker

__all__ = ["BackplaneUnavailable", "Broker", "MemoryBroker", "RedisBroker", "broker_for"]


def __getattr__(name: str) -> Any:
    if name == "RedisBroker":  # redis is an optional extra: import it only when asked for
        from .redis_broker import RedisBroker

        return RedisBroker
    raise AttributeError(name)


def broker_for(config: Any) -> Broker:
    """The broker a Config asks for (``config.backplane``; with memory, the local
    broker of ``hubbub serve``'s workers when ``config.local_broker`` names one)."""
    if config.backplane == "memory":
        if config.local_broker:
            from .local import LocalBroker

            return LocalBroker(config.local_broker, history_size=config.history_size,
                               timeout=config.backplane_timeout, presence_ttl=config.presence_ttl)
        return MemoryBroker()
    from .redis_broker import RedisBroker

    return RedisBroker(config.backplane, prefix=config.backplane_prefix,
                       history_size=config.history_size, history_ttl=config.history_ttl,
                       presence_ttl=config.presence_ttl, timeout=config.backplane_timeout)

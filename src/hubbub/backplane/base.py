"""The broker interface every backplane implements (see the package docstring)."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from ..errors import HubError

log = logging.getLogger("hubbub.backplane")

OnPublication = Callable[[int | None, bytes], None]  # (seq, or None when ephemeral; payload)
OnEpochChange = Callable[[str], None]  # the new epoch
OnGap = Callable[[int], None]  # every publication with seq <= this that was not delivered never will be
OnEvent = Callable[[list], None]  # a fleet event another node sent (``broadcast``, presence)
TopicCounter = Callable[[str], dict[str, int]]  # prefix -> {pattern: this node's subscribers}


def call_hub(callback: Callable[..., None], *args: Any) -> None:
    """Hand the hub what a broker read (``on_publication``, ``on_gap``,
    ``on_epoch_change``): a bug in the hub is logged, and never stops the
    broker's reading, so the other publications still get delivered."""
    try:
        callback(*args)
    except Exception:
        log.exception("backplane: %s failed (%r)", getattr(callback, "__name__", callback), args[0])


@dataclasses.dataclass(frozen=True)
class Reservation:
    """An Idempotency-Key held by one request until it publishes or gives up.

    Meanwhile the key holds ``marker`` (a JSON object: no id list looks like
    it). The publish replaces it with the ids in the same atomic step, and
    only while it is still there; a release deletes it only if it is still
    there. So neither can touch what another request did with the key.
    """

    key: str
    marker: dict
    ttl: float  # seconds the ids are kept once published


class BackplaneUnavailable(HubError):
    """The backplane cannot take the publication now; nothing was accepted (503)."""

    def __init__(self, reason: str = "backplane unavailable") -> None:
        super().__init__(503, reason)


class Broker:
    """One publish path for every backplane.

    The hub hands each validated publication (already encoded, as opaque
    bytes) to ``publish`` and delivers, in ``on_publication``, whatever the
    broker gives back, its own publications included. ``epoch`` names the id
    space; ``healthy`` is False while the shared state cannot be reached.
    """

    epoch: str
    healthy: bool
    # True when publish_now works: numbering and delivery happen in the
    # caller's own step (the memory broker), so sync callers need no task.
    synchronous = False

    def publish_now(self, payload: Any, ephemeral: bool = False) -> tuple[str, int] | None:
        raise NotImplementedError

    async def start(self, on_publication: OnPublication, *, backfill: int = 0,
                    on_epoch_change: OnEpochChange | None = None,
                    on_gap: OnGap | None = None, on_event: OnEvent | None = None) -> None:
        raise NotImplementedError

    async def publish(self, payload: bytes, ephemeral: bool = False,
                      deadline: float | None = None) -> tuple[str, int] | None:
        """(epoch, seq), None when ephemeral; 503 by ``deadline`` (time.monotonic())
        at the latest when it cannot, and then it is never delivered."""
        raise NotImplementedError

    async def publish_all(self, items: list[tuple[Any, bool]], deadline: float | None = None,
                          reservation: Reservation | None = None) -> list[tuple[str, int] | None]:
        """``publish`` for ``(payload, ephemeral)`` items, all or none; with a
        ``reservation`` the ids are stored under its key in the same step."""
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def claim_idempotency(self, reservation: Reservation, deadline: float) -> Any:
        """Reserve the key until ``deadline``: None, or what it holds already (the
        ids published with it, a list; or another request's reservation, a dict)."""
        raise NotImplementedError

    async def release_idempotency(self, reservation: Reservation) -> None:
        """Forget the reservation if the key still holds it (the publish failed)."""
        raise NotImplementedError

    async def broadcast(self, event: list) -> None:
        """Hand ``event`` to every other node's ``on_event`` (nothing to do alone)."""
        raise NotImplementedError

    async def presence_update(self, topic: str, user: str, info: Any,
                              delta: int) -> tuple[str, Any] | None:
        """``("join", info)`` / ``("leave", info)`` when the user's fleet-wide
        connection count went from 0 / to 0 (the other nodes get the same event
        through ``on_event``), else None."""
        raise NotImplementedError

    async def presence_list(self, topic: str) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    # -- subscriber counts (GET /topics) ---------------------------------------
    # This node's subscribed patterns starting with a prefix, each with how many
    # connections hold it: the hub's to count (it knows its connections), handed
    # in with count_topics_with. Until then, none.
    _count_topics: TopicCounter = staticmethod(lambda prefix: {})

    def count_topics_with(self, counter: TopicCounter) -> None:
        self._count_topics = counter

    async def topic_counts(self, prefix: str = "") -> dict[str, int]:
        """Subscribed patterns starting with ``prefix`` and their subscriber counts:
        this node's, or with a backplane the fleet's (BackplaneUnavailable when
        it cannot be read)."""
        raise NotImplementedError


def stream_length_for(history_size: int) -> int:
    """How many publications a fleet broker keeps for catching up (Redis's
    stream, approximately with MAXLEN ~; the local broker's log).

    The log is fleet-wide while HISTORY_SIZE is per topic: ten times it
    covers a full history for ten equally busy topics, and 10,000 at least
    lets a node that was away for that many publications catch up.
    """
    return max(10 * history_size, 10_000)


class NodePresence:
    """This node's presence: topic -> user -> [connections, info].

    Kept by every broker: the memory broker answers from it, the Redis broker
    mirrors it into Redis and rewrites it there after Redis lost it.
    """

    def __init__(self) -> None:
        self.topics: dict[str, dict[str, list]] = {}

    def update(self, topic: str, user: str, info: Any, delta: int) -> list | None:
        """Apply ``delta`` connections; the user's [count, info] after it, None once gone."""
        users = self.topics.setdefault(topic, {})
        entry = users.get(user)
        count = (entry[0] if entry else 0) + delta
        if count <= 0:
            users.pop(user, None)
            if not users:
                del self.topics[topic]
            return None
        if entry is None:
            entry = users[user] = [count, info]
        else:
            entry[0] = count
            if delta > 0 and info is not None:  # the newest connection's info wins
                entry[1] = info
        return entry

    def listing(self, topic: str) -> dict[str, dict[str, Any]]:
        return {user: {"info": info, "connections": count}
                for user, (count, info) in self.topics.get(topic, {}).items()}

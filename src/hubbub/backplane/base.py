"""The broker interface every backplane implements (see the package docstring)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import HubError

OnPublication = Callable[[int | None, bytes], None]  # (seq, or None when ephemeral; payload)
OnEpochChange = Callable[[str], None]  # the new epoch
OnGap = Callable[[int], None]  # every publication with seq <= this that was not delivered never will be
OnEvent = Callable[[list], None]  # a fleet event another node sent (``broadcast``, presence)


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

    async def publish(self, payload: bytes, ephemeral: bool = False) -> tuple[str, int] | None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def remember_idempotency(self, key: str, ids: list, ttl: float) -> list | None:
        raise NotImplementedError

    async def settle_idempotency(self, key: str, ids: list, ttl: float) -> None:
        """Replace what ``key`` holds (a reservation) with the ids published."""
        raise NotImplementedError

    async def release_idempotency(self, key: str) -> None:
        """Forget ``key`` (the reserved publish failed: a retry may publish)."""
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

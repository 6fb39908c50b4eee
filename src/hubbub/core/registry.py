"""Every live connection of a hub, and each user's: the per-user caps and the
index that lets per-user events (the inbox's) reach every tab of a user
without it subscribing to anything; and how many connections hold each
subscribed pattern (``GET /topics``), kept as they subscribe and leave so
that reading it never walks every connection."""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ..errors import HubError

if TYPE_CHECKING:
    from ..auth import Principal
    from .connection import Connection


class Registry:
    def __init__(self, max_per_user: int) -> None:
        self.max_per_user = max_per_user
        self.connections: dict[str, Connection] = {}
        self.users: Counter[str] = Counter()  # user -> live connections
        self.user_conns: dict[str, set[Connection]] = {}
        self.pattern_counts: dict[str, int] = {}  # pattern -> connections subscribed to it

    def subscribed(self, pattern: str) -> None:
        """A connection took ``pattern`` (not a re-subscribe of one it had)."""
        counts = self.pattern_counts
        counts[pattern] = counts.get(pattern, 0) + 1

    def unsubscribed(self, pattern: str) -> None:
        counts = self.pattern_counts
        left = counts[pattern] - 1
        if left:
            counts[pattern] = left
        else:
            del counts[pattern]

    def add(self, conn: "Connection") -> None:
        """Register ``conn``; HubError 429 past MAX_CONNECTIONS_PER_USER."""
        user = conn.principal.user
        if user is not None:
            self.check_cap(user)
            self._index(user, conn)
        self.connections[conn.id] = conn

    def remove(self, conn: "Connection") -> bool:
        """Forget ``conn``; False when it was not registered (already removed)."""
        if self.connections.pop(conn.id, None) is None:
            return False
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
        return True

    def sign_in(self, conn: "Connection", principal: "Principal") -> None:
        """An anonymous registered connection becomes ``principal``'s (429 past the cap,
        and then nothing changed)."""
        user = principal.user
        if user is not None:
            self.check_cap(user)
        conn.principal = principal
        if user is not None:
            self._index(user, conn)

    def of_user(self, user: str) -> "set[Connection] | None":
        return self.user_conns.get(user)

    def check_cap(self, user: str) -> None:
        """HubError 429 when ``user`` already has MAX_CONNECTIONS_PER_USER connections."""
        if self.users[user] >= self.max_per_user:
            raise HubError(429, f"too many connections for user {user!r}")

    def _index(self, user: str, conn: "Connection") -> None:
        self.users[user] += 1
        self.user_conns.setdefault(user, set()).add(conn)

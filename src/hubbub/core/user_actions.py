"""What the hub does to one user's live connections on this node, whatever
carries them: per-user events (the inbox's), the server API's disconnect and
unsubscribe, and the subscriber counts behind ``GET /topics``. Fleet-wide,
services.user_events sends the same to the other nodes."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import wire
from ..topics import requested_pattern

if TYPE_CHECKING:
    from .connection import Connection
    from .flusher import Flusher
    from .registry import Registry


class UserActions:
    """Made by the core with what it needs: the registry, the flusher, and the
    core's own ``unsubscribe`` (the trie and the hooks go with it)."""

    def __init__(self, registry: "Registry", flusher: "Flusher",
                 unsubscribe: Callable[["Connection", str], bool]) -> None:
        self.registry = registry
        self.flusher = flusher
        self.unsubscribe_connection = unsubscribe

    def send(self, user: str, event: str, payload: Any) -> None:
        """A per-user event to every live connection of ``user`` on this node
        (any port, any transport), encoded once per wire format."""
        conns = self.registry.of_user(user)
        if not conns:
            return
        frames: dict[int, bytes] = {}
        for conn in list(conns):
            frame = frames.get(conn.fmt)
            if frame is None:
                frame = frames[conn.fmt] = wire.user_event(conn.fmt, event, payload)
            conn.send_control(frame)

    def disconnect(self, user: str, code: int, reason: str) -> int:
        """Close every live connection of ``user`` on this node (the server API's
        disconnect); returns how many. WS gets close ``code`` with ``reason``;
        SSE gets ``event: disconnect`` first, then its stream ends; a waiting
        poll is answered 410 (``wire.POLL_DISCONNECTED``) with ``disconnect``
        ``{code, reason}``, what the SSE event carries."""
        conns = self.registry.of_user(user)
        if not conns:
            return 0
        self.flusher.run()  # publications already queued go out before the close, in order
        closed = 0
        for conn in list(conns):
            if conn.closed:
                continue
            if conn.fmt == wire.POLL:
                conn.disconnect_code = code
                conn.close(wire.POLL_DISCONNECTED, reason)
            else:
                frame = wire.disconnect_frame(conn.fmt, code, reason)
                if frame is not None:
                    conn.send_control(frame)  # written by close, ahead of the end of the stream
                conn.close(code, reason)
            closed += 1
        return closed

    def unsubscribe(self, user: str, pattern: Any) -> int:
        """Drop the subscription ``pattern`` (exactly as subscribed) of every live
        connection of ``user`` on this node, telling each (WS ``unsubscribed``,
        SSE ``event: unsubscribed``); returns how many connections had it.
        An invalid pattern is a 400 as for ``subscribe``."""
        pattern = requested_pattern(pattern)
        conns = self.registry.of_user(user)
        if not conns:
            return 0
        count = 0
        frames: dict[int, bytes | None] = {}
        for conn in list(conns):
            if conn.closed or not self.unsubscribe_connection(conn, pattern):
                continue
            if conn.fmt not in frames:
                frames[conn.fmt] = wire.unsubscribed_frame(conn.fmt, pattern)
            frame = frames[conn.fmt]
            if frame is not None:
                conn.send_control(frame)
            count += 1
        return count

    def topic_counts(self, prefix: str = "") -> dict[str, int]:
        """Subscribed patterns of this node's live connections starting with
        ``prefix``, each with how many connections hold it (the registry's
        running counts: one entry a pattern, not a walk of the connections)."""
        counts = self.registry.pattern_counts
        if not prefix:
            return dict(counts)
        return {pattern: n for pattern, n in counts.items() if pattern.startswith(prefix)}

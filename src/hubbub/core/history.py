"""Kept publications, per topic, for recovery after a reconnect (SPEC 4, 5, 6, 10).

Each topic keeps its last ``HISTORY_SIZE`` publications for ``HISTORY_TTL``
seconds. Recovery is all or nothing (as in Centrifugo): it either returns
every kept publication after the client's id that matches its
subscriptions, merged across topics in id order, or says the history no
longer covers that id. To know that, each topic remembers the highest
sequence it ever evicted, and the history remembers the highest sequence of
the topics it forgot entirely (idle past the TTL): an id at or above both is
covered.
"""
from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

from .._trie_py import pattern_matches


class Kept(NamedTuple):
    seq: int
    event_id: str
    frames: tuple[bytes, bytes]  # (SSE, WS): the bytes delivered live, replayed as they are
    tags: dict | None
    expires: float  # monotonic time


class _TopicLog:
    __slots__ = ("entries", "evicted_upto")

    def __init__(self) -> None:
        self.entries: deque[Kept] = deque()
        self.evicted_upto = 0


class Gap(Exception):
    """The history cannot replay everything asked for; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


HISTORY_GAP = "history_gap"
RECOVERY_LIMIT = "recovery_limit"


class History:
    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._logs: dict[str, _TopicLog] = {}
        self._tree: dict = {}  # topic segments -> nested dicts; None key marks a topic end
        self.forgotten_upto = 0
        self.kept = 0

    def __len__(self) -> int:
        return self.kept

    @property
    def topics(self) -> int:
        return len(self._logs)

    def append(self, topic: str, entry: Kept) -> None:
        log = self._logs.get(topic)
        if log is None:
            log = self._logs[topic] = _TopicLog()
            self._tree_add(topic)
        entries = log.entries
        entries.append(entry)
        self.kept += 1
        if len(entries) > self.size:
            log.evicted_upto = entries.popleft().seq
            self.kept -= 1
        self._expire(topic, log, time.monotonic())

    def expire(self, now: float | None = None) -> None:
        """Drop what outlived the TTL everywhere (the hub calls this periodically)."""
        now = time.monotonic() if now is None else now
        for topic, log in list(self._logs.items()):
            self._expire(topic, log, now)

    def _expire(self, topic: str, log: _TopicLog, now: float) -> None:
        self._expire_in_place(log, now)
        if not log.entries:
            self.forgotten_upto = max(self.forgotten_upto, log.evicted_upto)
            del self._logs[topic]
            self._tree_remove(topic)

    def recover(self, subscriptions: Iterable[tuple[str, Any]], since: int, limit: int) -> list[Kept]:
        """Every kept publication after ``since`` matching any (pattern, filter), in order.

        Raises Gap when the history does not cover ``since`` or more than
        ``limit`` publications would be replayed.
        """
        if since < self.forgotten_upto:
            raise Gap(HISTORY_GAP)
        now = time.monotonic()
        streams = []
        for topic, filters in self._matching_topics(subscriptions).items():
            log = self._logs[topic]
            self._expire_in_place(log, now)
            if since < log.evicted_upto:
                raise Gap(HISTORY_GAP)
            picked = _after(log.entries, since)
            if None not in filters:  # an unfiltered subscription takes them all
                picked = [e for e in picked if any(f.matches(e.tags) for f in filters)]
            if picked:
                streams.append(picked)
        replay = streams[0] if len(streams) == 1 else list(heapq.merge(*streams))  # by seq
        if len(replay) > limit:
            raise Gap(RECOVERY_LIMIT)
        return replay

    def of_topic(self, topic: str, since: int | None, limit: int) -> tuple[list[Kept], bool]:
        """Kept publications of one topic, oldest first, and whether more follow.

        With ``since``: the first ``limit`` after it (a page; Gap when the
        history no longer covers it). Without: the newest ``limit`` kept."""
        if since is not None and since < self.forgotten_upto:
            raise Gap(HISTORY_GAP)
        log = self._logs.get(topic)
        if log is None:
            return [], False
        self._expire_in_place(log, time.monotonic())
        if since is None:
            entries = list(log.entries)
            return entries[-limit:], False
        if since < log.evicted_upto:
            raise Gap(HISTORY_GAP)
        picked = _after(log.entries, since)
        return picked[:limit], len(picked) > limit

    def _expire_in_place(self, log: _TopicLog, now: float) -> None:
        entries = log.entries
        while entries and entries[0].expires <= now:
            log.evicted_upto = entries.popleft().seq
            self.kept -= 1

    def _matching_topics(self, subscriptions: Iterable[tuple[str, Any]]) -> dict[str, list]:
        """Kept topics matched by the patterns, each with the filters that matched it."""
        out: dict[str, list] = {}
        for pattern, tag_filter in subscriptions:
            for topic in self._walk(pattern):
                filters = out.setdefault(topic, [])
                if tag_filter not in filters:
                    filters.append(tag_filter)
        return out

    # -- the topic tree: which kept topics a pattern matches ----------------------
    def _tree_add(self, topic: str) -> None:
        node = self._tree
        for segment in topic.split("."):
            node = node.setdefault(segment, {})
        node[None] = topic

    def _tree_remove(self, topic: str) -> None:
        path = []
        node = self._tree
        for segment in topic.split("."):
            path.append((node, segment))
            node = node[segment]
        del node[None]
        for parent, segment in reversed(path):
            if parent[segment]:
                break
            del parent[segment]

    def _walk(self, pattern: str) -> list[str]:
        tokens = pattern.split(".")
        found: list[str] = []
        self._walk_node(self._tree, tokens, 0, found)
        return [t for t in found if pattern_matches(tokens, t)]  # the '$' rule, in one place

    def _walk_node(self, node: dict, tokens: list[str], i: int, found: list[str]) -> None:
        if i == len(tokens):
            if None in node:
                found.append(node[None])
            return
        token = tokens[i]
        if token == ">":
            for segment, child in node.items():
                if segment is not None:
                    _collect_all(child, found)
        elif token == "*":
            for segment, child in node.items():
                if segment is not None:
                    self._walk_node(child, tokens, i + 1, found)
        else:
            child = node.get(token)
            if child is not None:
                self._walk_node(child, tokens, i + 1, found)


def _collect_all(node: dict, found: list[str]) -> None:
    for segment, child in node.items():
        if segment is None:
            found.append(child)
        else:
            _collect_all(child, found)


def _after(entries: deque, since: int) -> list[Kept]:
    """Entries with seq > since (entries are in seq order): scan from the right."""
    out = []
    for entry in reversed(entries):
        if entry.seq <= since:
            break
        out.append(entry)
    out.reverse()
    return out

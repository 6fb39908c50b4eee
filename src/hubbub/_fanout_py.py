"""Pure-Python dispatch: the twin of ``ext/hubbub/_fanout.pyx``.

``fanout`` pushes one publication's pre-encoded frames to the outboxes of
the matched subscriptions. Per publication (``seq``, unique and increasing):

- each distinct ``TagFilter`` is evaluated once (its result is stamped with
  ``seq``), however many subscriptions share it;
- each outbox receives the frame at most once (also stamped with ``seq``),
  even when several of its subscriptions match;
- the owners (writers) of outboxes that must be woken are appended to
  ``woken``, those of outboxes that overflowed under their policy to
  ``overflowed``: the hub gets writers back, not outboxes.

``frames`` is indexed by the subscription's wire format, so one bytes object
per format is shared by every subscriber of that format.
"""
from __future__ import annotations

from ._ring_py import OVERFLOW, WAKE


class TagFilter:
    """A compiled tag filter: every key must be present with one of its values."""

    __slots__ = ("items", "stamp", "result", "__weakref__")

    def __init__(self, items) -> None:
        # items: ((key, frozenset(values)), ...), sorted by key (see filters.py)
        self.items = tuple(items)
        self.stamp = 0
        self.result = False

    def matches(self, tags) -> bool:
        if not tags:
            return False
        for key, values in self.items:
            value = tags.get(key)
            if value is None or value not in values:
                return False
        return True


class Subscription:
    __slots__ = ("outbox", "fmt", "filter", "pattern", "__weakref__")

    def __init__(self, outbox, fmt: int, pattern: str, filter=None) -> None:
        self.outbox = outbox
        self.fmt = fmt
        self.pattern = pattern
        self.filter = filter


def fanout(subs, tags, frames, priority: int, key, seq: int, woken: list, overflowed: list) -> int:
    delivered = 0
    for sub in subs:
        f = sub.filter
        if f is not None:
            if f.stamp != seq:
                f.stamp = seq
                f.result = f.matches(tags)
            if not f.result:
                continue
        outbox = sub.outbox
        if outbox.stamp == seq:
            continue
        outbox.stamp = seq
        result = outbox.push(frames[sub.fmt], priority, key)
        if result == WAKE:
            woken.append(outbox.owner)
        elif result == OVERFLOW:
            overflowed.append(outbox.owner)
            continue
        delivered += 1
    return delivered

"""Pure-Python outbox: the twin of ``ext/hubbub/_ring.pyx``, same API and behaviour.

One outbox per connection holds encoded frames (``bytes``) waiting for the
socket, in four priority lanes (low, normal, high, critical). It is bounded by
a message count and a byte count, both counted over frames only.

- ``drain`` takes the highest lane first, oldest first within a lane, and
  joins one batch into a single ``bytes`` for one socket write.
- Over a bound, policy ``DROP_OLDEST`` drops the oldest frame of the lowest
  non-empty lane below critical, counting it in ``dropped`` so the transport
  can tell the client; policy ``DISCONNECT`` refuses the frame and returns
  ``OVERFLOW`` so the caller closes the connection. A critical frame is never
  dropped: when only critical frames are left over the bound, or a critical
  frame alone exceeds ``max_bytes``, ``push`` returns ``OVERFLOW`` under
  either policy.
- A non-critical frame larger than ``max_bytes`` by itself is dropped on
  arrival (counted) rather than emptying the queue to make room it can never
  have.
- Conflation: a frame pushed with a ``key`` replaces the queued frame with
  that key in place. If the new frame has a higher priority than the lane the
  old one waits in, the old one is removed and the new one joins its own
  lane's tail instead, so an urgent update never waits behind low traffic.
- Wake-ups: the writer sets ``armed`` when it goes idle; the first push after
  that returns ``WAKE`` (and disarms), every other push ``QUEUED``. The
  dispatcher thus wakes each writer at most once however many frames arrive.
- Storage: the lanes (and the conflation-key map) exist from the first push
  until a drain empties the outbox (or ``clear``); ``allocated`` says whether
  they do. Most connections are idle most of the time, and an idle outbox is
  then its fields alone.
"""
from __future__ import annotations

from collections import deque

# Mirrors the ``cpdef enum`` of ext/hubbub/_ring.pxd, the one source of these
# numbers (tests/unit/test_native_loaded.py compares the two).
QUEUED, WAKE, OVERFLOW = 0, 1, 2
DROP_OLDEST, DISCONNECT = 0, 1
CRITICAL = 3
LANES = 4


class Outbox:
    __slots__ = (
        "max_messages", "max_bytes", "policy", "separator", "armed", "stamp",
        "count", "nbytes", "dropped", "dropped_total", "owner", "_lanes", "_live", "_keys",
    )

    def __init__(self, max_messages: int = 1024, max_bytes: int = 4 << 20,
                 policy: int = DROP_OLDEST, separator: bytes = b"") -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("outbox bounds must be at least 1")
        if policy not in (DROP_OLDEST, DISCONNECT):
            raise ValueError(f"unknown slow-consumer policy {policy!r}")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.policy = policy
        self.separator = bytes(separator)
        self.armed = True
        self.stamp = 0  # last publication sequence pushed here (dispatcher dedup)
        self.count = 0
        self.nbytes = 0
        self.dropped = 0  # drops not yet reported to the client
        self.dropped_total = 0
        # Each entry is [frame, key]; a conflated-away entry becomes a
        # tombstone (frame None) and is skipped when reached. All three are
        # None while the outbox is empty (see ``_release``).
        self._lanes: list[deque] | None = None
        self._live: list[int] | None = None
        self._keys: dict | None = None  # key -> (lane, entry)
        self.owner = None  # the connection whose writer drains this outbox

    def __len__(self) -> int:
        return self.count

    @property
    def allocated(self) -> bool:
        """Whether the lanes' storage exists (False for an empty outbox)."""
        return self._lanes is not None

    def push(self, frame: bytes, priority: int, key: object = None) -> int:
        if not 0 <= priority <= CRITICAL:
            raise ValueError(f"priority must be 0..3, not {priority!r}")
        size = len(frame)
        if size > self.max_bytes:
            if priority == CRITICAL:
                return OVERFLOW
            self._count_drop()
            return QUEUED
        if key is not None and self._keys:
            queued = self._keys.get(key)
            if queued is not None:
                lane, entry = queued
                old_size = len(entry[0])
                if priority <= lane:
                    if self.policy == DISCONNECT and self.nbytes - old_size + size > self.max_bytes:
                        return OVERFLOW
                    entry[0] = frame
                    self.nbytes += size - old_size
                    return QUEUED if self._shed() else OVERFLOW
                entry[0] = None
                entry[1] = None
                self._live[lane] -= 1
                self.count -= 1
                self.nbytes -= old_size
                del self._keys[key]
        if self.policy == DISCONNECT and (
                self.count + 1 > self.max_messages or self.nbytes + size > self.max_bytes):
            return OVERFLOW
        if self._lanes is None:
            self._lanes = [deque() for _ in range(LANES)]
            self._live = [0] * LANES
        entry = [frame, key]
        self._lanes[priority].append(entry)
        self._live[priority] += 1
        if key is not None:
            if self._keys is None:
                self._keys = {}
            self._keys[key] = (priority, entry)
        self.count += 1
        self.nbytes += size
        if not self._shed():
            return OVERFLOW
        if self.armed:
            self.armed = False
            return WAKE
        return QUEUED

    def drain(self, max_messages: int = 1 << 30, max_bytes: int = 1 << 62) -> bytes:
        """Pop one batch (at least one frame when not empty) joined for one write."""
        if self._lanes is None:
            return b""
        parts = []
        taken = 0
        for lane in range(LANES - 1, -1, -1):
            while self._live[lane] and len(parts) < max_messages:
                size = len(self._peek(lane))
                if parts and taken + size > max_bytes:
                    return self.separator.join(parts)
                parts.append(self._pop(lane))
                taken += size
        if not self.count:  # drained empty: give the storage back (only tombstones are left)
            self._release()
        return self.separator.join(parts)

    def take_dropped(self) -> int:
        """Drops since the last call, for the transport's ``dropped`` notice."""
        n = self.dropped
        self.dropped = 0
        return n

    def clear(self) -> None:
        self._release()
        self.count = 0
        self.nbytes = 0

    def _release(self) -> None:
        self._lanes = self._live = self._keys = None

    def _shed(self) -> bool:
        """Drop oldest-lowest frames until within bounds; False if only critical frames are left."""
        while self.count > self.max_messages or self.nbytes > self.max_bytes:
            for lane in range(CRITICAL):
                if self._live[lane]:
                    self._pop(lane)
                    self._count_drop()
                    break
            else:
                return False
        return True

    def _count_drop(self) -> None:
        self.dropped += 1
        self.dropped_total += 1

    def _peek(self, lane: int) -> bytes:
        entries = self._lanes[lane]
        while entries[0][0] is None:
            entries.popleft()
        return entries[0][0]

    def _pop(self, lane: int) -> bytes:
        entries = self._lanes[lane]
        entry = entries.popleft()
        while entry[0] is None:
            entry = entries.popleft()
        frame, key = entry
        if key is not None:
            del self._keys[key]
        self._live[lane] -= 1
        self.count -= 1
        self.nbytes -= len(frame)
        return frame

"""Giving memory back to the operating system after a burst.

Queued frames are mostly over 512 bytes, so CPython takes them from the C
allocator, and glibc keeps what they free inside the process: after 30 slow
readers leave, RSS stayed 30 MiB up with nothing left to hold it. The hub
counts the bytes it lets go of in bulk (the backlog of a closed connection,
expired history) and, past TRIM_AFTER_BYTES, asks glibc to return its free
pages (``malloc_trim``), from the heartbeat round rather than on the hot
path. Elsewhere (musl, macOS) this is a no-op.
"""
from __future__ import annotations

import ctypes
import ctypes.util

TRIM_AFTER_BYTES = 4 << 20


def _load_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_trim()


class FreedMemory:
    """Counts bytes released in bulk; trims once enough has been released."""

    def __init__(self) -> None:
        self.pending = 0
        self.rounds_left = 0
        self.trims = 0

    def add(self, nbytes: int) -> None:
        self.pending += nbytes

    def maybe_trim(self) -> None:
        """Called once a heartbeat round. Trims on the round that sees enough
        released and on the next two: the server's own buffers for those
        connections (Granian's, the kernel's socket memory aside) go a
        moment after the hub lets go of its backlog."""
        if self.pending >= TRIM_AFTER_BYTES:
            self.pending = 0
            self.rounds_left = 3
        if self.rounds_left and _malloc_trim is not None:
            self.rounds_left -= 1
            _malloc_trim(0)
            self.trims += 1

"""The local broker's wire format: length-prefixed messages over a Unix socket.

Every message is ``HEADER`` (the length of what follows the length field,
a kind, a request id) and a body. A worker numbers its requests; the broker
answers each with a ``REPLY`` of the same id. ``DELIVER``, ``EVENT`` and
``GAP`` carry request id 0: they are the broker's own.

Hot path, binary: a ``PUBLISH`` body is ``PUBLISH_HEAD`` (the deadline past
which the broker must not publish, the length of the reservation JSON), the
reservation JSON, then per publication ``ITEM`` (ephemeral flag, length) and
the payload. Its reply is a status byte and one ``SEQ`` per publication (0
for an ephemeral one). A ``DELIVER`` body is ``ENTRY`` (seq, 0 when
ephemeral; length) and the payload, per publication, in seq order. The rest
(hello, idempotency, presence, events) is JSON: rare, and small.
"""
from __future__ import annotations

import struct

HEADER = struct.Struct("!IBI")  # length of the rest, kind, request id
HEADER_SIZE = HEADER.size
LENGTH_SIZE = 4
ENTRY = struct.Struct("!QI")  # seq (0: ephemeral), payload length
ITEM = struct.Struct("!BI")  # ephemeral (1) or kept (0), payload length
PUBLISH_HEAD = struct.Struct("!dI")  # late (time.monotonic(); 0: none), reservation JSON length
SEQ = struct.Struct("!Q")

# worker -> broker, each answered by a REPLY of the same request id
HELLO = ord("h")  # JSON {"backfill": N} -> JSON {"epoch", "gap"} + b"\n" + DELIVER body
PUBLISH = ord("p")
CLAIM = ord("c")  # JSON [late, key, marker, seconds] -> JSON [late (bool), what the key holds]
RELEASE = ord("r")  # JSON [key, marker] -> empty
PRESENCE = ord("u")  # JSON [topic, user, info, delta] -> JSON null | ["join"|"leave", info]
LIST = ord("l")  # JSON topic -> JSON {user: {"info", "connections"}}
BROADCAST = ord("b")  # JSON event -> empty
PING = ord("i")  # empty -> empty
COUNTS = ord("n")  # JSON {pattern: this worker's subscribers}, its snapshot -> empty
TOPICS = ord("t")  # JSON prefix -> JSON {pattern: subscribers} of the other workers' snapshots
# broker -> worker
REPLY = ord("R")
DELIVER = ord("D")
EVENT = ord("E")  # JSON fleet event (see the package docstring's on_event)
GAP = ord("G")  # SEQ: publications up to it that this worker missed are gone

# PUBLISH reply status
PUBLISHED, LATE, RESERVATION_GONE = 0, 1, 2


def message(kind: int, request: int, body: bytes = b"") -> bytes:
    return HEADER.pack(len(body) + HEADER_SIZE - LENGTH_SIZE, kind, request) + body


class Reader:
    """Splits a byte stream into ``(kind, request, body)`` messages.

    A message split across reads waits in a bytearray until it is whole
    (appending is amortized, so a large DELIVER frame read in many pieces
    is copied once, not once per piece).
    """

    def __init__(self) -> None:
        self._partial = bytearray()
        self._needed = 0  # bytes the partial message needs before it can be parsed

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        partial = self._partial
        if partial:
            partial += data
            if len(partial) < self._needed:
                return []
            data = bytes(partial)
            partial.clear()
        out = []
        pos, size = 0, len(data)
        unpack = HEADER.unpack_from
        while size - pos >= HEADER_SIZE:
            length, kind, request = unpack(data, pos)
            end = pos + LENGTH_SIZE + length
            if end > size:
                self._needed = end - pos
                break
            out.append((kind, request, data[pos + HEADER_SIZE:end]))
            pos = end
        else:
            self._needed = HEADER_SIZE
        if pos < size:
            partial += data[pos:]
        return out


def entries(body: bytes):
    """(seq, payload) for each publication of a DELIVER body."""
    pos, size = 0, len(body)
    unpack = ENTRY.unpack_from
    step = ENTRY.size
    while pos < size:
        seq, length = unpack(body, pos)
        pos += step
        yield seq, body[pos:pos + length]
        pos += length

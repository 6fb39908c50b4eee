"""Pure-Python round writer: the twin of ``ext/hubbub/_writer.pyx``.

The flusher hands a round's woken connections to ``write_round``, which
flushes each (``Connection.flush``) starting at ``start`` and wrapping
around. That is the whole contract: the compiled twin writes the common
case itself (an open connection with only messages queued, one batch, on a
socket transport registered here) and must leave every connection, outbox
and socket exactly as ``Connection.flush`` would, byte for byte; anything
else it hands to ``Connection.flush``.

``register_socket_transport(cls, framing, socket_attribute)`` names a
transport class whose ``write`` is "frame the batch (``FRAME_WS_TEXT``: one
unmasked final text frame, as ``write_ws_text`` writes it; ``FRAME_RAW``: as
it is) and write it to ``getattr(transport, socket_attribute)``" and whose
``buffered`` is that socket's ``get_write_buffer_size()``, so the compiled
writer may do both itself. Here the registry is only kept, for parity.
"""
from __future__ import annotations

FRAME_RAW = 0
FRAME_WS_TEXT = 1

_SHORT_HEADERS = tuple(bytes((0x81, length)) for length in range(126))
# Below this a WebSocket batch is copied behind its header into one write();
# above it the two go to writelines() uncopied. One write() was the cheaper
# call in py-spy profiles of small fan-out frames.
COPY_BELOW = 16 << 10


def ws_text_header(length: int) -> bytes:
    """RFC 6455 header of an unmasked, final text frame of ``length`` bytes."""
    if length < 126:
        return _SHORT_HEADERS[length]
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


def write_ws_text(sock, data: bytes) -> None:
    """Write ``data`` to the socket transport ``sock`` as one text frame."""
    size = len(data)
    if size < COPY_BELOW:
        sock.write(ws_text_header(size) + data)
    else:
        sock.writelines((ws_text_header(size), data))

socket_transports: dict[type, tuple[int, str]] = {}


def register_socket_transport(cls: type, framing: int, socket_attribute: str) -> None:
    if framing not in (FRAME_RAW, FRAME_WS_TEXT):
        raise ValueError(f"unknown framing {framing!r}")
    socket_transports[cls] = (framing, socket_attribute)


class RoundWriter:
    """Writes a flusher round. (Constructed with the connection module's
    constants, which the compiled twin needs; the pure one uses
    ``Connection.flush`` and so needs none of them.)"""

    __slots__ = ()

    def __init__(self, open_state, high_water: int, max_messages: int, max_bytes: int) -> None:
        pass

    def write_round(self, conns: list, start: int) -> None:
        n = len(conns)
        for i in range(start, n):
            conns[i].flush()
        for i in range(min(start, n)):
            conns[i].flush()

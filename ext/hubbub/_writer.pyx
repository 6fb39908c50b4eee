# cython: language_level=3
"""Compiled round writer; the contract is in ``hubbub/_writer_py.py``.

At one publication per round (a steady rate) every delivery is its own
write, and ``Connection.flush`` around it was four Python calls (flush,
the transport's buffered and write, the framing) costing the hub more than
its whole fan-out. Here the common case is done in C: for a registered
socket transport, an open connection with only messages queued and room in
its socket buffer gets its batch drained, framed and written with no
Python-level call of our own. Every other case goes to ``Connection.flush``,
and the common case leaves everything as that would (tests/unit/
test_differential.py runs both writers on the same randomized rounds).
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy

from hubbub._ring cimport Outbox

cdef enum:
    RAW = 0
    WS_TEXT = 1

FRAME_RAW = RAW
FRAME_WS_TEXT = WS_TEXT
# Below this a WebSocket batch is copied behind its header into one write();
# above it the two go to writelines() uncopied (as _writer_py.write_ws_text).
cdef Py_ssize_t COPY_BELOW = 16 << 10

cdef dict _registry = {}
socket_transports = _registry


def register_socket_transport(type cls, int framing, str socket_attribute):
    if framing != RAW and framing != WS_TEXT:
        raise ValueError(f"unknown framing {framing!r}")
    _registry[cls] = (framing, socket_attribute)


cdef Py_ssize_t _ws_header(unsigned char* header, Py_ssize_t size):
    """RFC 6455 header of an unmasked, final text frame of ``size`` bytes."""
    cdef int i
    header[0] = 0x81
    if size < 126:
        header[1] = <unsigned char>size
        return 2
    if size < 65536:
        header[1] = 126
        header[2] = (size >> 8) & 0xff
        header[3] = size & 0xff
        return 4
    header[1] = 127
    for i in range(8):
        header[2 + i] = (size >> (8 * (7 - i))) & 0xff
    return 10


def write_ws_text(object sock, bytes data):
    """Write ``data`` to the socket transport ``sock`` as one text frame (the
    native port's WebSocket ``write``, for what the round writer hands back)."""
    _write_ws_text(sock, data)


cdef int _write_ws_text(object sock, bytes data) except -1:
    cdef unsigned char header[10]
    cdef Py_ssize_t size = len(data)
    cdef Py_ssize_t length = _ws_header(header, size)
    cdef bytes framed
    cdef char* out
    if size < COPY_BELOW:
        framed = PyBytes_FromStringAndSize(NULL, length + size)
        out = PyBytes_AS_STRING(framed)
        memcpy(out, header, length)
        memcpy(out + length, PyBytes_AS_STRING(data), size)
        sock.write(framed)
    else:
        sock.writelines((PyBytes_FromStringAndSize(<char*>header, length), data))
    return 0


@cython.final
cdef class RoundWriter:
    cdef object open_state
    cdef Py_ssize_t high_water
    cdef Py_ssize_t max_messages
    cdef Py_ssize_t max_bytes

    def __init__(self, open_state, Py_ssize_t high_water, Py_ssize_t max_messages, Py_ssize_t max_bytes):
        self.open_state = open_state
        self.high_water = high_water
        self.max_messages = max_messages
        self.max_bytes = max_bytes

    def write_round(self, list conns, Py_ssize_t start):
        cdef Py_ssize_t n = len(conns), i
        for i in range(start, n):
            self._flush(conns[i])
        for i in range(min(start, n)):
            self._flush(conns[i])

    cdef int _flush(self, object conn) except -1:
        cdef object transport = conn.transport
        cdef tuple how = _registry.get(type(transport))
        cdef Outbox outbox
        if how is None:
            conn.flush()
            return 0
        conn.scheduled = False
        if conn.state is not self.open_state:
            return 0
        outbox = conn.outbox
        if conn.control or outbox.dropped:  # replies or a dropped notice owed: the general case
            conn.flush()
            return 0
        sock = getattr(transport, <str>how[1])
        if sock.get_write_buffer_size() >= self.high_water:
            return 0  # the transport wakes the connection when it drains
        if not outbox.count:
            outbox.armed = True
            return 0
        batch = outbox.drain(self.max_messages, self.max_bytes)
        if <int>how[0] == WS_TEXT:
            _write_ws_text(sock, batch)
        else:
            sock.write(batch)
        conn.wrote = True
        if conn.state is not self.open_state:  # the write found the peer gone
            return 0
        if outbox.count or conn.control or outbox.dropped:  # more than one batch: the general case
            conn.flush()
            return 0
        outbox.armed = True  # empty: the next push wakes us again
        return 0

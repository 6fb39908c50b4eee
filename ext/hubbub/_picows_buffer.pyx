"""A smaller picows write buffer for idle WebSocket connections (issue 20).

picows gives every connection a 1,024-byte write buffer, allocated with its
``WSTransport`` and not sizable from Python: a sixth of an idle fast-port
connection's memory. Hubbub frames its own messages and writes them to the
socket itself (``NativeWSTransport.write``), so picows' buffer only ever holds
a header or a small control frame of picows' own (close, ping, pong), and
``MemoryBuffer.resize`` grows it again when one needs more.

``_write_buffer`` is declared in picows' shipped ``picows.pxd``: this module
is compiled against one picows release's struct layout. ``BUILT_FOR`` names
that release, and the native transport applies the swap only when the
installed picows is the same one (see transports/native.py).
"""
from picows.picows cimport MemoryBuffer, WSTransport

cdef extern from *:
    """
    #ifndef HUBBUB_PICOWS_VERSION
    #define HUBBUB_PICOWS_VERSION ""
    #endif
    """
    const char* HUBBUB_PICOWS_VERSION

BUILT_FOR = HUBBUB_PICOWS_VERSION.decode()


def shrink_write_buffer(WSTransport transport, Py_ssize_t capacity):
    """Give ``transport`` a ``capacity``-byte write buffer in place of its own."""
    transport._write_buffer = MemoryBuffer(capacity)


def write_buffer_capacity(WSTransport transport):
    """The bytes ``transport``'s write buffer holds now (for the tests)."""
    return transport._write_buffer.capacity

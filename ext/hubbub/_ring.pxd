# cython: language_level=3
# The outbox contract other compiled modules (the dispatcher) call directly.
cimport cython
from cpython.ref cimport PyObject

cpdef enum:
    QUEUED = 0
    WAKE = 1
    OVERFLOW = 2
    DROP_OLDEST = 0
    DISCONNECT = 1
    CRITICAL = 3
    LANES = 4


cdef struct Slot:
    PyObject* frame  # owned reference to a bytes object; NULL marks a tombstone
    PyObject* key    # owned reference, or NULL for no conflation key


cdef struct Lane:
    Slot* slots      # power-of-two ring, allocated on the lane's first push
    Py_ssize_t head  # absolute positions; slot index = position & mask
    Py_ssize_t tail
    Py_ssize_t mask
    Py_ssize_t live  # frames queued, tombstones excluded


@cython.final
cdef class Outbox:
    cdef Lane* lanes  # LANES of them, allocated on first push, freed once drained empty
    cdef readonly Py_ssize_t max_messages
    cdef readonly Py_ssize_t max_bytes
    cdef readonly int policy
    cdef readonly bytes separator
    cdef public bint armed
    cdef public unsigned long long stamp
    cdef readonly Py_ssize_t count
    cdef readonly Py_ssize_t nbytes
    cdef public Py_ssize_t dropped
    cdef readonly Py_ssize_t dropped_total
    cdef public object owner  # the connection whose writer drains this outbox
    cdef dict _keys   # conflation key -> slot; None until the first keyed push
    cdef object __weakref__

    cpdef int push(self, bytes frame, int priority, object key=*) except -1
    cpdef bytes drain(self, Py_ssize_t max_messages=*, Py_ssize_t max_bytes=*)
    cdef bint _shed(self) except -1
    cdef void _release(self)
    cdef bytes _pop(self, int lane)

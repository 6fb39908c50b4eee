# cython: language_level=3
"""Compiled outbox; the contract and the reasons are in ``hubbub/_ring_py.py``.

The four lanes are C structs, each a power-of-two ring of (frame, key)
slots indexed by absolute positions, so a push touches the outbox and one
slot and, once the storage exists, allocates nothing: that is what keeps a
fan-out to 1,000 outboxes within a few cache lines a delivery. The lanes and
their rings are allocated by the first push and given back when a drain
empties the outbox (with the conflation-key dict): most connections are
idle most of the time, and an idle outbox is then its fields alone (issue
20). A refill costs two small pymalloc allocations, once per round.
Conflation keys map to ``position * 4 + lane``; a conflated-away frame leaves
a tombstone (NULL) that pops skip. Keys are expected to be plain values
(str, int): the slots hold references the garbage collector does not see.
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memset
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject

cdef enum:
    INITIAL_CAPACITY = 4  # lanes grow by doubling; most connections stay tiny
    # A lane drained empty whose ring grew past this many slots gives its
    # memory back: a burst must not leave every connection holding a big ring.
    SHRINK_ABOVE = 64


cdef int _lane_reserve(Lane* lane) except -1:
    """Make room for one more slot at the tail."""
    cdef Py_ssize_t capacity, pos, new_mask
    cdef Slot* slots
    if lane.slots == NULL:
        capacity = INITIAL_CAPACITY
    elif lane.tail - lane.head > lane.mask:
        capacity = (lane.mask + 1) * 2
    else:
        return 0
    slots = <Slot*>PyMem_Malloc(capacity * sizeof(Slot))
    if slots == NULL:
        raise MemoryError()
    new_mask = capacity - 1
    for pos in range(capacity):
        slots[pos].frame = NULL
        slots[pos].key = NULL
    if lane.slots != NULL:
        for pos in range(lane.head, lane.tail):
            slots[pos & new_mask] = lane.slots[pos & lane.mask]
        PyMem_Free(lane.slots)
    lane.slots = slots
    lane.mask = new_mask
    return 0


cdef inline void _lane_skip_tombstones(Lane* lane):
    while lane.head < lane.tail and lane.slots[lane.head & lane.mask].frame == NULL:
        lane.head += 1


cdef void _lane_free(Lane* lane):
    cdef Py_ssize_t pos
    if lane.slots != NULL:
        for pos in range(lane.head, lane.tail):
            Py_XDECREF(lane.slots[pos & lane.mask].frame)
            Py_XDECREF(lane.slots[pos & lane.mask].key)
        PyMem_Free(lane.slots)
    lane.slots = NULL
    lane.head = lane.tail = lane.mask = lane.live = 0


@cython.final
cdef class Outbox:
    def __cinit__(self):
        self.lanes = NULL

    def __dealloc__(self):
        self._release()

    def __init__(self, Py_ssize_t max_messages=1024, Py_ssize_t max_bytes=4 << 20,
                 int policy=DROP_OLDEST, bytes separator=b""):
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("outbox bounds must be at least 1")
        if policy != DROP_OLDEST and policy != DISCONNECT:
            raise ValueError(f"unknown slow-consumer policy {policy!r}")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.policy = policy
        self.separator = bytes(separator)
        self.armed = True
        self.stamp = 0
        self.count = 0
        self.nbytes = 0
        self.dropped = 0
        self.dropped_total = 0
        self._keys = None
        self.owner = None

    def __len__(self):
        return self.count

    @property
    def allocated(self):
        """Whether the lanes' storage exists (False for an empty outbox)."""
        return self.lanes != NULL

    cpdef int push(self, bytes frame, int priority, object key=None) except -1:
        if priority < 0 or priority > CRITICAL:
            raise ValueError(f"priority must be 0..3, not {priority!r}")
        if frame is None:
            raise TypeError("frame must be bytes, not None")
        cdef Py_ssize_t size = len(frame)
        cdef Py_ssize_t old_size, code, pos
        cdef Lane* lane
        cdef Slot* slot
        if size > self.max_bytes:
            if priority == CRITICAL:
                return OVERFLOW
            self.dropped += 1
            self.dropped_total += 1
            return QUEUED
        if key is not None and self._keys:
            queued = self._keys.get(key)
            if queued is not None:
                code = queued
                lane = &self.lanes[code & 3]
                slot = &lane.slots[(code >> 2) & lane.mask]
                old_size = len(<bytes>slot.frame)
                if priority <= (code & 3):
                    if self.policy == DISCONNECT and self.nbytes - old_size + size > self.max_bytes:
                        return OVERFLOW
                    Py_INCREF(frame)
                    Py_XDECREF(slot.frame)
                    slot.frame = <PyObject*>frame
                    self.nbytes += size - old_size
                    return QUEUED if self._shed() else OVERFLOW
                # Moving up a lane: leave a tombstone behind.
                Py_XDECREF(slot.frame)
                Py_XDECREF(slot.key)
                slot.frame = NULL
                slot.key = NULL
                lane.live -= 1
                self.count -= 1
                self.nbytes -= old_size
                del self._keys[key]
        if self.policy == DISCONNECT and (
                self.count + 1 > self.max_messages or self.nbytes + size > self.max_bytes):
            return OVERFLOW
        if self.lanes == NULL:
            self.lanes = <Lane*>PyMem_Malloc(LANES * sizeof(Lane))
            if self.lanes == NULL:
                raise MemoryError()
            memset(self.lanes, 0, LANES * sizeof(Lane))
        lane = &self.lanes[priority]
        _lane_reserve(lane)
        pos = lane.tail
        slot = &lane.slots[pos & lane.mask]
        Py_INCREF(frame)
        slot.frame = <PyObject*>frame
        if key is not None:
            Py_INCREF(key)
            slot.key = <PyObject*>key
            if self._keys is None:
                self._keys = {}
            self._keys[key] = pos * 4 + priority
        lane.tail = pos + 1
        lane.live += 1
        self.count += 1
        self.nbytes += size
        if (self.count > self.max_messages or self.nbytes > self.max_bytes) and not self._shed():
            return OVERFLOW
        if self.armed:
            self.armed = False
            return WAKE
        return QUEUED

    # (Defaults as Py_ssize_t: a C int's 1 << 62 would overflow.)
    cpdef bytes drain(self, Py_ssize_t max_messages=<Py_ssize_t>1 << 30, Py_ssize_t max_bytes=<Py_ssize_t>1 << 62):
        """Pop one batch (at least one frame when not empty) joined for one write."""
        cdef list parts = []
        cdef Py_ssize_t taken = 0, size, n = 0
        cdef int index
        cdef Lane* lane
        if self.lanes == NULL:
            return b""
        for index in range(LANES - 1, -1, -1):
            lane = &self.lanes[index]
            while lane.live and n < max_messages:
                _lane_skip_tombstones(lane)
                size = len(<bytes>lane.slots[lane.head & lane.mask].frame)
                if n and taken + size > max_bytes:
                    return self.separator.join(parts)
                parts.append(self._pop(index))
                taken += size
                n += 1
            if not lane.live and lane.mask >= SHRINK_ABOVE:
                _lane_free(lane)  # only tombstones are left; the next push starts small
        if not self.count:  # drained empty: give the storage back (only tombstones are left)
            self._release()
            self._keys = None
        if n == 1:
            return <bytes>parts[0]
        return self.separator.join(parts)

    def take_dropped(self):
        """Drops since the last call, for the transport's ``dropped`` notice."""
        cdef Py_ssize_t n = self.dropped
        self.dropped = 0
        return n

    def clear(self):
        self._release()
        self._keys = None
        self.count = 0
        self.nbytes = 0

    cdef bint _shed(self) except -1:
        cdef int index
        cdef bint shed
        while self.count > self.max_messages or self.nbytes > self.max_bytes:
            shed = False
            for index in range(CRITICAL):
                if self.lanes[index].live:
                    self._pop(index)
                    self.dropped += 1
                    self.dropped_total += 1
                    shed = True
                    break
            if not shed:
                return False
        return True

    cdef void _release(self):
        """Free the lanes, their rings and any frames and keys left in them."""
        cdef int i
        if self.lanes != NULL:
            for i in range(LANES):
                _lane_free(&self.lanes[i])
            PyMem_Free(self.lanes)
            self.lanes = NULL

    cdef bytes _pop(self, int index):
        cdef Lane* lane = &self.lanes[index]
        _lane_skip_tombstones(lane)
        cdef Slot* slot = &lane.slots[lane.head & lane.mask]
        cdef bytes frame = <bytes>slot.frame  # takes a new reference...
        Py_XDECREF(slot.frame)                # ...and the slot gives up its own
        slot.frame = NULL
        if slot.key != NULL:
            del self._keys[<object>slot.key]
            Py_XDECREF(slot.key)
            slot.key = NULL
        lane.head += 1
        lane.live -= 1
        self.count -= 1
        self.nbytes -= len(frame)
        return frame

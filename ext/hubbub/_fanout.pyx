# cython: language_level=3
"""Compiled dispatch; the contract is in ``hubbub/_fanout_py.py``.

The loop calls ``Outbox.push`` through its C entry point, so one delivery is
a stamp compare, a ring store and no Python-level call or allocation.
"""
cimport cython
from hubbub._ring cimport Outbox, WAKE, OVERFLOW


cdef class TagFilter:
    cdef readonly tuple items
    cdef public unsigned long long stamp
    cdef public bint result
    cdef object __weakref__

    def __init__(self, items):
        self.items = tuple(items)
        self.stamp = 0
        self.result = False

    cpdef bint matches(self, object tags) except -1:
        if not tags:
            return False
        cdef tuple item
        for item in self.items:
            value = tags.get(item[0])
            if value is None or value not in <frozenset>item[1]:
                return False
        return True


@cython.final
cdef class Subscription:
    cdef readonly Outbox outbox
    cdef readonly int fmt
    cdef readonly str pattern
    cdef readonly TagFilter filter
    cdef object __weakref__

    def __init__(self, Outbox outbox not None, int fmt, str pattern, TagFilter filter=None):
        self.outbox = outbox
        self.fmt = fmt
        self.pattern = pattern
        self.filter = filter


def fanout(tuple subs, object tags, tuple frames, int priority, object key,
           unsigned long long seq, list woken, list overflowed):
    cdef Py_ssize_t delivered = 0
    cdef Subscription sub
    cdef TagFilter f
    cdef Outbox outbox
    cdef int result
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
        result = outbox.push(<bytes>frames[sub.fmt], priority, key)
        if result == WAKE:
            woken.append(outbox.owner)
        elif result == OVERFLOW:
            overflowed.append(outbox.owner)
            continue
        delivered += 1
    return delivered

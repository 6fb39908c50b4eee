# cython: language_level=3
"""Compiled topic trie; the contract and the reasons are in ``hubbub/_trie_py.py``.

Same structure, same traversal order (literal, then ``*``, then ``>``) and the
same cache policy as the pure twin, so the differential tests can compare
results element by element.
"""
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_GET_SIZE
from cpython.ref cimport PyObject


cdef class _Node:
    cdef dict children
    cdef _Node star
    cdef dict subs
    cdef dict tail_subs

    def __cinit__(self):
        self.children = {}
        self.star = None
        self.subs = {}
        self.tail_subs = {}

    cdef inline bint is_empty(self):
        return not (self.children or self.star is not None or self.subs or self.tail_subs)


cdef bint _pattern_matches(list ptokens, str topic):
    cdef list tokens = topic.split(".")
    cdef Py_ssize_t n = PyList_GET_SIZE(tokens)
    cdef Py_ssize_t np = PyList_GET_SIZE(ptokens)
    cdef Py_ssize_t i
    cdef str p
    cdef bint dollar = (<str>tokens[0]).startswith("$")
    for i in range(np):
        p = <str>ptokens[i]
        if p == ">":
            return n > i and not (i == 0 and dollar)
        if i >= n:
            return False
        if p == "*":
            if i == 0 and dollar:
                return False
        elif p != <str>tokens[i]:
            return False
    return n == np


cdef void _collect(_Node node, list tokens, Py_ssize_t i, Py_ssize_t n, bint dollar, list out) except *:
    cdef PyObject* child
    if i == n:
        if node.subs:
            out.extend(node.subs)
        return
    child = PyDict_GetItem(node.children, tokens[i])
    if child is not NULL:
        _collect(<_Node>child, tokens, i + 1, n, dollar, out)
    # Wildcards in the first segment never match a '$' topic (as in MQTT).
    if i == 0 and dollar:
        return
    if node.star is not None:
        _collect(node.star, tokens, i + 1, n, dollar, out)
    if node.tail_subs:
        out.extend(node.tail_subs)


cdef class Trie:
    cdef _Node _root
    cdef dict _cache
    cdef public Py_ssize_t cache_size
    cdef Py_ssize_t _count

    def __init__(self, Py_ssize_t cache_size=4096):
        self._root = _Node()
        self._cache = {}
        self.cache_size = cache_size
        self._count = 0

    def __len__(self):
        return self._count

    @property
    def cached(self):
        return len(self._cache)

    def subscribe(self, str pattern, sub):
        """Add ``sub`` under ``pattern``; False when that pair was already there."""
        cdef list tokens = pattern.split(".")
        cdef _Node node = self._root
        cdef _Node child
        cdef dict target = None
        cdef str token
        for token in tokens:
            if token == ">":
                target = node.tail_subs
                break
            if token == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.children.get(token)
                if child is None:
                    child = _Node()
                    node.children[token] = child
                node = child
        if target is None:
            target = node.subs
        if sub in target:
            return False
        target[sub] = None
        self._count += 1
        self._invalidate(pattern, tokens)
        return True

    def unsubscribe(self, str pattern, sub):
        """Remove ``sub`` from ``pattern``; False when it was not there."""
        cdef list tokens = pattern.split(".")
        cdef list path = []
        cdef _Node node = self._root
        cdef _Node child
        cdef _Node parent
        cdef dict target = None
        cdef str token
        for token in tokens:
            if token == ">":
                target = node.tail_subs
                break
            child = node.star if token == "*" else node.children.get(token)
            if child is None:
                return False
            path.append((node, token, child))
            node = child
        if target is None:
            target = node.subs
        if sub not in target:
            return False
        del target[sub]
        self._count -= 1
        for parent, token, child in reversed(path):
            if not child.is_empty():
                break
            if token == "*":
                parent.star = None
            else:
                del parent.children[token]
        self._invalidate(pattern, tokens)
        return True

    cpdef tuple match(self, str topic):
        """The subscribers of every pattern matching the literal ``topic``."""
        cdef PyObject* hit = PyDict_GetItem(self._cache, topic)
        if hit is not NULL:
            return <tuple>hit
        cdef tuple result = self.match_uncached(topic)
        if self.cache_size > 0:
            if len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[topic] = result
        return result

    cpdef tuple match_uncached(self, str topic):
        cdef list tokens = topic.split(".")
        cdef list out = []
        _collect(self._root, tokens, 0, PyList_GET_SIZE(tokens), (<str>tokens[0]).startswith("$"), out)
        return tuple(out)

    cdef _invalidate(self, str pattern, list tokens):
        if not self._cache:
            return
        if "*" not in tokens and ">" not in tokens:
            self._cache.pop(pattern, None)
            return
        cdef list stale = [topic for topic in self._cache if _pattern_matches(tokens, topic)]
        for topic in stale:
            del self._cache[topic]


def pattern_matches(list pattern_tokens, str topic):
    return _pattern_matches(pattern_tokens, topic)

# cython: language_level=3
"""Experiment (issue 20): swap picows' 1 KiB write buffer for a smaller one.

``WSTransport._write_buffer`` is declared in picows' shipped ``picows.pxd``,
so compiled code can reach it; picows grows it again when a send of its own
(close, ping, pong) needs more. Built against the installed picows' layout:
valid for that picows release only, which is why this stays an experiment.
"""
from picows.picows cimport MemoryBuffer, WSTransport


def shrink_write_buffer(WSTransport transport, Py_ssize_t capacity):
    transport._write_buffer = MemoryBuffer(capacity)

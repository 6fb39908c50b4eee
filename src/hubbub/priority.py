"""Delivery priority (SPEC section 4): the outbox lane a publication waits in."""
from __future__ import annotations

import enum


class Priority(enum.IntEnum):
    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3

    @classmethod
    def parse(cls, value: object) -> "Priority":
        """Accept a Priority, its lower-case name (wire form) or its number."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper()] if value.islower() else cls[value]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
            return cls(value)
        raise ValueError(
            f"priority must be one of low, normal, high, critical; got {value!r}"
        )

"""Logging guards for messages that any client can trigger at will."""
from __future__ import annotations

import logging
import time


class RateLimitFilter(logging.Filter):
    """Lets at most ``burst`` records through per ``interval`` seconds.

    picows logs one ERROR line per malformed frame from any client, so a
    client could flood the log; past the limit records are counted instead,
    and the first record of the next interval says how many were dropped.
    """

    def __init__(self, burst: int = 10, interval: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.window_start = float("-inf")
        self.passed = 0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self.window_start >= self.interval:
            self.window_start = now
            self.passed = 0
            if self.suppressed:
                record.msg = f"{record.msg} ({self.suppressed} similar messages suppressed before this one)"
                self.suppressed = 0
        if self.passed < self.burst:
            self.passed += 1
            return True
        self.suppressed += 1
        return False

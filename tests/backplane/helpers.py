"""A test node: a RedisBroker plus a record of everything it delivered."""
from __future__ import annotations

import asyncio
import time

from hubbub.backplane.redis_broker import RedisBroker


class Node:
    def __init__(self, url: str, prefix: str, **options) -> None:
        self.broker = RedisBroker(url, prefix=prefix, **options)
        self.received: list[tuple[str, int | None, bytes]] = []  # (epoch, seq, payload)
        self.gaps: list[int] = []
        self.epochs: list[str] = []

    async def start(self, backfill: int = 0) -> "Node":
        await self.broker.start(self._on_publication, backfill=backfill,
                                on_epoch_change=self.epochs.append, on_gap=self.gaps.append)
        return self

    def _on_publication(self, seq, payload) -> None:
        self.received.append((self.broker.epoch, seq, payload))

    def seqs(self, epoch: str | None = None) -> list[int]:
        epoch = self.broker.epoch if epoch is None else epoch
        return [seq for e, seq, _ in self.received if e == epoch and seq is not None]


async def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)

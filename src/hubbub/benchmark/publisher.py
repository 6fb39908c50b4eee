"""The in-process publisher every contender runs, so all are driven the same way.

Settings come from the environment (the orchestrator sets them):
BENCH_COUNT messages, in bursts of BENCH_BURST per event-loop turn, at most
BENCH_RATE messages per second (0 = as fast as the loop allows), each a JSON
object with `seq`, `t0` (time.time_ns() at publish, for latency) and padding
up to BENCH_SIZE bytes. Publishing starts when BENCH_GO_FILE appears (the
orchestrator creates it once all clients are connected and it has sampled the
server's CPU time).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable


def settings() -> dict:
    return {
        "count": int(os.environ.get("BENCH_COUNT", "1000")),
        "burst": int(os.environ.get("BENCH_BURST", "10")),
        "rate": float(os.environ.get("BENCH_RATE", "0")),
        "size": int(os.environ.get("BENCH_SIZE", "100")),
        "go_file": os.environ.get("BENCH_GO_FILE", ""),
    }


def payload(seq: int, size: int) -> dict:
    body = {"seq": seq, "t0": time.time_ns(), "pad": ""}
    body["pad"] = "x" * max(0, size - 40)  # ~size bytes of JSON in all
    return body


async def run(publish: Callable[[dict], Awaitable[None] | None]) -> None:
    """Wait for the go file, then publish; ``publish`` may be sync or async."""
    cfg = settings()
    while not (cfg["go_file"] and os.path.exists(cfg["go_file"])):
        await asyncio.sleep(0.01)
    interval = cfg["burst"] / cfg["rate"] if cfg["rate"] else 0.0
    next_at = time.monotonic()
    seq = 0
    while seq < cfg["count"]:
        for _ in range(min(cfg["burst"], cfg["count"] - seq)):
            result = publish(payload(seq, cfg["size"]))
            if result is not None:
                await result
            seq += 1
        if interval:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        else:
            await asyncio.sleep(0)

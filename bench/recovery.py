"""Recovery cost: 500 clients reconnect at once, each replaying 1,000 missed messages.

Run: python bench/recovery.py [--clients 500] [--messages 1000]

A real `hubbub serve` (pinned to CPU 0) keeps 1,000 publications of ~100 B
on one topic; 500 picows clients (this process, pinned to CPU 1) connect
with `since` = the id before the first and count messages until each has all
1,000. Reported per port: wall time for the whole storm, and the hub's CPU
time (user + system of its worker) per replayed message.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvloop
from picows import WSListener, WSMsgType, ws_connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.server import HubProcess  # noqa: E402


def worker_pids(hub: HubProcess) -> list[int]:
    return [int(p) for p in Path(f"/proc/{hub.proc.pid}/task/{hub.proc.pid}/children").read_text().split()]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


class Counter(WSListener):
    def __init__(self, want: int, done: asyncio.Future) -> None:
        self.want = want
        self.got = 0
        self.done = done

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.got += frame.get_payload_as_bytes().count(b'"op":"message"')
            if self.got >= self.want and not self.done.done():
                self.done.set_result(time.perf_counter())


async def storm(url: str, clients: int, messages: int) -> float:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    futures, transports = [], []
    for _ in range(clients):
        done = loop.create_future()
        transport, _ = await ws_connect(lambda d=done: Counter(messages, d), url)
        futures.append(done)
        transports.append(transport)
    await asyncio.wait_for(asyncio.gather(*futures), 120)
    elapsed = time.perf_counter() - started
    for transport in transports:
        transport.disconnect()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    hub = HubProcess(env={"HUBBUB_HISTORY_SIZE": str(args.messages),
                          "HUBBUB_RECOVERY_MAX": str(args.messages),
                          "HUBBUB_QUEUE_MAX_MESSAGES": str(args.messages + 24)})
    hub.start(Path(tempfile.mkdtemp()))
    try:
        pids = worker_pids(hub)
        for pid in [hub.proc.pid, *pids]:
            os.sched_setaffinity(pid, {0})
        os.sched_setaffinity(0, {1})
        with httpx.Client(base_url=hub.base, timeout=30) as client:
            before = client.post("/publish", json={"topic": "rec.t", "data": "before"}).json()["ids"][0]
            for start in range(0, args.messages, 500):
                batch = [{"topic": "rec.t", "data": {"n": n, "pad": "x" * 64}}
                         for n in range(start, min(start + 500, args.messages))]
                client.post("/publish", json=batch).raise_for_status()
        print(f"| port | clients x replayed | wall time | hub CPU | hub CPU per replayed message |")
        print("| --- | --- | --- | --- | --- |")
        for kind in ("native", "asgi"):
            url = hub.url(kind, f"/ws?topic=rec.t&since={before}", "ws")
            cpu0 = cpu_seconds(pids)
            elapsed = uvloop.run(storm(url, args.clients, args.messages))
            cpu = cpu_seconds(pids) - cpu0
            total = args.clients * args.messages
            print(f"| {kind} | {args.clients} x {args.messages} | {elapsed:.2f} s | {cpu:.2f} s |"
                  f" {cpu / total * 1e6:.2f} µs |")
    finally:
        hub.stop()


if __name__ == "__main__":
    main()

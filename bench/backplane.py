"""The Redis backplane on its own: publications/s through one RedisBroker, and what each costs Redis.

Run: python bench/backplane.py [--seconds 3] [--size 200] [--concurrency 1 16 64] [--url redis://...]

Without --url it starts its own redis-server on a free port (no persistence),
so Redis's counters hold this run alone. For each concurrency (publishers in
flight at once) it publishes for --seconds and waits until the broker's own
subscription has delivered every one, then reports:

- publications/s, end to end (published, numbered, stored, heard back);
- publish-to-delivery latency p50/p99 on the same node;
- Redis round trips per publication (client requests, from INFO commandstats:
  EVALSHA + any XRANGE catch-up + heartbeats), and the commands Redis ran
  per publication (those inside the script included);
- bytes into and out of Redis per publication (out = the reply plus the one
  subscriber's copy; each extra node adds one more copy).
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from hubbub.backplane.redis_broker import RedisBroker  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def own_redis() -> tuple[str, subprocess.Popen]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return f"redis://127.0.0.1:{port}/0", proc
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def counters(client: redis.Redis) -> dict[str, int]:
    stats = client.info("stats")
    out = {"in": stats["total_net_input_bytes"], "out": stats["total_net_output_bytes"]}
    for name, value in client.info("commandstats").items():
        out[name.removeprefix("cmdstat_")] = value["calls"]
    return out


async def run(url: str, prefix: str, seconds: float, size: int, concurrency: int) -> dict:
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    target = [None]
    seen = [0]

    def on_publication(seq, payload):
        now = time.perf_counter()
        seen[0] = seq
        start = sent_at.pop(seq, None)
        if start is not None:
            latencies.append(now - start)
        if target[0] is not None and seq >= target[0]:
            done.set()

    broker = RedisBroker(url, prefix=prefix)
    await broker.start(on_publication)
    payload = b"x" * size
    published = 0
    deadline = time.perf_counter() + seconds

    async def publisher() -> None:
        nonlocal published
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            _, seq = await broker.publish(payload)
            sent_at[seq] = start  # set after the reply: delivery may come first, so p99 is a floor
            published += 1

    admin = redis.Redis.from_url(url)
    before = counters(admin)
    began = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    target[0] = int(admin.get(f"{prefix}seq"))
    if seen[0] >= target[0]:
        done.set()
    await asyncio.wait_for(done.wait(), 60)
    elapsed = time.perf_counter() - began
    after = counters(admin)
    await broker.stop()
    admin.close()
    # Client requests: what the broker sends (heartbeat scripts included);
    # GET/INCR/XADD/EXPIRE/PUBLISH run inside the publish script.
    requests = sum(after[c] - before.get(c, 0) for c in ("evalsha", "eval", "xrange", "script|load")
                   if c in after)
    inner = sum(after[c] - before.get(c, 0) for c in ("get", "incr", "xadd", "expire", "publish"))
    latencies.sort()
    return {
        "concurrency": concurrency,
        "publications": published,
        "per_s": published / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan"),
        "round_trips": requests / published,
        "commands": inner / published,
        "bytes_in": (after["in"] - before["in"]) / published,
        "bytes_out": (after["out"] - before["out"]) / published,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    proc = None
    url = args.url
    if url is None:
        url, proc = own_redis()
    try:
        import uvloop
        version = redis.Redis.from_url(url).info()["redis_version"]
        print(f"payload {args.size} B, {args.seconds:.0f} s per row, Redis {version}")
        print(f"{'in flight':>9} {'pubs/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'RTT/pub':>8} {'cmds/pub':>8}"
              f" {'B in/pub':>9} {'B out/pub':>9}")
        for i, concurrency in enumerate(args.concurrency):
            r = uvloop.run(run(url, f"bench-{i}:", args.seconds, args.size, concurrency))
            print(f"{r['concurrency']:>9} {r['per_s']:>9.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}"
                  f" {r['round_trips']:>8.3f} {r['commands']:>8.2f} {r['bytes_in']:>9.0f} {r['bytes_out']:>9.0f}")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()

"""A subscriber node's cost over the Redis backplane against the memory broker.

Run: python bench/fleet_fanout.py [--clients 1000] [--count 2000] [--rate 0 --rate 200]
                                  [--burst 1 --burst 10] [--runs 1] [--pin-others]

For each rate (0 = as fast as the publisher's loop turns, ``--burst``
publications per turn; else publications per second, one per loop turn),
side by side:

- ``memory``: one hub (``hubbub.benchmark.servers hubbub-native``, the
  memory broker) publishing to itself in-process, as ``hubbub bench`` does.
- ``redis``: node B, a hub on its own redis-server (started here, loopback,
  no persistence) with the subscribers and no publisher; node A, another
  process with a RedisBroker hub and no subscribers, publishing the same
  publications one per loop turn without waiting for each answer (a busy
  application: many requests in flight), so what the backplane can batch it may.

The load generator (``hubbub.benchmark.loadgen``, picows WebSockets on the
fast port) is pinned to CPU 1, the subscriber node to CPU 0; node A and
Redis float. Reports the subscriber node's server CPU per delivery (node B
only: the cost of receiving from the backplane and fanning out) and
publish-to-receive latency (publisher's clock to subscriber's: one machine).
Redis round trips and bytes per publication come from INFO.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from backplane import free_port, own_redis  # noqa: E402

from hubbub.benchmark.run import _cpu, _wait_port  # noqa: E402


def publisher_main() -> None:
    """Node A: a hub on the Redis backplane publishing BENCH_COUNT publications."""
    import uvloop

    from hubbub import Config, Hub
    from hubbub.benchmark import publisher
    from hubbub.benchmark.servers import TOPIC

    async def main() -> None:
        hub = Hub(Config.from_env(dev=True))
        await hub.start()
        in_flight: set[asyncio.Task] = set()

        def publish(data) -> None:  # one per loop turn, not awaited: many in flight
            task = asyncio.ensure_future(hub.publish(TOPIC, data))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

        await publisher.run(publish)
        while in_flight:
            await asyncio.wait(set(in_flight))
        print("published", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def redis_totals(client) -> dict[str, int]:
    """Client round trips (scripts and stream reads) and bytes into / out of Redis so far."""
    stats = client.info("stats")
    commands = client.info("commandstats")
    # Commands a script runs count in commandstats too: only these are sent by clients.
    calls = sum(commands.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval", "xrange"))
    return {"calls": calls, "in": stats["total_net_input_bytes"], "out": stats["total_net_output_bytes"]}


def run_case(case: str, args, rate: float, burst: int, redis_url: str, workdir: Path) -> dict:
    port = free_port()
    go_file = workdir / f"go-{port}"
    env = {**os.environ, "BENCH_COUNT": str(args.count), "BENCH_BURST": str(burst), "BENCH_RATE": str(rate),
           "BENCH_SIZE": "100", "BENCH_GO_FILE": str(go_file), "HUBBUB_DEV": "1",
           "PYTHONUNBUFFERED": "1", "HUBBUB_BACKPLANE": "memory"}
    procs: list[subprocess.Popen] = []
    if case != "memory":
        env["HUBBUB_BACKPLANE"] = redis_url
    # redis: node B only subscribes, node A publishes; redis-self: one node
    # publishes through Redis (awaiting each) and hears its own publications back.
    node_b_env = {**env, "BENCH_COUNT": "0"} if case == "redis" else env
    server = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "hubbub.benchmark.servers",
                               "hubbub-native", str(port)], env=node_b_env, stdout=subprocess.DEVNULL,
                              stderr=open(workdir / f"server-{port}.log", "wb"), start_new_session=True)
    procs.append(server)
    try:
        _wait_port(port, server)
        if case == "redis":
            pin = ["taskset", "-c", "1"] if args.pin_others else []
            procs.append(subprocess.Popen([*pin, sys.executable, __file__, "--publisher"], env=env,
                                          stdout=subprocess.DEVNULL,
                                          stderr=open(workdir / f"publisher-{port}.log", "wb"),
                                          start_new_session=True))
        time.sleep(0.5)
        loadgen = subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, "-m", "hubbub.benchmark.loadgen", "--protocol", "ws",
             "--url", f"ws://127.0.0.1:{port}/ws?topic=bench.t", "--clients", str(args.clients),
             "--count", str(args.count)], env=env, stdout=subprocess.PIPE,
            stderr=open(workdir / f"loadgen-{port}.log", "wb"), text=True)
        if loadgen.stdout.readline().strip() != "ready":
            raise RuntimeError(f"load generator failed: {(workdir / f'loadgen-{port}.log').read_text()[-500:]}")
        client = __import__("redis").Redis.from_url(redis_url)
        redis_before = redis_totals(client)
        cpu_before = _cpu(server.pid)
        go_file.touch()
        output = json.loads(loadgen.stdout.readline())
        cpu = _cpu(server.pid) - cpu_before
        redis_after = redis_totals(client)
        loadgen.wait(30)
        received = output["received"]
        row = {"case": case, "rate": rate, "burst": burst, "received": received,
               "expected": output["expected"], "p50_ms": output["p50_ms"], "p99_ms": output["p99_ms"],
               "cpu_us_per_delivery": cpu / received * 1e6 if received else None,
               "deliveries_per_s": received / max(output["seconds"], 1e-9) if received else None}
        if case != "memory":
            pubs = max(1, args.count)
            row["round_trips_per_pub"] = (redis_after["calls"] - redis_before["calls"]) / pubs
            row["bytes_in_per_pub"] = (redis_after["in"] - redis_before["in"]) / pubs
            row["bytes_out_per_pub"] = (redis_after["out"] - redis_before["out"]) / pubs
        return row
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(5)


def fmt(value, digits=2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, action="append")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--case", action="append", choices=["memory", "redis", "redis-self"],
                        help="default: memory and redis (redis-self: one node publishing through Redis)")
    parser.add_argument("--burst", type=int, action="append",
                        help="publications per loop turn at saturation (rate 0); default 1")
    parser.add_argument("--pin-others", action="store_true",
                        help="pin Redis and the publishing node to CPU 1 (with the load generator)"
                             " so that the subscriber node has CPU 0 to itself")
    args = parser.parse_args()
    if args.publisher:
        publisher_main()
        return
    rates = args.rate or [0.0, 200.0]
    redis_url, redis_proc = own_redis()
    if args.pin_others:
        subprocess.run(["taskset", "-pc", "1", str(redis_proc.pid)], check=True, stdout=subprocess.DEVNULL)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"fleet-fanout-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        print("| publications | case | delivered / expected | deliveries/s | subscriber node CPU per"
              " delivery | p50 | p99 | Redis round trips / pub | bytes in / out per pub |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for _ in range(args.runs):
            shapes = [(rate, burst) for rate in rates for burst in ((args.burst or [1]) if not rate else [1])]
            for rate, burst in shapes:
                for case in args.case or ["memory", "redis"]:
                    row = run_case(case, args, rate, burst, redis_url, workdir)
                    per_turn = "one" if burst == 1 else f"{burst}"
                    shape = (f"{per_turn} per loop turn, saturated" if not rate
                             else f"{rate:g}/s, one per loop turn")
                    io = (f"{fmt(row['bytes_in_per_pub'], 0)} / {fmt(row['bytes_out_per_pub'], 0)}"
                          if case != "memory" else "-")
                    print(f"| {shape} | {case} | {row['received']:,} / {row['expected']:,} |"
                          f" {fmt(row['deliveries_per_s'], 0)} | {fmt(row['cpu_us_per_delivery'])} µs |"
                          f" {fmt(row['p50_ms'])} ms | {fmt(row['p99_ms'])} ms |"
                          f" {fmt(row.get('round_trips_per_pub'))} | {io} |", flush=True)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)


if __name__ == "__main__":
    main()

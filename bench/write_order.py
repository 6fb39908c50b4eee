"""Who waits for a round's writes: the flusher's write order, old and new, in one run.

    python bench/write_order.py [--clients 1000] [--count 500] [--rate 100] [--repeat 2]

The hub's fast port (``hubbub.benchmark.servers``' hub and in-process
publisher, pinned to CPU 0) with ``Flusher.rotate`` off ("arrival": a round
writes its connections in the order woken, the fan-out's subscriber order)
or on ("rotate": each round starts at its own point of that order), and
``--clients`` WebSocket subscribers in one process pinned to CPU 1, every
one of them timing every message (publish stamp to receipt). The two orders
alternate, ``--repeat`` times each.

Reported per order: the latency over all deliveries (p50, p99), and per
subscriber the median latency: the best and the worst subscriber's, and the
p99 of the worst subscriber. Writing in arrival order leaves the same
subscribers last every round; rotating spreads the wait over all of them,
while a round's latencies taken together stay what they were (the same
writes in the same time). Server CPU per delivery is user + system time of
the server while publishing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAMP = re.compile(rb'"t0":(\d+)[,}]')


def serve(order: str, port: int) -> None:
    import uvloop

    from hubbub.benchmark import servers
    from hubbub.core.flusher import Flusher

    Flusher.rotate = order == "rotate"
    uvloop.run(servers.hubbub_native(port))


async def clients(port: int, n: int, expected: int, idle: float) -> dict:
    from picows import WSListener, WSMsgType, ws_connect

    latencies: list[list[int]] = [[] for _ in range(n)]
    progress = asyncio.Event()

    class Reader(WSListener):
        def __init__(self, index: int) -> None:
            self.own = latencies[index]

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type == WSMsgType.TEXT:
                now = time.time_ns()
                for match in STAMP.finditer(frame.get_payload_as_bytes()):
                    self.own.append(now - int(match.group(1)))
                progress.set()

    gate = asyncio.Semaphore(100)
    held = []

    async def dial(index: int) -> None:
        async with gate:
            transport, _ = await ws_connect(lambda: Reader(index), f"ws://127.0.0.1:{port}/ws?topic=bench.t")
            held.append(transport)

    await asyncio.gather(*(dial(i) for i in range(n)))
    await asyncio.sleep(0.5)  # every subscription made before the first publication
    print("ready", flush=True)
    while sum(map(len, latencies)) < expected * n:
        progress.clear()
        try:
            await asyncio.wait_for(progress.wait(), idle)
        except TimeoutError:
            break
    for transport in held:
        transport.disconnect()
    return {"latencies": latencies}


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(order: str, args, workdir: Path) -> dict:
    port = _free_port()
    go = workdir / f"go-{port}"
    env = {**os.environ, "BENCH_COUNT": str(args.count), "BENCH_BURST": "1", "BENCH_RATE": str(args.rate),
           "BENCH_SIZE": "100", "BENCH_GO_FILE": str(go), "HUBBUB_DEV": "1", "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(["taskset", "-c", "0", sys.executable, __file__, "serve", "--order", order,
                               "--port", str(port)], env=env, stderr=open(workdir / f"server-{port}.log", "wb"))
    try:
        loadgen = subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, __file__, "clients", "--port", str(port),
             "--clients", str(args.clients), "--count", str(args.count)],
            env=env, stdout=subprocess.PIPE, text=True)
        line = loadgen.stdout.readline().strip()  # the clients wait for the server to listen
        if line != "ready":
            raise RuntimeError(f"clients failed ({line!r})")
        cpu = _cpu(server.pid)
        go.touch()
        result = json.loads(loadgen.stdout.readline())
        cpu = _cpu(server.pid) - cpu
        loadgen.wait(30)
    finally:
        server.kill()
        server.wait(10)
    per_client = [sorted(lat) for lat in result["latencies"] if lat]
    everything = sorted(x for lat in per_client for x in lat)
    received = len(everything)

    def pct(values, p):
        return values[min(len(values) - 1, int(p * len(values)))] / 1e6

    medians = sorted(statistics.median(lat) / 1e6 for lat in per_client)
    worst = max(per_client, key=statistics.median)
    return {"order": order, "received": received, "expected": args.clients * args.count,
            "p50": pct(everything, 0.5), "p99": pct(everything, 0.99),
            "best_median": medians[0], "worst_median": medians[-1], "worst_p99": pct(worst, 0.99),
            "cpu_us": cpu / max(received, 1) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", nargs="?", default="measure", choices=["measure", "serve", "clients"])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--order", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if args.role == "serve":
        serve(args.order, args.port)
        return
    if args.role == "clients":
        import uvloop

        async def connect_when_up():
            deadline = time.monotonic() + 30
            while True:  # the server process may not be listening yet
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
                    writer.close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            return await clients(args.port, args.clients, args.count, idle=3.0)

        sys.stdout.write(json.dumps(uvloop.run(connect_when_up())) + "\n")
        return
    workdir = Path(tempfile.mkdtemp(prefix="hubbub-order-"))
    rows = []
    for _ in range(args.repeat):
        for order in ("arrival", "rotate"):
            print(f"[{order}] ...", file=sys.stderr, flush=True)
            rows.append(run_once(order, args, workdir))
    print(f"\n{args.clients:,} WS subscribers x {args.rate:g} publications/s, {args.count} each"
          " (latency in ms, publish to receipt)")
    print("| write order | p50 | p99 | best subscriber's median | worst subscriber's median |"
          " worst subscriber's p99 | server CPU per delivery | lost |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['order']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['best_median']:.2f} | {r['worst_median']:.2f} |"
              f" {r['worst_p99']:.2f} | {r['cpu_us']:.2f} µs | {r['expected'] - r['received']:,} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Scale-out over the Redis backplane: one process against two, and latency across nodes.

Run: python bench/scale_out.py [--clients 2000] [--count 400] [--runs 1]
     python bench/scale_out.py --mode local [--clients 1000] [--count 400] [--runs 3]

Starts its own redis-server (free port, no persistence), then:

1. ``workers``: ``hubbub serve --workers 1`` and then ``--workers 2`` (Redis
   backplane both times), ``--clients`` WebSocket subscribers on the fast
   port (picows, ``hubbub.benchmark.loadgen``, spread over the workers by
   SO_REUSEPORT), ``--count`` publications POSTed to /publish in batches of
   10 by 4 concurrent publishers, as fast as the server takes them.
   Reports deliveries/s (first to last delivery), server CPU per delivery
   (every process of the server, Redis not included; Redis's own CPU is
   shown apart) and publish-to-receive latency.
2. ``across``: two single-worker nodes on different ports; 500 subscribers
   on node B, 200 publications/s POSTed to node A: publish-to-receive p50/p99
   across nodes, not saturated.

``--mode local`` (issue 21, no Redis): ``--workers 1`` (the in-process
memory broker) against ``--workers 2`` (the local broker process that
``serve`` starts), alternating, ``--runs`` times, the same load: one
publication per POST (one per loop turn), as fast as the server takes them,
then 200 publications/s. Server CPU counts every process of the server: the
Granian main process, the workers and the broker process.

For each Redis case, Redis round trips per publication (client requests from INFO
commandstats: EVALSHA, and XRANGE catch-ups; heartbeats included) and bytes
into / out of Redis per publication. Everything shares this machine's cores
(server, Redis, load generator, publisher): read the numbers as such.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
from backplane import free_port, own_redis  # noqa: E402

from hubbub.benchmark.publisher import payload  # noqa: E402
from hubbub.benchmark.run import _cpu  # noqa: E402

BATCH = 10
PUBLISHERS = 4


SERVER_CPUS: set[int] | None = None  # --pin: the server's processes on these cores only


def serve(url: str, workers: int, log: Path, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    while True:  # PORT and PORT+1 (the fast port) both free
        try:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    env = {**os.environ, "HUBBUB_BACKPLANE": url, "HUBBUB_PORT": str(port), "HUBBUB_DRAIN_GRACE": "0",
           "HUBBUB_MAX_CONNECTIONS": "20000", "HUBBUB_CONNECT_RATE": "100000",
           "HUBBUB_CLIENT_PUBLISH_RATE": "100000", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "hubbub.cli", "serve", "--dev", "--workers", str(workers)],
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, SERVER_CPUS)) if SERVER_CPUS else None)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                time.sleep(0.5 * workers)  # every worker up, not just the one that answered
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"hubbub serve did not start: {log.read_text()[-800:]}")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def loadgen(url: str, clients: int, count: int) -> subprocess.Popen:
    gen = subprocess.Popen([sys.executable, "-m", "hubbub.benchmark.loadgen", "--protocol", "ws", "--url", url,
                            "--clients", str(clients), "--count", str(count), "--sample", "20", "--idle", "5"],
                           stdout=subprocess.PIPE, text=True)
    if gen.stdout.readline().strip() != "ready":
        raise SystemExit("load generator failed")
    return gen


async def publish(base: str, count: int, rate: float = 0.0, batch: int = BATCH) -> int:
    """``count`` publications to topic ``bench`` in batches; returns how many were acknowledged."""
    acked = 0
    batches = [list(range(i, min(i + batch, count))) for i in range(0, count, batch)]
    interval = batch / rate if rate else 0.0
    started = time.monotonic()

    async def worker(mine: list[list[int]], offset: int) -> None:
        nonlocal acked
        async with httpx.AsyncClient(timeout=30) as client:
            for n, batch in enumerate(mine):
                if interval:
                    due = started + (n * PUBLISHERS + offset) * interval
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                body = [{"topic": "bench", "data": payload(i, 100)} for i in batch]
                response = await client.post(base + "/publish", json=body)
                response.raise_for_status()
                acked += len(response.json()["ids"])

    await asyncio.gather(*(worker(batches[k::PUBLISHERS], k) for k in range(PUBLISHERS)))
    return acked


def redis_counters(client: redis.Redis) -> dict:
    stats = client.info("stats")
    calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in client.info("commandstats").items()}
    cpu = client.info("cpu")
    return {"in": stats["total_net_input_bytes"], "out": stats["total_net_output_bytes"],
            "evalsha": calls.get("evalsha", 0), "xrange": calls.get("xrange", 0),
            "cpu": cpu["used_cpu_user"] + cpu["used_cpu_sys"]}


def per_publication(before: dict, after: dict, published: int) -> dict:
    return {"round_trips": (after["evalsha"] + after["xrange"] - before["evalsha"] - before["xrange"]) / published,
            "bytes_in": (after["in"] - before["in"]) / published,
            "bytes_out": (after["out"] - before["out"]) / published,
            "redis_cpu_s": after["cpu"] - before["cpu"]}


def workers_case(url: str, workers: int, clients: int, count: int, logs: Path) -> dict:
    client = redis.Redis.from_url(url)
    proc, port = serve(url, workers, logs / f"serve-w{workers}.log")
    try:
        gen = loadgen(f"ws://127.0.0.1:{port + 1}/ws?topic=bench", clients, count)
        time.sleep(1.0)
        cpu0, r0 = _cpu(proc.pid), redis_counters(client)
        acked = asyncio.run(publish(f"http://127.0.0.1:{port}", count))
        out = json.loads(gen.stdout.readline())
        cpu, r1 = _cpu(proc.pid) - cpu0, redis_counters(client)
        gen.wait(30)
    finally:
        stop(proc)
        client.close()
    return {"case": f"--workers {workers}", "clients": clients, "published": acked,
            "expected": out["expected"], "received": out["received"],
            "deliveries_per_s": out["received"] / max(out["seconds"], 1e-9),
            "server_cpu_s": cpu, "cpu_us_per_delivery": cpu / max(out["received"], 1) * 1e6,
            "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"], **per_publication(r0, r1, acked)}


def across_case(url: str, clients: int, count: int, rate: float, logs: Path) -> dict:
    client = redis.Redis.from_url(url)
    a, port_a = serve(url, 1, logs / "serve-a.log")
    b, port_b = serve(url, 1, logs / "serve-b.log")
    try:
        gen = loadgen(f"ws://127.0.0.1:{port_b + 1}/ws?topic=bench", clients, count)
        time.sleep(1.0)
        r0 = redis_counters(client)
        acked = asyncio.run(publish(f"http://127.0.0.1:{port_a}", count, rate))
        out = json.loads(gen.stdout.readline())
        r1 = redis_counters(client)
        gen.wait(30)
    finally:
        stop(a)
        stop(b)
        client.close()
    return {"case": f"node A -> node B, {rate:g} pub/s", "clients": clients, "published": acked,
            "expected": out["expected"], "received": out["received"],
            "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"], **per_publication(r0, r1, acked)}


def local_case(workers: int, clients: int, count: int, rate: float, logs: Path,
               own_broker: bool = False) -> dict:
    """``--workers N`` with no Redis: memory broker (N = 1) or the local broker (N > 1).

    ``own_broker``: a control, one worker on a local broker process started
    here (HUBBUB_LOCAL_BROKER), so the broker's own cost shows apart from
    what two workers on this machine's two cores cost."""
    from hubbub.backplane.local_server import LocalBrokerProcess

    broker_proc = LocalBrokerProcess(1000, on_death=lambda status: None) if own_broker else None
    env = {"HUBBUB_LOCAL_BROKER": broker_proc.path} if broker_proc else None
    proc, port = serve("memory", workers, logs / f"serve-local-w{workers}.log", env)
    cpu_of = (lambda: _cpu(proc.pid) + _cpu(broker_proc.proc.pid)) if broker_proc else (lambda: _cpu(proc.pid))
    try:
        gen = loadgen(f"ws://127.0.0.1:{port + 1}/ws?topic=bench", clients, count)
        time.sleep(1.0)
        perf = count_writes([proc.pid] + ([broker_proc.proc.pid] if broker_proc else [])) \
            if COUNT_WRITES else None
        cpu0 = cpu_of()  # Granian's main, its workers and the broker: the whole tree
        acked = asyncio.run(publish(f"http://127.0.0.1:{port}", count, rate, batch=1))
        out = json.loads(gen.stdout.readline())
        cpu = cpu_of() - cpu0
        writes = perf() if perf else None
        gen.wait(30)
    finally:
        stop(proc)
        if broker_proc:
            broker_proc.stop()
    broker = "local broker" if workers > 1 or own_broker else "memory broker"
    return {"case": f"--workers {workers} ({broker}), {f'{rate:g} pub/s' if rate else 'flat out'}",
            "clients": clients, "published": acked, "expected": out["expected"],
            "received": out["received"], "deliveries_per_s": out["received"] / max(out["seconds"], 1e-9),
            "server_cpu_s": cpu, "cpu_us_per_delivery": cpu / max(out["received"], 1) * 1e6,
            "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"], "write_syscalls": writes}


COUNT_WRITES = False  # --writes: count the server's write(2) calls with perf stat


def count_writes(pids: list[int]):
    """Start ``perf stat`` on every process of the server; returns a function that
    stops it and gives the number of write(2) calls they made meanwhile."""
    from hubbub.benchmark.run import _tree

    every = sorted({p for pid in pids for p in _tree(pid)})
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", "syscalls:sys_enter_write",
                             "-p", ",".join(map(str, every))], stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)  # attached

    def stop() -> int:
        perf.send_signal(2)
        return int(perf.communicate(timeout=10)[1].strip().splitlines()[-1].split(",")[0])

    return stop


def local_main(args: argparse.Namespace, logs: Path) -> None:
    rows = []
    for rate in args.rates:
        for _ in range(args.runs):
            for workers, own in ((1, False), (2, False), (1, True)):  # alternating: noise falls on all
                rows.append(local_case(workers, args.clients, args.count, rate, logs, own))
                print(json.dumps(rows[-1]), flush=True)
    print()
    pinned = f" (server on CPUs {sorted(SERVER_CPUS)}, load on the others)" if SERVER_CPUS else ""
    print(f"Machine: {os.cpu_count()} CPUs (shared){pinned}; command: `python bench/scale_out.py"
          f" --mode local --clients {args.clients} --count {args.count} --runs {args.runs}"
          f" --rates {','.join(f'{r:g}' for r in args.rates)}"
          f"{' --pin' if SERVER_CPUS else ''}{' --writes' if COUNT_WRITES else ''}`\n")
    print("| case | subscribers | delivered / expected | deliveries/s | server CPU per delivery"
          " | p50 | p99 | write(2) calls per delivery |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        writes = f"{r['write_syscalls'] / r['received']:.2f}" if r["write_syscalls"] else "-"
        print(f"| {r['case']} | {r['clients']:,} | {r['received']:,} / {r['expected']:,}"
              f" | {r['deliveries_per_s']:,.0f} | {r['cpu_us_per_delivery']:.2f} µs"
              f" | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {writes} |")
    print()
    def mean(prefix: str, rate: str) -> float:
        values = [r["cpu_us_per_delivery"] for r in rows
                  if r["case"].startswith(prefix) and r["case"].endswith(rate)]
        return sum(values) / len(values)

    for rate in [f"{r:g} pub/s" if r else "flat out" for r in args.rates]:
        one = mean("--workers 1 (memory", rate)
        print(f"{rate}: server CPU per delivery against --workers 1 (memory broker):"
              f" --workers 2 (local broker) {mean('--workers 2', rate) / one:.2f}x,"
              f" --workers 1 (local broker) {mean('--workers 1 (local', rate) / one:.2f}x"
              f" (means of {args.runs} runs each)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["redis", "local"], default="redis",
                        help="redis: workers and nodes over Redis; local: --workers 1 against"
                             " --workers 2 without Redis (the local broker)")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--logs", default="/tmp/hubbub-scale-bench")
    parser.add_argument("--rates", type=lambda v: [float(r) for r in v.split(",")],
                        default=[0.0, 200.0, 100.0],
                        help="--mode local: publication rates per second, 0 = flat out (default 0,200,100)")
    parser.add_argument("--writes", action="store_true",
                        help="--mode local: count the server's write(2) calls (needs perf)")
    parser.add_argument("--pin", action="store_true",
                        help="the server's processes on the first half of the cores, this script and"
                             " the load generator on the rest: every case's server gets the same cores")
    args = parser.parse_args()
    global COUNT_WRITES, SERVER_CPUS
    COUNT_WRITES = args.writes
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        half = max(1, len(cpus) // 2)
        SERVER_CPUS = set(cpus[:half])
        os.sched_setaffinity(0, set(cpus[half:]) or set(cpus))  # the load generator inherits it
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    if args.mode == "local":
        local_main(args, logs)
        return
    url, server = own_redis()
    rows = []
    try:
        for _ in range(args.runs):
            for workers in (1, 2):
                rows.append(workers_case(url, workers, args.clients, args.count, logs))
                print(json.dumps(rows[-1]), flush=True)
        rows.append(across_case(url, 500, 600, 200.0, logs))
        print(json.dumps(rows[-1]), flush=True)
    finally:
        server.kill()
    print()
    print(f"Machine: {os.cpu_count()} CPUs (shared); command: `python bench/scale_out.py"
          f" --clients {args.clients} --count {args.count} --runs {args.runs}`\n")
    print("| case | subscribers | delivered / expected | deliveries/s | server CPU per delivery"
          " | p50 | p99 | Redis round trips / pub | bytes in / out per pub |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        rate = f"{r['deliveries_per_s']:,.0f}" if "deliveries_per_s" in r else "-"
        cpu = f"{r['cpu_us_per_delivery']:.2f} µs" if "cpu_us_per_delivery" in r else "-"
        print(f"| {r['case']} | {r['clients']:,} | {r['received']:,} / {r['expected']:,} | {rate} | {cpu}"
              f" | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['round_trips']:.2f}"
              f" | {r['bytes_in']:.0f} / {r['bytes_out']:.0f} |")


if __name__ == "__main__":
    main()

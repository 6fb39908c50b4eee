"""What an idle connection costs the server: RSS and PSS per connection, with a slope.

    python bench/idle_memory.py [--kind ws --kind sse --kind naive] [--steps 10000,19900]
    python bench/idle_memory.py --kind ws --trace 2000   # tracemalloc: what each connection holds

One server process (``serve``: a Hub listening on its fast port, with the
benchmark's settings, or the naive picows loop) and client processes
(``clients``: picows WebSockets or raw-socket SSE readers, subscribed to one
topic, then silent). The server's RSS and PSS (``/proc/PID/smaps_rollup``)
are read with no client, then after each step's clients are all connected
(the server counts them itself, after a ``gc.collect()``); per connection is
the growth from no client divided by the clients, the slope is the growth
between the last two steps divided by the clients added, and 100,000 is the
last step's RSS plus the slope for the rest. The kernel's TCP memory
(``/proc/net/sockstat``, both ends of each socket as they are both on this
machine) is reported beside it: it is not in any process's RSS.

``--trace N``: the server runs under tracemalloc (25 frames), N clients
connect, and the growth is grouped by the first frame of each allocation's
traceback that lies in hubbub, picows or asyncio's own code, per connection.
tracemalloc sees the Python allocators (objects, PyMem_Malloc: picows'
buffers, uvloop's handles through PyMem_RawMalloc); the rest of RSS is
memory malloc'ed by C code directly and allocator slack.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

TOPIC = "bench.t"
PATHS = {"ws": f"/ws?topic={TOPIC}", "sse": f"/sse?topic={TOPIC}", "naive": "/"}
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
TRACE_FRAMES = 25


# -- the server ----------------------------------------------------------------
async def serve(kind: str, port: int, report_dir: Path, trace: bool) -> None:
    loop = asyncio.get_running_loop()
    if kind == "naive":
        from picows import WSListener, ws_create_server

        clients: set = set()

        class Listener(WSListener):
            def on_ws_connected(self, transport):
                clients.add(transport)

            def on_ws_disconnected(self, transport):
                clients.discard(transport)

        await ws_create_server(lambda request: Listener(), "127.0.0.1", port, backlog=4096)

        def count() -> int:
            return len(clients)
    else:
        from hubbub import Config, Hub

        # The benchmark's settings (hubbub.benchmark.servers), so the figures compare.
        hub = Hub(Config.from_env(dev=True, queue_max_messages=4096, queue_max_bytes=64 << 20,
                                  max_connections_per_user=1_000_000, connect_rate=1_000_000,
                                  history_size=16, heartbeat=60))
        await hub.listen("127.0.0.1", port)

        def count() -> int:
            return len(hub.core.connections)

    reports = iter(range(1_000_000))

    def report() -> None:
        """SIGUSR1: collect, then write what is alive (and a tracemalloc snapshot)."""
        gc.collect()
        index = next(reports)
        types = Counter(type(o).__qualname__ for o in gc.get_objects())
        if trace:
            tracemalloc.take_snapshot().dump(str(report_dir / f"snapshot-{index}"))
        path = report_dir / f"report-{index}.json"
        path.with_suffix(".tmp").write_text(json.dumps({"connections": count(), "types": types}))
        path.with_suffix(".tmp").rename(path)

    loop.add_signal_handler(signal.SIGUSR1, report)
    (report_dir / "listening").touch()
    await asyncio.Event().wait()


# -- the clients -------------------------------------------------------------------
class SSEReader(asyncio.Protocol):
    def __init__(self, request: bytes, ready: asyncio.Future) -> None:
        self.request, self.ready, self.head = request, ready, b""

    def connection_made(self, transport) -> None:
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self.head += data
            if b"\r\n\r\n" in self.head:
                self.head = b""
                self.ready.set_result(True)

    def connection_lost(self, exc) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before the response head"))


async def clients(kind: str, port: int, n: int, source: str) -> None:
    from picows import WSListener, ws_connect

    loop = asyncio.get_running_loop()
    held = []
    gate = asyncio.Semaphore(200)  # connect in waves, not one SYN flood

    async def dial() -> None:
        async with gate:
            ready = loop.create_future()
            if kind == "sse":
                request = (f"GET {PATHS['sse']} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           f"Accept: text/event-stream\r\n\r\n").encode()
                transport, _ = await loop.create_connection(lambda: SSEReader(request, ready), "127.0.0.1",
                                                            port, local_addr=(source, 0))
            else:
                class Reader(WSListener):
                    def on_ws_connected(self, transport):
                        ready.set_result(True)

                transport, _ = await ws_connect(Reader, f"ws://127.0.0.1:{port}{PATHS[kind]}",
                                                local_addr=(source, 0))
            await asyncio.wait_for(ready, 30)
            held.append(transport)

    await asyncio.gather(*(dial() for _ in range(n)))
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # hold them until the driver closes stdin


# -- the driver ---------------------------------------------------------------------
def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields["Rss"], fields["Pss"]


def tcp_mem_kib() -> int:
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            parts = line.split()
            return int(parts[parts.index("mem") + 1]) * PAGE_KIB
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Server:
    def __init__(self, kind: str, trace: bool) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hubbub-idle-"))
        self.port = free_port()
        self.reports = 0
        command = [sys.executable, __file__, "serve", "--kind", kind, "--port", str(self.port),
                   "--report-dir", str(self.dir)] + (["--traced"] if trace else [])
        self.proc = subprocess.Popen(command, stderr=open(self.dir / "server.log", "wb"))
        wait_for(lambda: (self.dir / "listening").exists() or self.proc.poll() is not None, "the server")
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited: {(self.dir / 'server.log').read_text()[-800:]}")

    def report(self, expect: int) -> dict:
        """Ask for a report until the server counts ``expect`` connections; then its memory."""
        deadline = time.monotonic() + 60
        while True:
            path = self.dir / f"report-{self.reports}.json"
            self.proc.send_signal(signal.SIGUSR1)
            wait_for(path.exists, "a report")
            self.reports += 1
            report = json.loads(path.read_text())
            if report["connections"] == expect or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if report["connections"] != expect:
            raise RuntimeError(f"server counts {report['connections']} connections, expected {expect}")
        time.sleep(0.5)  # let the allocator settle after the collection
        rss, pss = memory_kib(self.proc.pid)
        report.update(rss_kib=rss, pss_kib=pss, tcp_mem_kib=tcp_mem_kib(), snapshot=self.reports - 1)
        return report

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def open_clients(kind: str, port: int, n: int) -> subprocess.Popen:
    # A fresh loopback source address per batch: a rerun never meets the
    # previous run's TIME_WAIT ports.
    source = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
    proc = subprocess.Popen([sys.executable, __file__, "clients", "--kind", kind, "--port", str(port),
                             "--n", str(n), "--source", source],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise RuntimeError(f"clients failed to connect ({line!r})")
    return proc


def measure(kind: str, steps: list[int]) -> dict:
    server = Server(kind, trace=False)
    held = []
    try:
        rows = [dict(server.report(0), clients=0)]
        for step in steps:
            held.append(open_clients(kind, server.port, step - rows[-1]["clients"]))
            rows.append(dict(server.report(step), clients=step))
    finally:
        for proc in held:
            proc.stdin.close()
        server.stop()
        for proc in held:
            proc.wait(30)
    base = rows[0]
    for row in rows[1:]:
        n = row["clients"]
        row["rss_per_conn_kib"] = (row["rss_kib"] - base["rss_kib"]) / n
        row["pss_per_conn_kib"] = (row["pss_kib"] - base["pss_kib"]) / n
        row["tcp_per_conn_kib"] = (row["tcp_mem_kib"] - base["tcp_mem_kib"]) / n
    last, before = rows[-1], rows[-2]
    slope = (last["rss_kib"] - before["rss_kib"]) / (last["clients"] - before["clients"])
    return {"kind": kind, "rows": rows, "slope_kib": slope,
            "rss_100k_mib": (last["rss_kib"] + (100_000 - last["clients"]) * slope) / 1024,
            "types": Counter(last["types"]) - Counter(base["types"])}


def _owner(trace: tracemalloc.Traceback) -> str:
    """The allocation's innermost frame in code we can name."""
    for frame in reversed(trace):  # a Traceback runs from the oldest frame to the newest
        name = frame.filename
        if "/hubbub/" in name or "/picows/" in name or "/asyncio/" in name or "/uvloop/" in name:
            short = name.split("/src/hubbub/")[-1].split("site-packages/")[-1]
            return f"{short}:{frame.lineno}"
    frame = trace[-1]
    return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"


def trace(kind: str, n: int) -> dict:
    server = Server(kind, trace=True)
    proc = None
    try:
        before = server.report(0)
        proc = open_clients(kind, server.port, n)
        after = server.report(n)
    finally:
        if proc is not None:
            proc.stdin.close()
        server.stop()
        if proc is not None:
            proc.wait(30)
    first = tracemalloc.Snapshot.load(str(server.dir / f"snapshot-{before['snapshot']}"))
    last = tracemalloc.Snapshot.load(str(server.dir / f"snapshot-{after['snapshot']}"))
    grown: Counter = Counter()
    blocks: Counter = Counter()
    for stat in last.compare_to(first, "traceback"):
        if stat.size_diff:
            grown[_owner(stat.traceback)] += stat.size_diff
            blocks[_owner(stat.traceback)] += stat.count_diff
    total = sum(grown.values())
    return {"kind": kind, "clients": n, "traced_per_conn": total / n,
            "rss_per_conn_kib": (after["rss_kib"] - before["rss_kib"]) / n,
            "sites": [(site, size / n, blocks[site] / n) for site, size in grown.most_common()],
            "types": Counter(after["types"]) - Counter(before["types"])}


def print_measure(result: dict) -> None:
    print(f"\n{result['kind']}: per connection (RSS / PSS growth from no client, kernel TCP memory)")
    print("| connections | server RSS | RSS per connection | PSS per connection | kernel TCP mem per connection |")
    print("| --- | --- | --- | --- | --- |")
    for row in result["rows"][1:]:
        print(f"| {row['clients']:,} | {row['rss_kib'] / 1024:,.1f} MiB | {row['rss_per_conn_kib']:.2f} KiB |"
              f" {row['pss_per_conn_kib']:.2f} KiB | {row['tcp_per_conn_kib']:.2f} KiB |")
    print(f"slope between the last two steps: {result['slope_kib']:.2f} KiB a connection;"
          f" 100,000 connections: ~{result['rss_100k_mib']:,.0f} MiB RSS")
    print("objects the collector tracks, per connection:",
          ", ".join(f"{name} {count / result['rows'][-1]['clients']:.2f}"
                    for name, count in result["types"].most_common(12)))


def print_trace(result: dict, top: int) -> None:
    n = result["clients"]
    print(f"\n{result['kind']}: tracemalloc, {n:,} connections: {result['traced_per_conn']:,.0f} B traced"
          f" per connection ({result['rss_per_conn_kib']:.2f} KiB RSS, tracing included)")
    print("| where (first frame in hubbub, picows, asyncio, uvloop) | bytes per connection | blocks |")
    print("| --- | --- | --- |")
    for site, size, count in result["sites"][:top]:
        print(f"| {site} | {size:,.0f} | {count:.2f} |")
    print("objects the collector tracks, per connection:",
          ", ".join(f"{name} {count / n:.2f}" for name, count in result["types"].most_common(12)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", nargs="?", default="measure", choices=["measure", "serve", "clients"])
    parser.add_argument("--kind", action="append", choices=["ws", "sse", "naive"],
                        help="hubbub native WS, hubbub native SSE, the naive picows loop (default: all)")
    parser.add_argument("--steps", help="connection counts, comma-separated"
                                        " (default: 10000 and the most ulimit -n allows, at most 20,000)")
    parser.add_argument("--trace", type=int, metavar="N", help="tracemalloc breakdown at N connections instead")
    parser.add_argument("--top", type=int, default=25, help="allocation sites shown with --trace")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--report-dir", help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    if args.role == "serve":
        if args.traced:
            tracemalloc.start(TRACE_FRAMES)
        uvloop.run(serve(args.kind[0], args.port, Path(args.report_dir), args.traced))
        return
    if args.role == "clients":
        uvloop.run(clients(args.kind[0], args.port, args.n, args.source))
        return
    kinds = args.kind or ["ws", "sse", "naive"]
    if args.steps:
        steps = [int(s) for s in args.steps.split(",")]
    else:
        most = min(20_000, hard) - 100  # the server's listening socket, logs, the loop's own fds
        steps = [10_000, most] if most > 10_000 else [most // 2, most]
    results = []
    for kind in kinds:
        if args.trace:
            result = trace(kind, args.trace)
            print_trace(result, args.top)
        else:
            result = measure(kind, steps)
            print_measure(result)
        results.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()

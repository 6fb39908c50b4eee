"""Do stalled readers on the ASGI port slow everyone else? (issue 14)

    python bench/stalled_readers.py [--stalled 0 5 30] [--clients 300] [--count 600]

For each stalled count: a fresh ``hubbub serve --dev``; that many WebSocket
readers on the ASGI port that never read (4 KiB receive buffer); CLIENTS
healthy WebSocket subscribers on the fast port (the load generator,
measuring publish-to-receive latency); COUNT publications of SIZE bytes (8 KB) at 100/s
through ``POST /publish``. Prints p50/p99/max of the healthy subscribers and
the hub's queued/dropped counts, one row per stalled count, so the rows of
one run compare side by side.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.server import HubProcess  # noqa: E402

HANDSHAKE = (b"GET /ws?topic=bench.t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def run(stalled: int, clients: int, count: int, size: int) -> dict:
    hub = HubProcess(env={"HUBBUB_HEARTBEAT": "60"}).start(Path(tempfile.mkdtemp()))
    try:
        readers = []
        for _ in range(stalled):
            s = socket.create_connection(("127.0.0.1", hub.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(HANDSHAKE)
            s.recv(200)
            readers.append(s)
        loadgen = subprocess.Popen(
            [sys.executable, "-m", "hubbub.benchmark.loadgen", "--protocol", "ws",
             "--url", f"ws://127.0.0.1:{hub.fast_port}/ws?topic=bench.t", "--clients", str(clients),
             "--count", str(count), "--sample", "50"], stdout=subprocess.PIPE, text=True)
        assert loadgen.stdout.readline().strip() == "ready"
        pad = "x" * size
        with httpx.Client(timeout=10) as client:
            due = time.monotonic()
            for seq in range(count):
                body = {"topic": "bench.t", "data": {"seq": seq, "t0": time.time_ns(), "pad": pad}}
                assert client.post(hub.base + "/publish", json=body).status_code == 200
                due += 0.01
                time.sleep(max(0.0, due - time.monotonic()))
        out = json.loads(loadgen.stdout.readline())
        stats = hub.stats()
        for s in readers:
            s.close()
        return {"stalled": stalled, "received": out["received"], "expected": out["expected"],
                "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"], "max_ms": out["max_ms"],
                "queued": stats["queued"], "dropped": stats["dropped"]}
    finally:
        hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stalled", type=int, nargs="+", default=[0, 5, 30])
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--count", type=int, default=600)
    # 8 KB x 600 is ~4.8 MB per reader: past what the kernel buffers for a
    # socket (tcp_wmem tops out at 4 MiB), so the readers really stall.
    parser.add_argument("--size", type=int, default=8000, help="bytes of padding per publication")
    args = parser.parse_args()
    print("| stalled ASGI readers | healthy fast-port subscribers: received | p50 | p99 | max |"
          " hub queued / dropped at the end |")
    print("| --- | --- | --- | --- | --- | --- |")
    for stalled in args.stalled:
        r = run(stalled, args.clients, args.count, args.size)
        print(f"| {r['stalled']} | {r['received']:,} of {r['expected']:,} | {r['p50_ms']:.2f} ms |"
              f" {r['p99_ms']:.2f} ms | {r['max_ms']:.2f} ms | {r['queued']:,} / {r['dropped']:,} |", flush=True)


if __name__ == "__main__":
    main()

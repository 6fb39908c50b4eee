"""Notification store throughput: creates/s, and listing 50 of a user's 10,000.

Run: python bench/inbox.py [--creates 1000] [--fill 10000] [--stores sqlite,postgres]
                           [--postgres postgresql://postgres@127.0.0.1:5432/test]

For each store (SQLite in a temp directory, WAL, synchronous=FULL; the
PostgreSQL server in a throwaway schema), on uvloop as the hub runs:

- create, one at a time: creates/s and the latency of one create (each is a
  durable commit);
- create, 16 at once for 16 users: creates/s when many requests arrive together;
- one user with ``--fill`` notifications: latency of listing the newest 50,
  a page from the middle (``before=``), 50 unread ones, and the unread count.

The rows above measure the store alone. ``--live N`` (default 300) adds,
per store, the whole path through a real ``hubbub serve``: ``POST
/notifications`` over HTTP to the ``notification`` frame arriving on a
WebSocket of that user on the fast port (create -> live delivery), one at a
time, N rounds after 20 warm-up rounds.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from hubbub.services.inbox import NewNotification, open_store  # noqa: E402

CONCURRENCY = 16
LIST_ROUNDS = 300


def note(user: str, i: int) -> NewNotification:
    return NewNotification(user=user, title=f"Order {i} shipped", message="Your parcel is on its way",
                           level="success", data={"order": i, "carrier": "ups"})


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def p99(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99) - 1]


async def timed(call, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


async def measure(url: str, creates: int, fill: int) -> list[tuple[str, str, str, str]]:
    store = open_store(url, max_per_user=10**9)
    await store.open()
    rows = []
    try:
        latencies = []
        start = time.perf_counter()
        for i in range(creates):
            t0 = time.perf_counter()
            await store.create(note("seq", i))
            latencies.append(time.perf_counter() - t0)
        rate = creates / (time.perf_counter() - start)
        rows.append(("create, one at a time", f"{rate:,.0f}/s", ms(statistics.median(latencies)),
                     ms(p99(latencies))))

        async def worker(w: int, count: int) -> None:
            for i in range(count):
                await store.create(note(f"user{w}", i))
        start = time.perf_counter()
        await asyncio.gather(*(worker(w, creates // CONCURRENCY) for w in range(CONCURRENCY)))
        rate = (creates // CONCURRENCY) * CONCURRENCY / (time.perf_counter() - start)
        rows.append((f"create, {CONCURRENCY} at once", f"{rate:,.0f}/s", "", ""))

        # The big inbox is filled concurrently (the quickest way in); not timed.
        async def filler(w: int) -> None:
            for i in range(w, fill, CONCURRENCY):
                await store.create(note("heavy", i))
        await asyncio.gather(*(filler(w) for w in range(CONCURRENCY)))
        newest = await store.list("heavy", limit=fill)
        assert len(newest) == fill, len(newest)
        middle = int(newest[fill // 2]["id"])
        for record in newest[::2]:  # half read, so unread=1 has to skip over some
            await store.mark_read("heavy", int(record["id"]))

        for name, call in (
            (f"list newest 50 of {fill:,}", lambda: store.list("heavy", limit=50)),
            (f"list 50 before the middle of {fill:,}", lambda: store.list("heavy", limit=50, before_id=middle)),
            (f"list 50 unread of {fill:,}", lambda: store.list("heavy", limit=50, unread_only=True)),
            (f"unread count ({fill // 2:,} unread)", lambda: store.unread_count("heavy")),
        ):
            samples = await timed(call, LIST_ROUNDS)
            rows.append((name, f"{len(samples) / sum(samples):,.0f}/s", ms(statistics.median(samples)),
                         ms(p99(samples))))
    finally:
        await store.close()
    return rows


async def measure_live(url: str, rounds: int) -> list[tuple[str, str, str, str]]:
    """create -> live delivery through a real hub process (Granian + the native listener)."""
    import json
    import os
    import socket
    import subprocess

    import httpx
    import jwt
    import websockets

    def free(port: int) -> bool:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    port = 20000
    while not (free(port) and free(port + 1)):  # PORT and FAST_PORT
        port += 2
    secret = "bench-secret-0123456789-0123456789"
    env = {**os.environ, "HUBBUB_PORT": str(port), "HUBBUB_FAST_PORT": str(port + 1),
           "HUBBUB_STORE": url, "HUBBUB_JWT_SECRET": secret, "HUBBUB_DRAIN_GRACE": "0"}
    with tempfile.TemporaryDirectory() as directory:
        env["HUBBUB_DATA_DIR"] = directory
        hub = subprocess.Popen([sys.executable, "-m", "hubbub.cli", "serve", "--dev"], env=env,
                               stdout=subprocess.DEVNULL, stderr=sys.stderr)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                user_token = jwt.encode({"sub": "live", "exp": int(time.time()) + 3600}, secret)
                ws_url = f"ws://127.0.0.1:{port + 1}/ws?token={user_token}"
                for _ in range(600):  # until the hub and its fast listener are up
                    try:
                        await (await websockets.connect(ws_url)).close()
                        break
                    except OSError:
                        await asyncio.sleep(0.1)
                async with websockets.connect(ws_url) as ws:
                    async def delivered() -> None:
                        while True:
                            for line in (await ws.recv()).split("\n"):
                                if json.loads(line).get("op") == "notification":
                                    return
                    samples = []
                    for i in range(rounds + 20):
                        t0 = time.perf_counter()
                        post = asyncio.ensure_future(client.post("/notifications", json={
                            "user": "live", "title": f"Order {i}", "message": "shipped"}))
                        await delivered()
                        samples.append(time.perf_counter() - t0)
                        assert (await post).status_code == 201
                    samples = samples[20:]
        finally:
            hub.terminate()
            hub.wait(15)
    return [("create -> live WS delivery (HTTP + store + fan-out)", f"{len(samples) / sum(samples):,.0f}/s",
             ms(statistics.median(samples)), ms(p99(samples)))]


def postgres_schema(url: str):
    """A throwaway schema and the URL that uses it; the drop function."""
    import urllib.parse

    import psycopg

    schema = "hubbub_bench_" + uuid.uuid4().hex[:8]
    admin = psycopg.connect(url, autocommit=True)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in url else "?"

    def drop() -> None:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()
    return url + sep + "options=" + urllib.parse.quote(f"-csearch_path={schema}"), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--creates", type=int, default=1000)
    parser.add_argument("--fill", type=int, default=10_000)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--live", type=int, default=300, help="create -> delivery rounds; 0: skip")
    args = parser.parse_args()

    table = []
    for kind in args.stores.split(","):
        if kind == "sqlite":
            with tempfile.TemporaryDirectory() as directory:
                rows = uvloop.run(measure(f"sqlite:///{directory}/bench.db", args.creates, args.fill))
                if args.live:
                    rows += uvloop.run(measure_live(f"sqlite:///{directory}/live.db", args.live))
        elif kind == "postgres":
            url, drop = postgres_schema(args.postgres)
            try:
                rows = uvloop.run(measure(url, args.creates, args.fill))
            finally:
                drop()
            if args.live:
                url, drop = postgres_schema(args.postgres)
                try:
                    rows += uvloop.run(measure_live(url, args.live))
                finally:
                    drop()
        else:
            parser.error(f"unknown store {kind!r}")
        table += [(kind, *row) for row in rows]

    header = ("store", "operation", "rate", "median ms", "p99 ms")
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *table]:
        print("  ".join(str(cell).ljust(w) if i < 2 else str(cell).rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))))


if __name__ == "__main__":
    main()

"""The load generator: N clients of one protocol, counting what they receive.

    python -m hubbub.benchmark.loadgen --protocol ws|sse|socketio --url URL \
        --clients N --count M [--sample 20] [--idle 3]

Clients are picows WebSockets (also for Socket.IO, speaking Engine.IO v4) or
raw asyncio sockets for SSE. Every message carries `"seq":` (counted in the
raw bytes, whatever the envelope) and `"t0":` (publish time, ns); `--sample`
clients, spread evenly over the connection order, also read every `t0` for
the latency figures. Prints `ready` once all clients are connected, then one
JSON line with the results.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from urllib.parse import urlsplit

import orjson
import uvloop
from picows import WSListener, WSMsgType, ws_connect

MARK = b'"seq":'
STAMP = re.compile(rb'"t0":(\d+)[,}]')  # publish time (ns); the terminator proves it is whole


class Stats:
    def __init__(self, count: int) -> None:
        self.count = count
        self.received = 0
        self.latencies: list[int] = []
        self.first = 0
        self.last = 0
        self.progress = asyncio.Event()

    def got(self, n: int) -> None:
        if n:
            now = time.perf_counter()
            self.first = self.first or now
            self.last = now
            self.received += n
            self.progress.set()

    def stamps(self, data: bytes) -> int:
        """Record the latency of every whole stamp in ``data``; returns where the last ended."""
        now = time.time_ns()
        end = 0
        for match in STAMP.finditer(data):
            self.latencies.append(now - int(match.group(1)))
            end = match.end()
        return end


class WSClient(WSListener):
    def __init__(self, stats: Stats, sample: bool, socketio: bool, ready: asyncio.Future) -> None:
        self.stats, self.sample, self.socketio, self.ready = stats, sample, socketio, ready

    def on_ws_connected(self, transport) -> None:
        if not self.socketio and not self.ready.done():
            self.ready.set_result(True)

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        data = frame.get_payload_as_bytes()
        if self.socketio:
            if data == b"2":  # Engine.IO ping
                transport.send(WSMsgType.TEXT, b"3")
                return
            if data.startswith(b"0{"):  # Engine.IO open: join the default namespace
                transport.send(WSMsgType.TEXT, b"40")
                return
            if data.startswith(b"40") and not self.ready.done():
                self.ready.set_result(True)
                return
        self.stats.got(data.count(MARK))
        if self.sample:
            self.stats.stamps(data)


class SSEClient(asyncio.Protocol):
    def __init__(self, stats: Stats, sample: bool, request: bytes, ready: asyncio.Future) -> None:
        self.stats, self.sample, self.request, self.ready = stats, sample, request, ready
        self.carry = b""
        self.buffer = b""
        self.head_done = False

    def connection_made(self, transport) -> None:
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.head_done:
            self.buffer += data
            if b"\r\n\r\n" not in self.buffer:
                return
            self.head_done = True
            data = self.buffer.split(b"\r\n\r\n", 1)[1]
            self.buffer = b""
            if not self.ready.done():
                self.ready.set_result(True)
        # An occurrence of MARK (6 bytes) never lies wholly inside a 5-byte carry.
        self.stats.got((self.carry + data).count(MARK))
        self.carry = data[-5:]
        if self.sample:  # a stamp may straddle two reads: keep the unread tail
            self.buffer += data
            end = self.stats.stamps(self.buffer)
            self.buffer = self.buffer[max(end, len(self.buffer) - 64):]


# One source address has ~28k ephemeral ports: past that, clients dial from
# further loopback addresses (127.0.0.2, .3, ...), as a 100k-connection run needs.
CLIENTS_PER_SOURCE = 20_000


def source_address(index: int) -> tuple[str, int] | None:
    block = index // CLIENTS_PER_SOURCE
    return None if block == 0 else (f"127.0.0.{1 + block}", 0)


def is_sampled(index: int, clients: int, sample: int) -> bool:
    """Whether client ``index`` reads every stamp: ``sample`` clients spread evenly
    over the connection order. (The first ``sample`` would be the subscribers a
    server that writes in subscription order always writes first: their
    latency is the best of each round, not a fair sample of it.)"""
    step = max(1, clients // max(1, sample))
    return index % step == 0 and index // step < sample


async def connect_one(args, stats: Stats, index: int) -> object:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    sample = is_sampled(index, args.clients, args.sample)
    local_addr = source_address(index)
    if args.protocol == "sse":
        url = urlsplit(args.url)
        target = url.path + ("?" + url.query if url.query else "")
        request = f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode()
        transport, _ = await loop.create_connection(lambda: SSEClient(stats, sample, request, ready),
                                                    url.hostname, url.port, local_addr=local_addr)
    else:
        transport, _ = await ws_connect(
            lambda: WSClient(stats, sample, args.protocol == "socketio", ready), args.url,
            max_frame_size=1 << 30, **({"local_addr": local_addr} if local_addr else {}))
    await asyncio.wait_for(ready, 30)
    return transport


async def main(args) -> dict:
    stats = Stats(args.count)
    transports = []
    semaphore = asyncio.Semaphore(200)  # connect in waves, not one SYN flood

    async def dial(index: int):
        async with semaphore:
            transports.append(await connect_one(args, stats, index))

    await asyncio.gather(*(dial(i) for i in range(args.clients)))
    print("ready", flush=True)
    expected = args.clients * args.count
    while stats.received < expected:
        stats.progress.clear()
        try:
            await asyncio.wait_for(stats.progress.wait(), args.idle)
        except TimeoutError:
            break
    if args.hold:
        await asyncio.sleep(args.hold)
    latencies = sorted(stats.latencies)

    def pct(p: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] / 1e6 if latencies else None

    for transport in transports:
        (transport.disconnect if hasattr(transport, "disconnect") else transport.close)()
    return {"clients": args.clients, "expected": expected, "received": stats.received,
            "seconds": (stats.last - stats.first) if stats.received else 0.0,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": latencies[-1] / 1e6 if latencies else None,
            "latency_samples": latencies[:: max(1, len(latencies) // 2000)]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["ws", "sse", "socketio"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--idle", type=float, default=3.0, help="give up after this long without progress")
    parser.add_argument("--hold", type=float, default=0.0, help="stay connected this long at the end")
    arguments = parser.parse_args()
    result = uvloop.run(main(arguments))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")

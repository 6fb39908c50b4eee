"""The hub's own CPU per delivery at one publication per round, without the kernel.

    python bench/round_cost.py [--subscribers 1000] [--rounds 2000] [--repeat 5]

At a steady rate each publication is its own write round, and a delivery
costs the hub its share of the fan-out, the flusher's round, the
connection's flush and the transport's framing, plus a send(2) (~3.5-4.5 µs
of kernel TCP on loopback, see "Where a loopback send's CPU goes"). The
kernel part is the same for every server and drowns the hub's part in
end-to-end runs on a shared machine, so this measures the hub's part alone:
one hub in this process on uvloop (memory broker), fast-port WebSocket
transports (``NativeWSTransport``: the real framing and write path) whose
socket is a sink made of C callables, one publication per loop turn through
``hub.publish``. It reports process CPU time per delivery (median of
``--repeat`` phases). Run it against two trees (``PYTHONPATH=<tree>/src``)
to compare them; the figure is meant for such ratios.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import statistics
import time

import uvloop

IDLE = 0.0015  # seconds between publications (flusher.BUSY_GAP is 1 ms)


class SinkSocket:
    """What NativeWSTransport uses of uvloop's TCPTransport, as C callables:
    writes go nowhere, the buffer is always empty."""

    __slots__ = ("write", "writelines", "get_write_buffer_size")

    def __init__(self) -> None:
        sink = collections.deque(maxlen=0)
        self.write = sink.append
        self.writelines = sink.extend
        self.get_write_buffer_size = itertools.repeat(0).__next__


async def phase(hub, rounds: int, subscribers: int) -> float:
    payload = {"n": 0, "text": "x" * 60}  # ~100-byte envelopes, as the end-to-end benchmarks
    flusher = hub.core.flusher
    first_round = flusher.rounds
    before = time.process_time()
    for n in range(rounds):
        payload["n"] = n
        await hub.publish("bench.t", payload)
        await asyncio.sleep(0)  # the flusher's round runs on this loop turn
        # Idle past BUSY_GAP, as the loop does between publications of a
        # steady rate: the next one is written at once, in a round of its own.
        await asyncio.sleep(IDLE)
    cost = (time.process_time() - before) / (rounds * subscribers)
    assert flusher.rounds - first_round == rounds, "publications shared rounds: not the shape measured"
    return cost


async def main(args) -> None:
    from hubbub import Config, Hub
    from hubbub.auth import DEV_ANONYMOUS
    from hubbub.transports.native import NativeWSTransport
    from hubbub.wire import WS

    hub = Hub(Config(dev=True))
    await hub.start()
    conns = []
    for _ in range(args.subscribers):
        transport = NativeWSTransport(None, None)  # no server: never handshaken, only written
        transport.socket = SinkSocket()
        conn = transport.conn = hub.core.connection(WS, DEV_ANONYMOUS, transport)
        hub.core.attach(conn)
        hub.core.subscribe(conn, "bench.t")
        conns.append(conn)
    await phase(hub, args.rounds // 10, args.subscribers)  # warm up: caches, allocator
    costs = [await phase(hub, args.rounds, args.subscribers) for _ in range(args.repeat)]
    for conn in conns:  # gone, as a peer that left: nothing to close on a sink
        conn.lost()
    await hub.stop()
    print(f"hub CPU per delivery, one publication per round to {args.subscribers:,} WS subscribers: "
          f"median {statistics.median(costs) * 1e9:.0f} ns (phases: "
          + ", ".join(f"{c * 1e9:.0f}" for c in costs) + ")")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    uvloop.run(main(parser.parse_args()))

"""A backplane node in its own process, for the multi-process tests.

    python node.py URL PREFIX publish COUNT TOTAL  -> publishes COUNT (8 at a time), waits
        until it has received TOTAL publications, prints them as JSON lines and exits
    python node.py URL PREFIX blast COUNT SIZE     -> publishes COUNT publications of SIZE
        bytes (32 at a time, retrying a 503), prints the acknowledged seqs as JSON and exits
    python node.py URL PREFIX present TOPIC USER TTL -> marks USER present on TOPIC, prints
        "ready" and stays until killed

It prints "started" once its broker is connected, so the test can start the
publishers together.
"""
from __future__ import annotations

import asyncio
import json
import sys

from hubbub.backplane import BackplaneUnavailable, RedisBroker


async def publish(broker: RedisBroker, count: int, total: int) -> None:
    received: list[tuple[str, int, str]] = []
    done = asyncio.Event()

    def on_publication(seq, payload):
        received.append((broker.epoch, seq, payload.decode()))
        if len(received) >= total:
            done.set()

    await broker.start(on_publication)
    print("started", flush=True)
    sys.stdin.readline()  # the test says go once every node is connected
    name = broker.node
    acked = []
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        async with sem:
            acked.append((await broker.publish(f"{name}/{i}".encode()))[1])

    await asyncio.gather(*(one(i) for i in range(count)))
    await asyncio.wait_for(done.wait(), 30)
    await broker.stop()
    print(json.dumps({"acked": acked, "received": received}), flush=True)


async def blast(broker: RedisBroker, count: int, size: int) -> None:
    await broker.start(lambda seq, payload: None)
    sem = asyncio.Semaphore(32)
    acked = []

    async def one(i: int) -> None:
        async with sem:
            while True:
                try:
                    acked.append((await broker.publish(b"%08d" % i + b"x" * (size - 8)))[1])
                    return
                except BackplaneUnavailable:  # this node's own subscription was dropped too
                    await asyncio.sleep(0.01)

    await asyncio.gather(*(one(i) for i in range(count)))
    await broker.stop()
    print(json.dumps(acked), flush=True)


async def present(broker: RedisBroker, topic: str, user: str) -> None:
    await broker.start(lambda seq, payload: None)
    await broker.presence_update(topic, user, {"node": broker.node}, 1)
    print("ready", flush=True)
    while True:
        await asyncio.sleep(3600)


def main() -> None:
    url, prefix, mode, *args = sys.argv[1:]
    broker = RedisBroker(url, prefix=prefix, presence_ttl=float(args[2]) if mode == "present" else 30.0)
    if mode == "publish":
        asyncio.run(publish(broker, int(args[0]), int(args[1])))
    elif mode == "blast":
        asyncio.run(blast(broker, int(args[0]), int(args[1])))
    else:
        asyncio.run(present(broker, args[0], args[1]))


if __name__ == "__main__":
    main()

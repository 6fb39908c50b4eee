"""A worker's LocalBroker in its own process, for the tests that kill one.

    python local_node.py SOCKET present TOPIC USER -> marks USER present on TOPIC,
        prints "ready" and stays until killed
"""
from __future__ import annotations

import asyncio
import sys

from hubbub.backplane.local import LocalBroker


async def present(path: str, topic: str, user: str) -> None:
    broker = LocalBroker(path)
    await broker.start(lambda seq, payload: None)
    await broker.presence_update(topic, user, {"pid": "node"}, 1)
    print("ready", flush=True)
    while True:
        await asyncio.sleep(3600)


if __name__ == "__main__":
    path, mode, topic, user = sys.argv[1:]
    asyncio.run(present(path, topic, user))

"""The contenders, each a server with the same in-process publisher.

Run one: ``python -m hubbub.benchmark.servers NAME PORT`` (plain asyncio/uvloop
servers), or under Granian/uvicorn through the app factories below. Every
server delivers each publication to every connected client on one topic.
"""
from __future__ import annotations

import asyncio
import sys

import orjson
import uvloop

from . import publisher

TOPIC = "bench.t"


# -- Hubbub ------------------------------------------------------------------
def _hub():
    from hubbub import Config, Hub

    # Queues sized so a client that keeps up never loses anything to a burst.
    # From the environment, so a run can vary HUBBUB_FLUSH_DELAY and the like.
    return Hub(Config.from_env(dev=True, queue_max_messages=4096, queue_max_bytes=64 << 20,
                               max_connections_per_user=1_000_000, connect_rate=1_000_000,
                               history_size=16, heartbeat=60))


async def hubbub_native(port: int) -> None:
    hub = _hub()
    await hub.listen("127.0.0.1", port)
    await publisher.run(lambda data: hub.publish(TOPIC, data))


def hubbub_asgi_app():
    """Granian app factory: the hub's ASGI app, publishing from its own worker."""
    hub = _hub()
    inner = hub.asgi()

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            asyncio.ensure_future(publisher.run(lambda data: hub.publish(TOPIC, data)))
        await inner(scope, receive, send)
    return app


# -- naive picows broadcast loop -----------------------------------------------
async def naive_picows(port: int) -> None:
    from picows import WSListener, WSMsgType, ws_create_server

    clients = set()

    class Listener(WSListener):
        def on_ws_connected(self, transport):
            clients.add(transport)

        def on_ws_disconnected(self, transport):
            clients.discard(transport)

    await ws_create_server(lambda request: Listener(), "127.0.0.1", port)

    def publish(data):
        message = orjson.dumps({"topic": TOPIC, "data": data})
        for transport in list(clients):
            transport.send(WSMsgType.TEXT, message)
    await publisher.run(publish)


# -- websockets.broadcast ----------------------------------------------------------
async def websockets_broadcast(port: int) -> None:
    import websockets

    clients = set()

    async def handler(ws):
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async with websockets.serve(handler, "127.0.0.1", port, compression=None, max_queue=None):
        await publisher.run(lambda data: websockets.broadcast(
            clients, orjson.dumps({"topic": TOPIC, "data": data}).decode()))


# -- naive Granian ASGI WebSocket loop --------------------------------------------
def naive_granian_app():
    clients: set = set()

    async def publish(data):
        text = orjson.dumps({"topic": TOPIC, "data": data}).decode()
        for send in list(clients):
            await send({"type": "websocket.send", "text": text})

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            asyncio.ensure_future(publisher.run(publish))
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        clients.add(send)
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            clients.discard(send)
    return app


# -- sse-starlette, one queue per client -------------------------------------------
def sse_starlette_app():
    from sse_starlette.sse import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.routing import Route

    queues: set[asyncio.Queue] = set()

    async def stream(request):
        queue: asyncio.Queue = asyncio.Queue()
        queues.add(queue)

        async def events():
            try:
                while True:
                    yield {"event": "message", "data": await queue.get()}
            finally:
                queues.discard(queue)
        return EventSourceResponse(events(), ping=60)

    def publish(data):
        text = orjson.dumps({"topic": TOPIC, "data": data}).decode()
        for queue in list(queues):
            queue.put_nowait(text)

    async def lifespan(app):
        task = asyncio.ensure_future(publisher.run(publish))
        yield
        task.cancel()

    return Starlette(routes=[Route("/sse", stream)], lifespan=lifespan)


# -- python-socketio under uvicorn ------------------------------------------------
def socketio_app():
    import socketio

    sio = socketio.AsyncServer(async_mode="asgi", ping_interval=60, ping_timeout=60)
    started = []

    @sio.event
    async def connect(sid, environ):
        await sio.enter_room(sid, TOPIC)
        if not started:
            started.append(asyncio.ensure_future(
                publisher.run(lambda data: sio.emit("message", {"topic": TOPIC, "data": data},
                                                    room=TOPIC))))

    return socketio.ASGIApp(sio)


PLAIN = {"hubbub-native": hubbub_native, "naive-picows": naive_picows,
         "websockets-broadcast": websockets_broadcast}

async def serve(name: str, port: int) -> None:
    """Publish, then keep serving until killed: writes still queued when the
    publisher returns (a hub may hold them up to FLUSH_DELAY) must go out."""
    await PLAIN[name](port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    name, port = sys.argv[1], int(sys.argv[2])
    uvloop.run(serve(name, port))

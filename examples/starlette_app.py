"""Hubbub mounted in a Starlette app: ``uvicorn examples.starlette_app:app``
(or ``hypercorn examples.starlette_app:app``, or
``granian --interface asgi examples.starlette_app:app``).

Clients connect to /rt/sse, /rt/ws; the app publishes domain events in-process.
Run with HUBBUB_DEV=1 to try it without secrets. ``lifespan=hub.lifespan``
starts the hub and drains it on SIGTERM before the server stops (WS 1001,
SSE streams ended).
"""
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from hubbub import Hub, Priority

hub = Hub.from_env()


async def ship_order(request: Request) -> JSONResponse:
    order_id = request.path_params["order_id"]
    event_id = await hub.publish(f"orders.{order_id}", {"status": "shipped"}, event="update",
                                 priority=Priority.HIGH, key=f"orders.{order_id}")
    return JSONResponse({"event_id": event_id})


app = Starlette(
    routes=[Route("/orders/{order_id:int}/ship", ship_order, methods=["POST"]),
            Mount("/rt", app=hub.asgi())],
    lifespan=hub.lifespan,
)

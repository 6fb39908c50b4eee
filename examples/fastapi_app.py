"""Hubbub mounted in a FastAPI app: ``uvicorn examples.fastapi_app:app``.

Run with HUBBUB_DEV=1 to try it without secrets. ``lifespan=hub.lifespan``
starts the hub and drains it on SIGTERM before the server stops.
"""
from fastapi import FastAPI

from hubbub import Hub

hub = Hub.from_env()
app = FastAPI(lifespan=hub.lifespan)
app.mount("/rt", hub.asgi())


@app.post("/orders/{order_id}/ship")
async def ship_order(order_id: int) -> dict:
    event_id = await hub.publish(f"orders.{order_id}", {"status": "shipped"}, event="update",
                                 tags={"region": "eu"})
    return {"event_id": event_id}

"""Hubbub in a FastAPI app that authenticates with its own sessions instead of JWTs.

``uvicorn examples.fastapi_auth_app:app`` (HUBBUB_DEV=1 to skip the secrets
check). The hook sees every SSE, WS and poll request; returning None means
"no credentials" (401 / first-frame auth), raising HubError refuses.
"""
from fastapi import FastAPI, Request

from hubbub import Config, Hub, HubError, Principal
from hubbub import Request as HubRequest

# Stand-in for the app's session store.
SESSIONS = {"s-alice": "alice", "s-bob": "bob"}


async def authenticate(request: HubRequest) -> Principal | None:
    session = request.cookie("session")
    if session is None:
        return None
    user = SESSIONS.get(session)
    if user is None:
        raise HubError(401, "unknown session")
    return Principal(user=user, subscribe=(f"user.{user}.>", "news.>"), publish=(f"user.{user}.>",))


hub = Hub(Config.from_env(), authenticate=authenticate)
app = FastAPI(lifespan=hub.lifespan)
app.mount("/rt", hub.asgi())


@app.post("/news")
async def post_news(request: Request) -> dict:
    body = await request.json()
    return {"event_id": await hub.publish("news.latest", body, event="news")}

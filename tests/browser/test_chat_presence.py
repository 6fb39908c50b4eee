"""Two signed-in users chat on the demo page: the hub's presence (join on
arrival, leave when the page closes) and typing indicators, over WS and SSE.

The pages carry real JWTs signed with the test hub's HUBBUB_JWT_SECRET
(``?token=``). The hub is the session's ``--dev`` hub without an API key, as
``hubbub serve --dev`` runs: over SSE a page publishes (chat, typing) through
``POST /publish``, which such a hub trusts from loopback.
"""
from __future__ import annotations

import httpx
import pytest

from tests.integration.tokens import token

from .conftest import ARTIFACTS, TIMEOUT_MS
from .harness import DEMO_VIEWPORT, demo_state, open_demo

LABEL = {"ws": "WebSocket", "sse": "Server-Sent Events"}


def user_token(user: str, name: str) -> str:
    # publish: chat messages and typing signals are client publishes (SPEC 11).
    return token(user, info={"name": name}, publish=["public.>"])


def person(user: str) -> str:
    """A "here now" row that came from the hub's presence (not from a hello)."""
    return f"#people .person[data-via=hub][data-user={user}]"


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_two_users_see_each_other_join_type_chat_and_leave(browser, hub, transport):
    # Users of their own per transport: presence from another test never mixes in.
    ada_user, linus_user = f"ada-{transport}", f"linus-{transport}"
    ada_context = browser.new_context(viewport=DEMO_VIEWPORT)
    linus_context = browser.new_context(viewport=DEMO_VIEWPORT)
    for context in (ada_context, linus_context):
        context.set_default_timeout(TIMEOUT_MS)
    try:
        ada = open_demo(ada_context, hub, user_token(ada_user, "Ada"), transport)
        assert ada.input_value("#name") == "Ada" and not ada.is_editable("#name")
        assert ada.inner_text("#who") == "signed in as Ada"

        # Linus arrives: Ada is told by a join event; Linus finds Ada in the
        # presence list he asks for on connect.
        linus = open_demo(linus_context, hub, user_token(linus_user, "Linus"), transport)
        ada.wait_for_selector(person(linus_user) + ":has-text('Linus')")
        linus.wait_for_selector(person(ada_user) + ":has-text('Ada')")
        ada.wait_for_selector("#wire div:has-text('Linus joined public.chat.lobby')")
        # Signed-in pages send no hellos: every row is the hub's presence.
        assert ada.locator("#people .person[data-via=hello]").count() == 0, demo_state(ada)
        # The hub agrees, over its HTTP API.
        present = httpx.get(hub.base + "/presence/public.chat.lobby", timeout=5).json()
        users = {entry["user"]: entry for entry in present["users"]}
        assert users[ada_user]["info"] == {"name": "Ada"} and users[linus_user]["connections"] == 1

        # Typing travels as ephemeral publications and shows on the other page.
        linus.type("#text", "Hi Ad", delay=20)
        ada.wait_for_selector("#typing:has-text('Linus is typing')")
        linus.type("#text", "a!")
        linus.press("#text", "Enter")
        ada.wait_for_selector(".msg:not(.mine):has-text('Hi Ada!')")
        linus.wait_for_selector(".msg.mine:has-text('Hi Ada!')")
        assert ada.locator(".msg:has-text('Hi Ada!') .who").inner_text() == "Linus"
        ada.wait_for_selector("#typing:text('')")  # the message ends the indicator

        ada.type("#text", "Hello Linus", delay=20)
        linus.wait_for_selector("#typing:has-text('Ada is typing')")
        ada.press("#text", "Enter")
        linus.wait_for_selector(".msg:has-text('Hello Linus') .who:text('Ada')")
        assert ada.inner_text("#conn") == f"live over {LABEL[transport]}"
        ARTIFACTS.mkdir(exist_ok=True)
        ada.screenshot(path=str(ARTIFACTS / f"chat-presence-{transport}-ada.png"))
        linus.screenshot(path=str(ARTIFACTS / f"chat-presence-{transport}-linus.png"))

        if transport == "ws":
            show_orders_and_bell(hub, ada, ada_user)

        # Linus closes his page: his last connection left, so Ada sees him go.
        linus_context.close()
        ada.wait_for_selector(person(linus_user), state="detached")
        ada.wait_for_selector("#wire div:has-text('Linus left public.chat.lobby')")
        present = httpx.get(hub.base + "/presence/public.chat.lobby", timeout=5).json()
        assert linus_user not in {entry["user"] for entry in present["users"]}, present
        ada.screenshot(path=str(ARTIFACTS / f"chat-presence-{transport}-after-leave.png"))
    finally:
        ada_context.close()
        linus_context.close()


def show_orders_and_bell(hub, page, user: str) -> None:
    """Fill the rest of the page for the README's picture (docs/demo.png is
    this artifact): orders published from outside and a notification for the
    page's user. The --dev hub has no API key: loopback may publish and notify."""
    orders = [("1042", "Acme Corp", "Standing desk", 649.0, "shipped"),
              ("1043", "Globex", "4K monitor", 389.99, "paid"),
              ("1044", "Initech", "Mechanical keyboard", 129.0, "placed")]
    hub.publish(*({"topic": f"public.orders.{id_}", "event": "order",
                   "data": {"id": id_, "customer": customer, "item": item, "total": total, "status": status}}
                  for id_, customer, item, total, status in orders))
    page.wait_for_selector("#order-1044 .status.placed")
    created = httpx.post(hub.base + "/notifications", timeout=10, json={
        "user": user, "title": "Order #1042 shipped", "message": "On its way to Acme Corp", "level": "success"})
    assert created.status_code == 201, created.text
    page.wait_for_selector("#badge.show:text-is('1')")
    page.screenshot(path=str(ARTIFACTS / "demo-signed-in.png"))

"""The --dev demo page at /: two people chat, see each other type, and share a live table."""
from __future__ import annotations

import httpx

from .conftest import ARTIFACTS


def open_demo(browser, hub, name: str):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.add_init_script(f"localStorage.setItem('hubbub-demo-name', {name!r})")
    page.goto(hub.base + "/")
    page.wait_for_selector("#conn:text('live over WebSocket')")
    return page


def test_two_pages_chat_type_and_share_orders(browser, hub):
    ada = open_demo(browser, hub, "Ada")
    linus = open_demo(browser, hub, "Linus")
    try:
        # Each page says hello with an ephemeral publication: both lists fill.
        ada.wait_for_selector("#people .person:has-text('Linus')")
        linus.wait_for_selector("#people .person:has-text('Ada')")

        # Typing travels as ephemeral publications, shown on the other page.
        ada.fill("#text", "")
        ada.type("#text", "Hello Lin", delay=20)
        linus.wait_for_selector("#typing:has-text('Ada is typing')")
        ada.type("#text", "us!")
        ada.press("#text", "Enter")
        linus.wait_for_selector(".msg:has-text('Hello Linus!')")
        ada.wait_for_selector(".msg.mine:has-text('Hello Linus!')")
        assert linus.locator(".msg .who").first.inner_text() == "Ada"
        linus.wait_for_selector("#typing:text('')")  # the message ends the indicator

        # A new order on one page shows up on the other; advancing it updates the row.
        ada.click("#new-order")
        ada.wait_for_selector("#orders tr[id^=order-]")
        row_id = ada.locator("#orders tr[id^=order-]").first.get_attribute("id")
        linus.wait_for_selector(f"#{row_id} .status.placed")
        linus.click(f"#{row_id} button")
        ada.wait_for_selector(f"#{row_id} .status.paid")

        # A publication from outside the browser lands in the same table.
        hub.publish({"topic": "public.orders.42", "event": "order",
                     "data": {"id": "42", "customer": "Initech", "item": "Stapler", "total": 12.5,
                              "status": "shipped"}})
        ada.wait_for_selector("#order-42 .status.shipped")
        linus.wait_for_selector("#order-42 .status.shipped")
        ada.click("#new-order")
        ada.wait_for_selector("#orders tr[id^=order-] >> nth=2")

        # Without a user token the bell explains how to get an inbox.
        ada.click("#bell")
        ada.wait_for_selector("#panel.show .hint")
        assert "token" in ada.inner_text("#panel")
        ada.click("h2")  # close the panel again for the picture
        ARTIFACTS.mkdir(exist_ok=True)
        ada.screenshot(path=str(ARTIFACTS / "demo.png"))
        linus.screenshot(path=str(ARTIFACTS / "demo-second-page.png"))
    finally:
        ada.context.close()
        linus.context.close()


def test_demo_page_only_uses_the_served_client(hub):
    html = httpx.get(hub.base + "/").text
    # one script from the hub, nothing fetched from elsewhere
    assert html.count("<script src=") == 1
    assert "http://" not in html.replace("http://127.0.0.1:8000", "")

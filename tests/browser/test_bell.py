"""The demo's notification bell follows the user's inbox (SPEC 8) over WS, SSE and long-poll.

A notification created over ``POST /notifications`` with the API key shows in
the bell of every tab of that user, with the unread count; marking one read,
then all, in one tab brings the count down in the other. The hub is a
``--dev`` hub with an API key and a JWT secret; the pages carry real JWTs.
"""
from __future__ import annotations

import httpx
import pytest

from tests.integration.helpers_user import KEY
from tests.integration.tokens import token

from .conftest import ARTIFACTS, TIMEOUT_MS
from .harness import DEMO_VIEWPORT, demo_state, open_demo


def notify(hub, user: str, title: str, message: str, level: str = "success") -> dict:
    response = httpx.post(hub.base + "/notifications", headers=KEY, timeout=10,
                          json={"user": user, "title": title, "message": message, "level": level})
    assert response.status_code == 201, response.text
    return response.json()


def badge_shows(page, count: int) -> None:
    """Wait until the bell's badge says ``count`` (hidden at 0)."""
    if count:
        page.wait_for_selector(f"#badge.show:text-is('{count}')")
    else:
        page.wait_for_selector("#badge:not(.show)", state="attached")
    assert page.get_attribute("#bell", "aria-label") == f"Notifications, {count} unread", demo_state(page)


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
def test_bell_follows_notifications_in_two_tabs(browser, keyed_hub, transport):
    user = f"nora-{transport}"
    context = browser.new_context(viewport=DEMO_VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        jwt = token(user, info={"name": "Nora"})
        tab = open_demo(context, keyed_hub, jwt, transport)
        other_tab = open_demo(context, keyed_hub, jwt, transport)
        for page in (tab, other_tab):
            page.click("#bell")
            page.wait_for_selector("#panel.show .hint:has-text('Nothing here yet')")
            badge_shows(page, 0)

        # Created over the API: both tabs get it live, count included.
        payment = notify(keyed_hub, user, "Payment received", "Order #1042 was paid: $129.00")
        for page in (tab, other_tab):
            page.wait_for_selector(f"#notes .note.unread[data-id='{payment['id']}']:has-text('Payment received')")
            badge_shows(page, 1)
        shipped = notify(keyed_hub, user, "Order shipped", "Order #1042 left the warehouse", "info")
        for page in (tab, other_tab):
            page.wait_for_selector(f"#notes .note.unread[data-id='{shipped['id']}']")
            badge_shows(page, 2)
        assert tab.locator("#notes .note").first.get_attribute("data-id") == shipped["id"]  # newest first
        ARTIFACTS.mkdir(exist_ok=True)
        tab.screenshot(path=str(ARTIFACTS / f"bell-{transport}-two-unread.png"))

        # Read one in the first tab: the hub tells every tab the new count,
        # and the second tab's list catches up.
        tab.click(f"#notes .note[data-id='{payment['id']}']")
        tab.wait_for_selector(f"#notes .note:not(.unread)[data-id='{payment['id']}']")
        badge_shows(tab, 1)
        badge_shows(other_tab, 1)
        other_tab.wait_for_selector(f"#notes .note:not(.unread)[data-id='{payment['id']}']")

        # Read all in the first tab: the second tab's bell goes quiet.
        tab.click("#read-all")
        badge_shows(other_tab, 0)
        badge_shows(tab, 0)
        other_tab.wait_for_selector("#notes .note.unread", state="detached")
        assert tab.is_disabled("#read-all")

        # The hub agrees.
        listing = httpx.get(keyed_hub.base + "/notifications", timeout=10,
                            headers={"Authorization": f"Bearer {jwt}"}).json()
        assert listing["unread_count"] == 0 and {n["id"] for n in listing["notifications"]} == {
            payment["id"], shipped["id"]}

        # Deleted over the API: gone from both lists.
        deleted = httpx.delete(f"{keyed_hub.base}/notifications/{payment['id']}", timeout=10,
                               headers={"Authorization": f"Bearer {jwt}"})
        assert deleted.status_code == 200, deleted.text
        for page in (tab, other_tab):
            page.wait_for_selector(f"#notes .note[data-id='{payment['id']}']", state="detached")
        other_tab.screenshot(path=str(ARTIFACTS / f"bell-{transport}-second-tab-all-read.png"))
    finally:
        context.close()


def test_a_page_that_opens_later_gets_the_count_and_the_list(browser, keyed_hub):
    """What came while no tab was open is there on the next visit."""
    user = "otto"
    first = notify(keyed_hub, user, "Welcome", "Your account is ready", "info")
    notify(keyed_hub, user, "Invoice overdue", "Invoice 7 is 3 days late", "warning")
    context = browser.new_context(viewport=DEMO_VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = open_demo(context, keyed_hub, token(user, info={"name": "Otto"}))
        badge_shows(page, 2)
        page.click("#bell")
        page.wait_for_selector(f"#notes .note.unread[data-id='{first['id']}']:has-text('Welcome')")
        assert page.locator("#notes .note").count() == 2
        page.screenshot(path=str(ARTIFACTS / "bell-on-connect.png"))
    finally:
        context.close()

"""The Inbox service: what each change announces, on both stores."""
from __future__ import annotations

import asyncio

import pytest

from hubbub.errors import HubError
from hubbub.services.inbox import Inbox


class Recorder:
    """The live-delivery callback: keeps what was emitted, per user."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []

    def __call__(self, user, event, payload):
        self.events.append((user, event, payload))

    def take(self):
        taken, self.events = self.events, []
        return taken


@pytest.fixture
async def inbox(store):
    recorder = Recorder()
    service = Inbox(store, recorder, max_message_bytes=1024)
    service.recorder = recorder
    return service


async def test_each_change_announces_the_record_and_the_count(inbox):
    record = await inbox.create({"user": "alice", "title": "Hi", "message": "there", "data": {"k": 1}})
    assert inbox.recorder.take() == [("alice", "notification", record), ("alice", "unread_count", {"count": 1})]

    second = await inbox.notify("alice", "Payment", "Received", level="success")
    assert second["level"] == "success" and second["title"] == "Payment"
    assert inbox.recorder.take() == [("alice", "notification", second), ("alice", "unread_count", {"count": 2})]

    read = await inbox.mark_read("alice", record["id"])
    assert read["read"] is True
    assert inbox.recorder.take() == [("alice", "unread_count", {"count": 1})]

    assert await inbox.mark_all_read("alice") == 1
    assert inbox.recorder.take() == [("alice", "unread_count", {"count": 0})]

    assert await inbox.delete("alice", second["id"]) is True
    assert inbox.recorder.take() == [("alice", "notification_deleted", {"id": second["id"]}),
                                     ("alice", "unread_count", {"count": 0})]
    assert await inbox.list("alice") == [read]
    assert await inbox.unread_count("alice") == 0


async def test_another_users_or_a_malformed_id_changes_nothing_and_announces_nothing(inbox):
    record = await inbox.notify("alice", "Private", "for alice")
    inbox.recorder.take()
    for bad in (record["id"], "999999", "abc", "-1", "0", ""):
        assert await inbox.mark_read("bob", bad) is None
        assert await inbox.delete("bob", bad) is False
    assert inbox.recorder.take() == []
    assert await inbox.list("alice") == [record]
    assert await inbox.list("bob") == []


async def test_notify_validates_like_the_endpoint(inbox):
    with pytest.raises(HubError) as caught:
        await inbox.notify("alice", "Hi", "there", level="loud")
    assert caught.value.code == 400 and "'level'" in caught.value.reason
    with pytest.raises(HubError, match="'data'"):
        await inbox.notify("alice", "Hi", "there", data="x" * 2000)
    with pytest.raises(HubError, match="'message'"):
        await inbox.notify("alice", "Hi", "m" * 1025)
    assert inbox.recorder.take() == []
    assert await inbox.unread_count("alice") == 0


async def test_a_failing_emit_does_not_lose_the_notification(store):
    def broken(user, event, payload):
        raise RuntimeError("live delivery is down")

    inbox = Inbox(store, broken)
    record = await inbox.notify("alice", "Kept", "anyway")
    assert await inbox.list("alice") == [record]


async def test_an_async_emit_is_awaited(store):
    seen = []

    async def deliver(user, event, payload):
        await asyncio.sleep(0)
        seen.append(event)

    inbox = Inbox(store, deliver)
    await inbox.notify("alice", "Hi", "there")
    assert seen == ["notification", "unread_count"]


async def test_concurrent_creates_announce_counts_in_order(inbox):
    await asyncio.gather(*(inbox.notify("alice", f"n{i}", "") for i in range(20)),
                         *(inbox.notify("bob", f"n{i}", "") for i in range(5)))
    counts = [p["count"] for u, e, p in inbox.recorder.events if u == "alice" and e == "unread_count"]
    assert counts == list(range(1, 21))  # never a stale count after a fresh one
    assert not inbox._locks  # per-user locks are released


async def test_background_pruning_applies_the_cap(make_store):
    store = await make_store(max_per_user=2)
    inbox = Inbox(store, prune_interval=0.05)
    await store.close()
    await inbox.start()  # reopens the store and starts pruning
    try:
        for i in range(5):
            await inbox.notify("alice", f"n{i}", "")
        for _ in range(100):  # bounded: up to 5 s
            if len(await inbox.list("alice")) == 2:
                break
            await asyncio.sleep(0.05)
        assert [r["title"] for r in await inbox.list("alice")] == ["n4", "n3"]
    finally:
        await inbox.stop()
    assert inbox._pruner is None


async def test_list_continues_after_a_records_id(inbox):
    records = [await inbox.notify("alice", f"n{i}", "") for i in range(3)]
    assert await inbox.list("alice", before=records[2]["id"]) == [records[1], records[0]]
    assert await inbox.list("alice", before=int(records[1]["id"])) == [records[0]]
    with pytest.raises(HubError, match="'before'"):
        await inbox.list("alice", before="nope")

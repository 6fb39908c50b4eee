"""Dispatch rules, run against both implementations (the ``core`` fixture)."""
from hubbub._ring_py import DISCONNECT, DROP_OLDEST

SSE, WS = 0, 1
FRAMES = (b"sse-frame", b"ws-frame")


def owned(box):
    """fanout hands back an outbox's owner (its writer); here the outbox owns itself."""
    box.owner = box
    return box


def test_same_frame_object_goes_to_every_outbox_of_a_format(core):
    boxes = [owned(core.Outbox(10, 1000, DROP_OLDEST, b"\n")) for _ in range(4)]
    subs = tuple(core.Subscription(b, i % 2, "t") for i, b in enumerate(boxes))
    woken, overflowed = [], []
    assert core.fanout(subs, None, FRAMES, 1, None, 1, woken, overflowed) == 4
    assert woken == boxes and overflowed == []
    assert [b.drain() for b in boxes] == [b"sse-frame", b"ws-frame"] * 2


def test_an_outbox_gets_a_publication_once_even_with_two_matching_subscriptions(core):
    box = owned(core.Outbox())
    subs = (core.Subscription(box, WS, "a.*"), core.Subscription(box, WS, "a.>"))
    woken, overflowed = [], []
    assert core.fanout(subs, None, FRAMES, 1, None, 1, woken, overflowed) == 1
    assert core.fanout(subs, None, FRAMES, 1, None, 2, woken, overflowed) == 1
    assert len(box) == 2 and woken == [box]


def test_each_distinct_filter_is_evaluated_once_per_publication(core):
    calls = []

    class CountingFilter(core.TagFilter):
        def matches(self, tags):
            calls.append(1)
            return super().matches(tags)

    f = CountingFilter((("region", frozenset({"eu"})),))
    boxes = [owned(core.Outbox()) for _ in range(50)]
    subs = tuple(core.Subscription(b, WS, "t", f) for b in boxes)
    woken, overflowed = [], []
    assert core.fanout(subs, {"region": "eu"}, FRAMES, 1, None, 7, woken, overflowed) == 50
    assert core.fanout(subs, {"region": "us"}, FRAMES, 1, None, 8, woken, overflowed) == 0
    assert len(calls) == 2


def test_filtered_and_unfiltered_subscriptions_of_one_connection(core):
    box = owned(core.Outbox())
    f = core.TagFilter((("level", frozenset({"high"})),))
    subs = (core.Subscription(box, WS, "a", f), core.Subscription(box, WS, "a"))
    woken, overflowed = [], []
    assert core.fanout(subs, {"level": "low"}, FRAMES, 1, None, 1, woken, overflowed) == 1
    assert len(box) == 1


def test_overflow_is_reported_and_others_still_receive(core):
    slow = owned(core.Outbox(1, 1000, DISCONNECT, b""))
    fast = owned(core.Outbox(10, 1000, DROP_OLDEST, b""))
    subs = (core.Subscription(slow, WS, "t"), core.Subscription(fast, WS, "t"))
    woken, overflowed = [], []
    core.fanout(subs, None, FRAMES, 1, None, 1, woken, overflowed)
    assert core.fanout(subs, None, FRAMES, 1, None, 2, woken, overflowed) == 1
    assert overflowed == [slow]
    assert len(fast) == 2


def test_priority_and_key_are_passed_to_the_outbox(core):
    box = owned(core.Outbox(10, 1000, DROP_OLDEST, b","))
    subs = (core.Subscription(box, SSE, "t"),)
    core.fanout(subs, None, (b"low", b""), 0, None, 1, [], [])
    core.fanout(subs, None, (b"k1", b""), 2, "k", 2, [], [])
    core.fanout(subs, None, (b"k2", b""), 2, "k", 3, [], [])
    assert box.drain() == b"k2,low"

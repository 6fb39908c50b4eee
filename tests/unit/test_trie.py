"""Trie rules, run against both implementations (the ``core`` fixture)."""
import pytest


def subs_of(trie, topic):
    return sorted(trie.match(topic))


def test_nats_semantics(core):
    t = core.Trie()
    t.subscribe("orders.*", "star")
    t.subscribe("orders.>", "tail")
    t.subscribe("orders.42", "literal")
    assert subs_of(t, "orders.42") == ["literal", "star", "tail"]
    assert subs_of(t, "orders") == []
    assert subs_of(t, "orders.42.items") == ["tail"]
    assert subs_of(t, "other.42") == []


def test_match_order_is_literal_then_star_then_tail(core):
    t = core.Trie()
    t.subscribe(">", "d")
    t.subscribe("a.>", "c")
    t.subscribe("a.*", "b")
    t.subscribe("a.b", "a")
    assert t.match("a.b") == ("a", "b", "c", "d")


def test_gt_alone_matches_everything_but_dollar_topics(core):
    t = core.Trie()
    t.subscribe(">", "all")
    assert t.match("a") == ("all",)
    assert t.match("a.b.c") == ("all",)
    assert t.match("$sys.connections") == ()


def test_dollar_topics_need_an_explicit_prefix(core):
    t = core.Trie()
    t.subscribe("*.connections", "star")
    t.subscribe("$sys.>", "sys")
    t.subscribe("$sys.*", "sys-star")
    assert t.match("$sys.connections") == ("sys-star", "sys")
    # A wildcard past the first segment may match a segment starting with '$'.
    t.subscribe("a.*", "inner")
    assert t.match("a.$x") == ("inner",)


def test_star_matches_exactly_one_segment(core):
    t = core.Trie()
    t.subscribe("*.*.x", "s")
    assert t.match("a.b.x") == ("s",)
    assert t.match("a.x") == ()
    assert t.match("a.b.c.x") == ()


def test_same_subscriber_on_two_patterns_is_returned_twice(core):
    t = core.Trie()
    t.subscribe("a.*", "s")
    t.subscribe("a.>", "s")
    assert t.match("a.b") == ("s", "s")


def test_subscribe_is_idempotent_and_unsubscribe_reports(core):
    t = core.Trie()
    assert t.subscribe("a.b", "s") is True
    assert t.subscribe("a.b", "s") is False
    assert len(t) == 1
    assert t.unsubscribe("a.b", "s") is True
    assert t.unsubscribe("a.b", "s") is False
    assert t.unsubscribe("x.y.z", "s") is False
    assert t.unsubscribe("a.*", "s") is False
    assert len(t) == 0
    assert t.match("a.b") == ()


def test_cache_is_invalidated_by_wildcard_and_literal_changes(core):
    t = core.Trie(cache_size=16)
    assert t.match("a.b") == ()
    assert t.cached == 1
    t.subscribe("a.*", "w")
    assert t.match("a.b") == ("w",)
    t.subscribe("a.b", "l")
    assert t.match("a.b") == ("l", "w")
    t.subscribe("x.>", "unrelated")  # does not match a.b: its cache entry survives
    assert t.cached >= 1
    t.unsubscribe("a.*", "w")
    assert t.match("a.b") == ("l",)
    t.unsubscribe("a.b", "l")
    assert t.match("a.b") == ()


def test_cache_is_bounded(core):
    t = core.Trie(cache_size=8)
    t.subscribe(">", "s")
    for i in range(100):
        assert t.match(f"t.{i}") == ("s",)
    assert t.cached == 8


def test_cache_disabled(core):
    t = core.Trie(cache_size=0)
    t.subscribe("a", "s")
    assert t.match("a") == ("s",)
    assert t.cached == 0


def test_unsubscribe_prunes_empty_nodes(core):
    t = core.Trie()
    for i in range(1000):
        t.subscribe(f"room.{i}.chat", i)
    for i in range(1000):
        t.unsubscribe(f"room.{i}.chat", i)
    assert len(t) == 0
    t.subscribe("room.*.chat", "w")
    assert t.match("room.5.chat") == ("w",)


def test_long_topics_at_the_limit(core):
    t = core.Trie()
    topic = ".".join(["a"] * 128)  # 255 bytes, 128 segments
    assert len(topic) == 255
    t.subscribe(topic, "deep")
    t.subscribe("a.>", "tail")
    assert t.match(topic) == ("deep", "tail")


def test_subscribers_can_be_any_hashable(core):
    t = core.Trie()
    key = ("conn", 1)
    t.subscribe("a", key)
    assert t.match("a") == (key,)
    with pytest.raises(TypeError):
        t.subscribe("a", ["unhashable"])

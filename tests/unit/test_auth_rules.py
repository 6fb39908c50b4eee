import pytest

from hubbub.auth import Principal, covers, may_publish, may_subscribe


@pytest.mark.parametrize("grant, pattern, expected", [
    ("public.>", "public.a", True),
    ("public.>", "public.a.b.*", True),
    ("public.>", "public.>", True),
    ("public.>", "public", False),
    ("public.>", ">", False),
    ("user.alice.>", "user.*.x", False),
    ("user.*.x", "user.alice.x", True),
    ("user.*.x", "user.*.x", True),
    ("user.*.x", "user.>", False),
    ("*.*", "a.b", True),
    ("*.*", "a.>", False),
    (">", "$sys.x", False),
    ("*.x", "$sys.x", False),
    ("$sys.>", "$sys.x", True),
    ("a.b", "a.b", True),
    ("a.b", "a.*", False),
])
def test_covers(grant, pattern, expected):
    assert covers(grant, pattern) is expected


def test_default_grants():
    alice = Principal(user="alice")
    assert may_subscribe(alice, "public.news")
    assert may_subscribe(alice, "user.alice.inbox")
    assert not may_subscribe(alice, "user.bob.inbox")
    assert not may_subscribe(alice, "user.*.inbox")
    assert not may_publish(alice, "public.news")
    anonymous = Principal()
    assert may_subscribe(anonymous, "public.x") and not may_subscribe(anonymous, "user.x.y")


def test_sys_topics_are_never_publishable():
    assert not may_publish(Principal(user="a", publish=(">", "$sys.>")), "$sys.x")
    assert not may_publish(Principal(unrestricted=True), "$sys.x")

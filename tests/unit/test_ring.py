"""Outbox rules, run against both implementations (the ``core`` fixture)."""
import pytest

from hubbub._ring_py import DISCONNECT, DROP_OLDEST, OVERFLOW, QUEUED, WAKE

LOW, NORMAL, HIGH, CRITICAL = range(4)


def test_drain_order_is_priority_then_fifo(core):
    o = core.Outbox(100, 1 << 20, DROP_OLDEST, b"\n")
    for frame, prio in [(b"n1", NORMAL), (b"l1", LOW), (b"h1", HIGH), (b"c1", CRITICAL),
                        (b"n2", NORMAL), (b"h2", HIGH), (b"l2", LOW)]:
        o.push(frame, prio)
    assert o.drain() == b"c1\nh1\nh2\nn1\nn2\nl1\nl2"
    assert len(o) == 0 and o.nbytes == 0
    assert o.drain() == b""


def test_first_push_wakes_once_until_rearmed(core):
    o = core.Outbox()
    assert o.push(b"a", NORMAL) == WAKE
    assert o.push(b"b", NORMAL) == QUEUED
    assert o.armed is False
    o.drain()
    o.armed = True
    assert o.push(b"c", NORMAL) == WAKE


def test_drain_limits_batch_but_always_makes_progress(core):
    o = core.Outbox(100, 1 << 20, DROP_OLDEST, b"")
    for i in range(5):
        o.push(b"x" * 10, NORMAL)
    assert o.drain(2) == b"x" * 20
    assert o.drain(100, 25) == b"x" * 20
    o.push(b"y" * 50, NORMAL)
    assert o.drain(100, 25) == b"x" * 10  # stops before the big one...
    assert o.drain(100, 25) == b"y" * 50  # ...which still goes out alone


def test_drop_oldest_of_lowest_lane_and_count(core):
    o = core.Outbox(3, 1 << 20, DROP_OLDEST, b",")
    o.push(b"h", HIGH)
    o.push(b"n1", NORMAL)
    o.push(b"l1", LOW)
    o.push(b"n2", NORMAL)  # full: drops l1 (lowest lane)
    assert o.dropped == 1
    o.push(b"n3", NORMAL)  # drops n1 (oldest of the lowest non-empty lane)
    assert o.drain() == b"h,n2,n3"
    assert o.take_dropped() == 2
    assert o.take_dropped() == 0
    assert o.dropped_total == 2


def test_new_low_frame_into_a_queue_of_higher_frames_is_the_one_dropped(core):
    o = core.Outbox(2, 1 << 20, DROP_OLDEST, b",")
    o.push(b"h1", HIGH)
    o.push(b"h2", HIGH)
    o.push(b"l", LOW)
    assert o.drain() == b"h1,h2"
    assert o.dropped == 1


def test_byte_bound_drops_until_it_fits(core):
    o = core.Outbox(100, 10, DROP_OLDEST, b"")
    o.push(b"aaaa", LOW)
    o.push(b"bbbb", LOW)
    o.push(b"cccc", NORMAL)  # 12 bytes > 10: drops aaaa
    assert o.nbytes == 8 and o.dropped == 1
    assert o.drain() == b"ccccbbbb"


def test_critical_is_never_dropped(core):
    o = core.Outbox(2, 1 << 20, DROP_OLDEST, b",")
    assert o.push(b"c1", CRITICAL) == WAKE
    assert o.push(b"l", LOW) == QUEUED
    assert o.push(b"c2", CRITICAL) == QUEUED  # drops l, not c1
    assert o.push(b"c3", CRITICAL) == OVERFLOW  # nothing droppable left
    assert o.dropped == 1


def test_oversize_frames(core):
    o = core.Outbox(10, 8, DROP_OLDEST, b"")
    o.push(b"ok", NORMAL)
    assert o.push(b"x" * 9, NORMAL) == QUEUED  # dropped on arrival, queue untouched
    assert o.dropped == 1 and o.drain() == b"ok"
    assert o.push(b"x" * 9, CRITICAL) == OVERFLOW
    assert o.push(b"x" * 8, NORMAL) in (WAKE, QUEUED)  # exactly at the bound fits


def test_zero_size_frames_count_as_messages(core):
    o = core.Outbox(2, 1, DROP_OLDEST, b"|")
    o.push(b"", NORMAL)
    o.push(b"", NORMAL)
    o.push(b"", NORMAL)
    assert len(o) == 2 and o.nbytes == 0 and o.dropped == 1
    assert o.drain() == b"|"


def test_limits_of_one(core):
    o = core.Outbox(1, 1, DROP_OLDEST, b"")
    o.push(b"a", NORMAL)
    o.push(b"b", NORMAL)
    assert o.drain() == b"b" and o.dropped == 1
    d = core.Outbox(1, 1, DISCONNECT, b"")
    assert d.push(b"a", NORMAL) == WAKE
    assert d.push(b"b", NORMAL) == OVERFLOW
    assert d.drain() == b"a"


def test_disconnect_policy_refuses_instead_of_dropping(core):
    o = core.Outbox(2, 1 << 20, DISCONNECT, b",")
    o.push(b"a", LOW)
    o.push(b"b", LOW)
    assert o.push(b"c", CRITICAL) == OVERFLOW
    assert o.dropped == 0
    assert o.drain() == b"a,b"
    o2 = core.Outbox(10, 4, DISCONNECT, b"")
    o2.push(b"abc", NORMAL)
    assert o2.push(b"de", NORMAL) == OVERFLOW


def test_conflation_replaces_in_place(core):
    o = core.Outbox(10, 1 << 20, DROP_OLDEST, b",")
    o.push(b"a1", NORMAL, "a")
    o.push(b"x", NORMAL)
    o.push(b"a2", NORMAL, "a")
    assert len(o) == 2
    assert o.drain() == b"a2,x"
    # After draining, the key is free again: a new frame queues normally.
    o.push(b"a3", NORMAL, "a")
    o.push(b"a4", LOW, "a")  # lower priority: still replaces in place
    assert o.drain() == b"a4"


def test_conflation_to_a_higher_priority_moves_the_frame(core):
    o = core.Outbox(10, 1 << 20, DROP_OLDEST, b",")
    o.push(b"k1", LOW, "k")
    o.push(b"n", NORMAL)
    o.push(b"k2", HIGH, "k")
    assert len(o) == 2 and o.nbytes == 3
    assert o.drain() == b"k2,n"


def test_conflation_size_change_respects_byte_bound(core):
    o = core.Outbox(10, 6, DROP_OLDEST, b",")
    o.push(b"aa", LOW)
    o.push(b"kk", NORMAL, "k")
    o.push(b"kkkkk", NORMAL, "k")  # 7 bytes: drops aa
    assert o.drain() == b"kkkkk" and o.dropped == 1
    d = core.Outbox(10, 6, DISCONNECT, b",")
    d.push(b"aa", LOW)
    d.push(b"kk", NORMAL, "k")
    assert d.push(b"kkkkk", NORMAL, "k") == OVERFLOW


def test_many_tombstones_and_growth_keep_order(core):
    o = core.Outbox(10_000, 1 << 30, DROP_OLDEST, b",")
    for i in range(7):
        o.push(b"L%d" % i, LOW, i)
        o.push(b"n%d" % i, NORMAL)
        o.push(b"H%d" % i, HIGH, i)  # moves key i from LOW to HIGH, leaving a tombstone
    for i in range(7, 500):
        o.push(b"H%d" % i, HIGH, i % 7)  # replaces in place: HIGH keeps key order 0..6
    assert len(o) == 14
    last = {i % 7: i for i in range(500)}
    assert o.drain().split(b",") == [b"H%d" % last[k] for k in range(7)] + [b"n%d" % i for i in range(7)]


def test_an_empty_outbox_holds_no_storage(core):
    """Lanes exist from the first push until drained empty (issue 20: idle connections)."""
    o = core.Outbox(100, 1 << 20, DROP_OLDEST, b",")
    assert not o.allocated
    assert o.drain() == b"" and not o.allocated
    o.push(b"a", NORMAL, "k")
    o.push(b"b", HIGH)
    assert o.allocated
    assert o.drain(1) == b"b" and o.allocated  # one frame left
    assert o.drain() == b"a" and not o.allocated
    o.push(b"c", LOW, "k")  # the key map was given back too: "k" is a new key
    o.push(b"d", LOW, "k")  # ...and conflates as before
    assert len(o) == 1 and o.drain() == b"d" and not o.allocated
    o.push(b"e", CRITICAL)
    o.clear()
    assert not o.allocated and len(o) == 0 and o.nbytes == 0
    o.push(b"f", NORMAL)
    assert o.allocated and o.drain() == b"f"


def test_bad_arguments(core):
    with pytest.raises(ValueError):
        core.Outbox(0, 10)
    with pytest.raises(ValueError):
        core.Outbox(10, 0)
    with pytest.raises(ValueError):
        core.Outbox(10, 10, 7)
    o = core.Outbox()
    with pytest.raises(ValueError):
        o.push(b"a", 4)
    with pytest.raises(ValueError):
        o.push(b"a", -1)
    with pytest.raises(TypeError):
        o.push(None, 1)
    with pytest.raises(TypeError):
        o.push(b"a", 1, ["unhashable"])


def test_the_compiled_ring_gives_memory_back_after_a_burst():
    """A burst grows a lane's ring; draining it empty frees it (issue 9)."""
    import tracemalloc

    from tests.conftest import NATIVE
    if NATIVE is None:
        pytest.skip("the compiled core is not built")
    frames = [b"x" * 10 for _ in range(20_000)]  # allocated before the measurement
    outbox = NATIVE.Outbox(100_000, 1 << 30, DROP_OLDEST, b"")
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for frame in frames:
            outbox.push(frame, 1)
        grown = tracemalloc.get_traced_memory()[0] - baseline
        while outbox.count:
            outbox.drain(512)
        left = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert grown > 20_000 * 16  # the ring held 20,000 slots of two pointers
    assert left < 4096, f"{left} bytes still held after draining"

"""The compiled core and its pure-Python twin, fed the SAME random operation
sequences, must agree on everything observable: matches (and their order),
drain order, bytes, drops, conflation, wake-ups and overflows."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubbub._trie_py import pattern_matches

from ..conftest import NATIVE, PURE

pytestmark = pytest.mark.skipif(NATIVE is None, reason="compiled core not built")

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

literal = st.sampled_from(["a", "b", "c", "$s"])
topics = st.lists(literal, min_size=1, max_size=4).map(".".join)


@st.composite
def patterns(draw):
    body = draw(st.lists(st.one_of(literal, st.just("*")), min_size=0, max_size=4))
    if not body or draw(st.booleans()):
        body.append(draw(st.sampled_from([">", "*", "a"])))
    return ".".join(body)


trie_ops = st.lists(
    st.one_of(
        st.tuples(st.just("sub"), patterns(), st.integers(0, 5)),
        st.tuples(st.just("unsub"), patterns(), st.integers(0, 5)),
        st.tuples(st.just("match"), topics),
    ),
    max_size=60,
)


@SETTINGS
@given(ops=trie_ops, cache_size=st.sampled_from([0, 1, 2, 8, 4096]))
def test_trie_twins_agree_and_match_the_naive_oracle(ops, cache_size):
    native, pure = NATIVE.Trie(cache_size), PURE.Trie(cache_size)
    held = set()
    for op in ops:
        if op[0] == "match":
            got = native.match(op[1])
            assert got == pure.match(op[1])
            assert got == native.match_uncached(op[1])
            expected = sorted(s for p, s in held if pattern_matches(p.split("."), op[1]))
            assert sorted(got) == expected
        else:
            _, pattern, sub = op
            method = "subscribe" if op[0] == "sub" else "unsubscribe"
            assert getattr(native, method)(pattern, sub) == getattr(pure, method)(pattern, sub)
            (held.add if op[0] == "sub" else held.discard)((pattern, sub))
        assert len(native) == len(pure) == len(held)
        assert native.cached == pure.cached


ring_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 24), st.integers(0, 3),
                  st.one_of(st.none(), st.integers(0, 3))),
        st.tuples(st.just("drain"), st.integers(1, 6), st.integers(1, 64)),
        st.tuples(st.just("rearm")),
        st.tuples(st.just("take_dropped")),
        st.tuples(st.just("clear")),
    ),
    max_size=80,
)


def _observe(box):
    # ``allocated``: both give their storage back at the same moments (drained empty, clear).
    return (len(box), box.nbytes, box.dropped, box.dropped_total, box.armed, box.allocated)


@SETTINGS
@given(ops=ring_ops, max_messages=st.integers(1, 8), max_bytes=st.integers(1, 64),
       policy=st.sampled_from([0, 1]), separator=st.sampled_from([b"", b"\n"]))
def test_outbox_twins_agree(ops, max_messages, max_bytes, policy, separator):
    native = NATIVE.Outbox(max_messages, max_bytes, policy, separator)
    pure = PURE.Outbox(max_messages, max_bytes, policy, separator)
    for n, op in enumerate(ops):
        if op[0] == "push":
            _, size, priority, key = op
            frame = (b"<%d>" % n + b"x" * size)[:size]
            assert native.push(frame, priority, key) == pure.push(frame, priority, key)
        elif op[0] == "drain":
            assert native.drain(op[1], op[2]) == pure.drain(op[1], op[2])
        elif op[0] == "rearm":
            native.armed = pure.armed = True
        elif op[0] == "clear":
            native.clear()
            pure.clear()
        else:
            assert native.take_dropped() == pure.take_dropped()
        assert _observe(native) == _observe(pure)
    assert native.drain() == pure.drain()


@st.composite
def fanout_cases(draw):
    n_boxes = draw(st.integers(1, 6))
    limits = [(draw(st.integers(1, 4)), draw(st.integers(8, 64)), draw(st.sampled_from([0, 1])))
              for _ in range(n_boxes)]
    filters = [None, (("r", frozenset({"eu"})),), (("r", frozenset({"eu", "us"})), ("l", frozenset({"hi"})))]
    subs = draw(st.lists(st.tuples(st.integers(0, n_boxes - 1), st.integers(0, 1),
                                   st.integers(0, len(filters) - 1)), min_size=1, max_size=12))
    pubs = draw(st.lists(st.tuples(
        st.sampled_from([None, {"r": "eu"}, {"r": "us", "l": "hi"}, {"l": "hi"}]),
        st.integers(0, 3), st.one_of(st.none(), st.integers(0, 2)),
        st.integers(0, n_boxes),  # how many outboxes drain after this publication
    ), max_size=30))
    return limits, filters, subs, pubs


@SETTINGS
@given(case=fanout_cases())
def test_fanout_twins_agree(case):
    limits, filter_specs, sub_specs, pubs = case
    worlds = []
    for core in (NATIVE, PURE):
        boxes = [core.Outbox(m, b, p, b"|") for m, b, p in limits]
        for box in boxes:
            box.owner = box  # fanout hands back owners; here each outbox owns itself
        filters = [None if spec is None else core.TagFilter(spec) for spec in filter_specs]
        subs = tuple(core.Subscription(boxes[i], fmt, "t", filters[f]) for i, fmt, f in sub_specs)
        worlds.append((core, boxes, subs))
    for seq, (tags, priority, key, drains) in enumerate(pubs, start=1):
        frames = (b"s%d" % seq, b"w%d" % seq)
        seen = []
        for core, boxes, subs in worlds:
            woken, overflowed = [], []
            delivered = core.fanout(subs, tags, frames, priority, key, seq, woken, overflowed)
            index = {id(b): i for i, b in enumerate(boxes)}
            drained = [boxes[i].drain(3) for i in range(drains)]
            seen.append((delivered, [index[id(b)] for b in woken], [index[id(b)] for b in overflowed],
                         drained, [(len(b), b.nbytes, b.dropped) for b in boxes]))
        assert seen[0] == seen[1]


# -- the round writer ------------------------------------------------------------------
class SocketSink:
    """A registered transport's socket: records each write; may report a full
    buffer, or find the peer gone on a write (the connection is lost then)."""

    def __init__(self, buffered: int, lose_on_write: bool) -> None:
        self.writes: list[bytes] = []
        self.buffered = buffered
        self.lose_on_write = lose_on_write
        self.conn = None

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data) -> None:
        self.writes.append(bytes(data))
        if self.lose_on_write:
            self.conn.lost()

    def writelines(self, parts) -> None:
        self.write(b"".join(parts))


class WSSocketTransport:
    """Writes as transports/native.NativeWSTransport does (registered FRAME_WS_TEXT),
    with the pure twin's framing: the compiled writer must write the same bytes."""

    def __init__(self, sock: SocketSink) -> None:
        self.socket = sock
        self.closed_with = None

    def write(self, data: bytes) -> None:
        PURE.writer.write_ws_text(self.socket, data)

    def buffered(self) -> int:
        return self.socket.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


class RawSocketTransport(WSSocketTransport):
    """Writes as transports/native._SSEStream does (registered FRAME_RAW)."""

    def __init__(self, sock: SocketSink) -> None:
        super().__init__(sock)
        self.transport = sock

    def write(self, data: bytes) -> None:
        self.transport.write(data)


class UnregisteredTransport(RawSocketTransport):
    """Not registered (a subclass is not its parent): always Connection.flush."""


for _writer in {PURE.writer, NATIVE.writer} if NATIVE else ():
    _writer.register_socket_transport(WSSocketTransport, _writer.FRAME_WS_TEXT, "socket")
    _writer.register_socket_transport(RawSocketTransport, _writer.FRAME_RAW, "transport")

FRAME_SIZES = [5, 130, 20_000, 70_000]  # the three WS header sizes; above COPY_BELOW; two batches' worth


@st.composite
def writer_cases(draw):
    specs = draw(st.lists(st.tuples(
        st.sampled_from(["ws", "raw", "other"]),
        st.sampled_from([3, 8, 1000]),  # max messages: small ones drop (a dropped notice is owed)
    ), min_size=1, max_size=5))
    rounds = draw(st.lists(st.tuples(
        st.lists(st.tuples(
            st.lists(st.tuples(st.integers(0, len(FRAME_SIZES) - 1), st.integers(0, 3)), max_size=9),
            st.integers(0, 2),  # control frames owed
            st.sampled_from([0, 0, 1 << 20]),  # socket buffer: room, or over the high-water mark
            st.sampled_from([None, None, None, "close", "lost", "lost-on-write"]),
        ), min_size=len(specs), max_size=len(specs)),
        st.integers(0, 10),  # where the round starts
    ), min_size=1, max_size=4))
    return specs, rounds


@SETTINGS
@given(size=st.one_of(st.integers(0, 300), st.integers(16_000, 17_000), st.integers(65_400, 65_700),
                      st.sampled_from([125, 126, 127, 16_383, 16_384, 65_535, 65_536])))
def test_ws_text_framing_twins_agree(size):
    """The native port's WebSocket write: both header forms' edges and the copy
    threshold give the same calls with the same bytes (a dropped length byte, a
    header sized one form too small, would all differ here)."""
    class Calls:
        def __init__(self) -> None:
            self.calls: list[tuple[str, list[bytes]]] = []

        def write(self, data) -> None:
            self.calls.append(("write", [bytes(data)]))

        def writelines(self, parts) -> None:
            self.calls.append(("writelines", [bytes(part) for part in parts]))

    data = bytes(i % 251 for i in range(size))
    pure, native = Calls(), Calls()
    PURE.writer.write_ws_text(pure, data)
    NATIVE.writer.write_ws_text(native, data)
    assert native.calls == pure.calls
    (how, parts), = pure.calls
    assert how == ("write" if size < 16 << 10 else "writelines")
    assert b"".join(parts)[2 if size < 126 else 4 if size < 65536 else 10:] == data


@SETTINGS
@given(case=writer_cases())
def test_round_writer_twins_agree(case):
    """The compiled writer's own path leaves every socket, connection and
    outbox as Connection.flush does (the pure writer calls only that)."""
    from hubbub._ring_py import DROP_OLDEST, WAKE
    from hubbub.auth import DEV_ANONYMOUS
    from hubbub.core.connection import BATCH_MAX_BYTES, BATCH_MAX_MESSAGES, HIGH_WATER, OPEN, Connection
    from hubbub.wire import SSE, WS

    specs, rounds = case
    worlds = []
    for core in (NATIVE, PURE):
        pending: list = []
        writer = core.writer.RoundWriter(OPEN, HIGH_WATER, BATCH_MAX_MESSAGES, BATCH_MAX_BYTES)
        conns = []
        for kind, max_messages in specs:
            sock = SocketSink(0, False)
            transport = {"ws": WSSocketTransport, "raw": RawSocketTransport, "other": UnregisteredTransport}[kind](sock)
            fmt = WS if kind == "ws" else SSE
            outbox = core.Outbox(max_messages, 1 << 30, DROP_OLDEST, b"\n" if fmt == WS else b"")
            conn = Connection(fmt, DEV_ANONYMOUS, transport, outbox, pending.append, lambda c, code: None)
            sock.conn = conn
            conns.append(conn)
        worlds.append((writer, pending, conns))

    for number, (actions, start) in enumerate(rounds):
        for writer, pending, conns in worlds:
            for index, (conn, (pushes, control, buffered, end)) in enumerate(zip(conns, actions)):
                conn.transport.socket.buffered = buffered
                conn.transport.socket.lose_on_write = end == "lost-on-write"
                for n, (size, priority) in enumerate(pushes):
                    frame = (b"r%d-c%d-m%d;" % (number, index, n)).ljust(FRAME_SIZES[size], b"x")
                    if conn.outbox.push(frame, priority) == WAKE:
                        conn.wake()
                if control:
                    conn.send_control(*(b"ctl%d-%d" % (number, c) for c in range(control)))
                if end == "close":
                    conn.close(4000, "bye")
                elif end == "lost":
                    conn.lost()
            round_, pending[:] = list(pending), []
            writer.write_round(round_, start % len(round_) if round_ else 0)
        seen = [[(conn.transport.socket.writes, conn.scheduled, conn.wrote, conn.state, list(conn.control),
                  conn.outbox.armed, len(conn.outbox), conn.outbox.dropped, conn.transport.closed_with)
                 for conn in conns] for _, _, conns in worlds]
        assert seen[0] == seen[1], number

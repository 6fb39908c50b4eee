"""Micro-benchmarks of the hot path: native vs pure vs a naive baseline.

Run: pytest bench/test_core.py --benchmark-enable --benchmark-only
(recorded with its output in bench/RESULTS.md). Every group compares
implementations side by side in one run; ratios matter, absolute times on a
shared machine do not.
"""
import random
import re

import pytest

from tests.conftest import CORES

CORE_IDS = [core.name for core in CORES]


def make_patterns(n: int, seed: int = 7) -> list[str]:
    """70% literal, 20% with one '*', 10% ending in '>', spread over 100 services
    so that a topic matches a handful of patterns, not thousands."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        svc, obj = f"svc{rng.randrange(100)}", f"obj{rng.randrange(n)}"
        roll = rng.random()
        if roll < 0.7:
            out.append(f"{svc}.{obj}.evt{rng.randrange(4)}")
        elif roll < 0.9:
            out.append(f"{svc}.*.evt{rng.randrange(n // 100 or 1)}")
        else:
            out.append(f"{svc}.{obj}.>")
    return out


def make_topics(patterns: list[str], n: int = 1000, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    topics = []
    for p in rng.sample(patterns, n):
        topics.append(p.replace("*", f"obj{rng.randrange(1000)}").replace(">", "evt0.detail"))
    return topics


class NaiveMatcher:
    """The baseline people write first: a compiled regex per pattern, all tried."""

    def __init__(self, patterns):
        self.rules = []
        for i, p in enumerate(patterns):
            rx = re.escape(p).replace(r"\*", r"[^.]+").replace(r"\>", r".+")
            self.rules.append((re.compile(rx + r"\Z"), i))

    def match(self, topic):
        return tuple(i for rx, i in self.rules if rx.match(topic))


def build_trie(core, patterns, cache_size):
    trie = core.Trie(cache_size)
    for i, p in enumerate(patterns):
        trie.subscribe(p, i)
    return trie


def _matcher(impl, patterns, cache_size):
    if impl == "naive":
        return NaiveMatcher(patterns).match
    return build_trie(next(c for c in CORES if c.name == impl), patterns, cache_size).match


def _match_all(match, topics):
    for topic in topics:
        match(topic)


# Each round matches the same 1,000 distinct topics, so a round's time / 1,000
# is the cost of one match (loop overhead included, ~15 ns).
@pytest.mark.parametrize("size", [1_000, 100_000])
@pytest.mark.parametrize("impl", CORE_IDS + ["naive"])
def test_match_cached_x1000(benchmark, impl, size):
    benchmark.group = f"1,000 cached matches, {size} patterns"
    patterns = make_patterns(size)
    topics = make_topics(patterns)
    if impl == "naive":
        if size > 1_000:
            pytest.skip("building the naive dict cache over 100k patterns takes minutes")
        matcher = NaiveMatcher(patterns)
        match = {t: matcher.match(t) for t in topics}.__getitem__  # a naive dict cache
    else:
        match = _matcher(impl, patterns, 4096)
        _match_all(match, topics)  # warm the cache
    benchmark(_match_all, match, topics)


@pytest.mark.parametrize("size", [1_000, 100_000])
@pytest.mark.parametrize("impl", CORE_IDS + ["naive"])
def test_match_uncached_x1000(benchmark, impl, size):
    benchmark.group = f"1,000 uncached matches, {size} patterns"
    patterns = make_patterns(size)
    topics = make_topics(patterns)
    match = _matcher(impl, patterns, 0)
    if impl == "naive":
        benchmark.pedantic(_match_all, (match, topics[:10 if size > 1_000 else 1000]), rounds=3)
        return
    benchmark(_match_all, match, topics)


@pytest.mark.parametrize("impl", CORE_IDS)
def test_outbox_push_drain(benchmark, impl):
    """One message through one outbox: push then drain (batch of one)."""
    benchmark.group = "outbox push + drain"
    core = next(c for c in CORES if c.name == impl)
    box = core.Outbox(1024, 4 << 20, 0, b"\n")
    frame = b"x" * 100

    def one():
        box.push(frame, 1, None)
        box.drain()
    benchmark(one)


@pytest.mark.parametrize("impl", CORE_IDS)
def test_outbox_push_batch_drain(benchmark, impl):
    """64 pushes then one drain into one write (the batched writer path)."""
    benchmark.group = "outbox 64 pushes + 1 drain"
    core = next(c for c in CORES if c.name == impl)
    box = core.Outbox(1024, 4 << 20, 0, b"\n")
    frame = b"x" * 100
    push = box.push

    def batch():
        for _ in range(64):
            push(frame, 1, None)
        box.drain()
    benchmark(batch)


def _fanout_world(core, n):
    boxes = [core.Outbox(1024, 4 << 20, 0, b"\n") for _ in range(n)]
    subs = tuple(core.Subscription(b, 1, "t") for b in boxes)
    return boxes, subs


@pytest.mark.parametrize("impl", CORE_IDS + ["naive"])
def test_fanout_1000(benchmark, impl):
    """One publication pushed to 1,000 outboxes (queues emptied between rounds)."""
    benchmark.group = "fan-out of one publication to 1,000 outboxes"
    frames = (b"e" * 100, b"w" * 100)
    if impl == "naive":
        # The naive loop: a per-subscriber JSON encode and an asyncio-style queue append.
        import collections
        import json
        queues = [collections.deque() for _ in range(1000)]
        payload = {"topic": "t", "data": "x" * 80}

        def run():
            for q in queues:
                q.append(json.dumps(payload).encode())

        def setup():
            for q in queues:
                q.clear()
    else:
        core = next(c for c in CORES if c.name == impl)
        boxes, subs = _fanout_world(core, 1000)
        fanout = core.fanout
        state = {"seq": 0}

        def run():
            state["seq"] += 1
            fanout(subs, None, frames, 1, None, state["seq"], [], [])

        def setup():
            for b in boxes:
                b.drain()  # what the writers do; keeps each lane's ring allocated
    benchmark.pedantic(run, setup=setup, rounds=2000, iterations=1, warmup_rounds=50)


@pytest.mark.parametrize("impl", CORE_IDS)
def test_fanout_1000_steady_state(benchmark, impl):
    """Fan-out into full queues (each push also drops the oldest): the slow-consumer path."""
    benchmark.group = "fan-out to 1,000 full outboxes (drop_oldest)"
    core = next(c for c in CORES if c.name == impl)
    boxes, subs = _fanout_world(core, 1000)
    frames = (b"e" * 100, b"w" * 100)
    state = {"seq": 0}
    for _ in range(1100):
        state["seq"] += 1
        core.fanout(subs, None, frames, 1, None, state["seq"], [], [])

    def run():
        state["seq"] += 1
        core.fanout(subs, None, frames, 1, None, state["seq"], [], [])
    benchmark(run)

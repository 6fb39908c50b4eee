"""Pure-Python topic trie: the twin of ``ext/hubbub/_trie.pyx``, same API and results.

Patterns are stored one segment a level, NATS style: each node has a map of
literal segments, one ``*`` child, and the subscribers of patterns that end
there or continue with ``>``. ``match`` walks literal, then ``*``, then ``>``
at every level, so both implementations return subscribers in the same order.

Results are cached per literal topic (bounded, oldest entry evicted first).
A subscribe or unsubscribe drops exactly the cached topics its pattern
matches, so a cached result is never stale.
"""
from __future__ import annotations


class _Node:
    __slots__ = ("children", "star", "subs", "tail_subs")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.subs: dict = {}  # pattern ends here; dict as an insertion-ordered set
        self.tail_subs: dict = {}  # pattern continues with '>' here

    def is_empty(self) -> bool:
        return not (self.children or self.star or self.subs or self.tail_subs)


def pattern_matches(pattern_tokens: list[str], topic: str) -> bool:
    """NATS match of one split pattern against a literal topic."""
    tokens = topic.split(".")
    n = len(tokens)
    for i, p in enumerate(pattern_tokens):
        if p == ">":
            return n > i and not (i == 0 and tokens[0].startswith("$"))
        if i >= n:
            return False
        if p == "*":
            if i == 0 and tokens[0].startswith("$"):
                return False
        elif p != tokens[i]:
            return False
    return n == len(pattern_tokens)


class Trie:
    def __init__(self, cache_size: int = 4096) -> None:
        self._root = _Node()
        self._cache: dict[str, tuple] = {}
        self.cache_size = cache_size
        self._count = 0

    def __len__(self) -> int:
        """Number of (pattern, subscriber) pairs held."""
        return self._count

    @property
    def cached(self) -> int:
        return len(self._cache)

    def subscribe(self, pattern: str, sub: object) -> bool:
        """Add ``sub`` under ``pattern``; False when that pair was already there."""
        tokens = pattern.split(".")
        node = self._root
        for i, token in enumerate(tokens):
            if token == ">":
                target = node.tail_subs
                break
            if token == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = _Node()
                node = child
        else:
            target = node.subs
        if sub in target:
            return False
        target[sub] = None
        self._count += 1
        self._invalidate(pattern, tokens)
        return True

    def unsubscribe(self, pattern: str, sub: object) -> bool:
        """Remove ``sub`` from ``pattern``; False when it was not there."""
        tokens = pattern.split(".")
        path = []  # (parent, token, child) to prune empty nodes bottom-up
        node = self._root
        target = None
        for token in tokens:
            if token == ">":
                target = node.tail_subs
                break
            child = node.star if token == "*" else node.children.get(token)
            if child is None:
                return False
            path.append((node, token, child))
            node = child
        if target is None:
            target = node.subs
        if sub not in target:
            return False
        del target[sub]
        self._count -= 1
        for parent, token, child in reversed(path):
            if not child.is_empty():
                break
            if token == "*":
                parent.star = None
            else:
                del parent.children[token]
        self._invalidate(pattern, tokens)
        return True

    def match(self, topic: str) -> tuple:
        """The subscribers of every pattern matching the literal ``topic``.

        A subscriber held under two matching patterns appears twice: the
        dispatcher dedups per connection.
        """
        cache = self._cache
        result = cache.get(topic)
        if result is not None:
            return result
        result = self.match_uncached(topic)
        if self.cache_size > 0:
            if len(cache) >= self.cache_size:
                del cache[next(iter(cache))]
            cache[topic] = result
        return result

    def match_uncached(self, topic: str) -> tuple:
        tokens = topic.split(".")
        out: list = []
        _collect(self._root, tokens, 0, len(tokens), tokens[0].startswith("$"), out)
        return tuple(out)

    def _invalidate(self, pattern: str, tokens: list[str]) -> None:
        cache = self._cache
        if not cache:
            return
        if "*" not in tokens and ">" not in tokens:
            cache.pop(pattern, None)
            return
        stale = [topic for topic in cache if pattern_matches(tokens, topic)]
        for topic in stale:
            del cache[topic]


def _collect(node: _Node, tokens: list, i: int, n: int, dollar: bool, out: list) -> None:
    if i == n:
        out.extend(node.subs)
        return
    child = node.children.get(tokens[i])
    if child is not None:
        _collect(child, tokens, i + 1, n, dollar, out)
    # Wildcards in the first segment never match a '$' topic (as in MQTT).
    if i == 0 and dollar:
        return
    if node.star is not None:
        _collect(node.star, tokens, i + 1, n, dollar, out)
    if node.tail_subs:
        out.extend(node.tail_subs)

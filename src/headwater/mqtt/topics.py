"""Topic names, topic filters and the subscription matching tree.

How this works: a filter is split on ``/`` and stored along a path of
:class:`_Node` objects (one per level; ``+`` and ``#`` are ordinary keys that
the matcher treats specially).  Matching a topic name walks the tree level by
level, following the literal child, the ``+`` child and collecting the ``#``
child, so a match costs O(levels x wildcard fan-out), not O(subscriptions).
The list of matched nodes is cached per topic name; the cache is cleared
whenever a node is created or pruned (subscriber entries inside nodes are
mutated in place, so a cached node list stays valid while subscribers come and
go on existing nodes).

Shared subscriptions (``$share/{ShareName}/{filter}``) live in the same tree,
in a per-node table of groups; each match picks exactly one member of each
matching group, round robin, preferring members the caller says are available.

Everything here is pure: no I/O, no clocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "MAX_TOPIC_BYTES",
    "InvalidTopic",
    "SharedFilter",
    "SubscriptionTree",
    "filter_covers",
    "is_wildcard",
    "parse_filter",
    "topic_matches",
    "validate_topic_filter",
    "validate_topic_name",
]

#: [MQTT-1.5.3] strings are prefixed by a two-byte length, so no topic can be longer.
MAX_TOPIC_BYTES = 65535

#: How many distinct topic names keep their matched-node list cached.  Devices
#: usually publish to a bounded set of topics; when the cache is full it is
#: simply cleared (no LRU bookkeeping on the hot path), so a pathological
#: stream of unique topics costs one full walk per message, never memory.
MATCH_CACHE_SIZE = 8192

_SHARE_PREFIX = "$share/"

K = TypeVar("K")
V = TypeVar("V")


class InvalidTopic(ValueError):
    """A topic name or filter that the standard forbids."""


def _check_common(text: str, what: str) -> None:
    # [MQTT-4.7.3-1] topic names and filters are at least one character long.
    if not text:
        raise InvalidTopic(f"{what} must not be empty")
    # [MQTT-4.7.3-2] they must not include the null character U+0000.
    if "\x00" in text:
        raise InvalidTopic(f"{what} must not contain U+0000")
    # [MQTT-4.7.3-3] at most 65535 bytes of UTF-8.
    if len(text) > MAX_TOPIC_BYTES // 4 and len(text.encode("utf-8")) > MAX_TOPIC_BYTES:
        raise InvalidTopic(f"{what} is longer than {MAX_TOPIC_BYTES} bytes")


def validate_topic_name(name: str) -> None:
    """Raise :class:`InvalidTopic` unless ``name`` may be published to."""
    _check_common(name, "topic name")
    # [MQTT-3.3.2-2] the topic name in a PUBLISH must not contain wildcards.
    if "+" in name or "#" in name:
        raise InvalidTopic("topic name must not contain wildcards")


def validate_topic_filter(topic_filter: str) -> None:
    """Raise :class:`InvalidTopic` unless ``topic_filter`` is a valid filter.

    Shared filters (``$share/...``) are validated by :func:`parse_filter`.
    """
    _check_common(topic_filter, "topic filter")
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level:
            # [MQTT-4.7.1-2] '#' occupies a whole level and is the last character.
            if level != "#" or i != last:
                raise InvalidTopic("'#' must be alone on the last level of a filter")
        elif "+" in level and level != "+":
            # [MQTT-4.7.1-3] '+' occupies an entire level of the filter.
            raise InvalidTopic("'+' must occupy a whole level of a filter")


def is_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


@dataclass(frozen=True, slots=True)
class SharedFilter:
    """A parsed subscription filter: ``share`` is the ShareName or ``None``."""

    share: str | None
    topic_filter: str


def parse_filter(text: str) -> SharedFilter:
    """Validate a SUBSCRIBE/UNSUBSCRIBE filter and split off ``$share/{name}/``."""
    if text.startswith(_SHARE_PREFIX):
        rest = text[len(_SHARE_PREFIX) :]
        name, sep, topic_filter = rest.partition("/")
        # [MQTT-4.8.2-1] the ShareName is at least one character long and must not
        # contain '/', '+' or '#'; [MQTT-4.8.2-2] it is followed by '/' and a filter.
        if not name or not sep or "+" in name or "#" in name:
            raise InvalidTopic("shared subscription must be $share/{ShareName}/{filter}")
        validate_topic_filter(topic_filter)
        return SharedFilter(name, topic_filter)
    validate_topic_filter(text)
    return SharedFilter(None, text)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a (valid, non-shared) filter matches a (valid) topic name."""
    # [MQTT-4.7.2-1] filters starting with a wildcard do not match '$' topics.
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    if len(f_levels) == len(t_levels):
        return True
    # §4.7.1.2: 'sport/#' also matches 'sport' (the parent level).
    return len(f_levels) == len(t_levels) + 1 and f_levels[-1] == "#"


def filter_covers(pattern: str, topic_filter: str) -> bool:
    """Whether every topic matched by ``topic_filter`` is also matched by ``pattern``.

    Used by ACLs to decide whether a subscription stays inside what a client may
    read: ``devices/a/#`` is covered by ``devices/+/#`` but ``devices/#`` is not.
    """
    # [MQTT-4.7.2-1] a pattern starting with a wildcard never matches '$' topics,
    # so it cannot cover a filter that names a '$' topic.
    if topic_filter.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    p_levels = pattern.split("/")
    f_levels = topic_filter.split("/")
    for i, p in enumerate(p_levels):
        if p == "#":
            return True
        if i >= len(f_levels):
            return False
        f = f_levels[i]
        if f == "#":
            # The filter reaches arbitrary depth here (and the parent level, which
            # the pattern covers only if it ends right after this level with '#').
            return False
        if p == "+":
            continue
        if f == "+" or f != p:
            return False
    return len(p_levels) == len(f_levels)


@dataclass(slots=True)
class _Group(Generic[K, V]):
    """The members of one shared subscription group, in subscription order."""

    members: dict[K, V] = field(default_factory=dict)
    cursor: int = 0

    def pick(self, available: Callable[[K], bool] | None) -> tuple[K, V] | None:
        """Next member round robin, skipping unavailable ones when some are available."""
        if not self.members:
            return None
        items = list(self.members.items())
        n = len(items)
        start = self.cursor % n
        if available is not None:
            for step in range(n):
                key, value = items[(start + step) % n]
                if available(key):
                    self.cursor = start + step + 1
                    return key, value
        # Nobody is available: the message still goes to one member's session,
        # which queues it (shared delivery must not be lost just because all
        # members are offline or busy).
        self.cursor = start + 1
        return items[start]


@dataclass(slots=True)
class _Node(Generic[K, V]):
    children: dict[str, _Node[K, V]] = field(default_factory=dict)
    subscribers: dict[K, V] = field(default_factory=dict)
    groups: dict[str, _Group[K, V]] = field(default_factory=dict)

    def empty(self) -> bool:
        return not self.children and not self.subscribers and not self.groups


class SubscriptionTree(Generic[K, V]):
    """Maps topic filters to subscribers ``K`` (e.g. client ids) with values ``V``.

    A subscriber holds at most one entry per (share, filter) pair; subscribing
    again replaces the value ([MQTT-3.8.4-3]: a repeated SUBSCRIBE replaces the
    existing subscription).
    """

    __slots__ = ("_cache", "_count", "_groups", "_root", "_tables")

    def __init__(self) -> None:
        self._root: _Node[K, V] = _Node()
        self._cache: dict[str, list[_Node[K, V]]] = {}
        self._tables: dict[str, list[dict[K, V]]] = {}
        self._count = 0
        self._groups = 0  # shared groups in the tree; 0 skips the shared lookup

    def __len__(self) -> int:
        return self._count

    def subscribe(self, topic_filter: str, key: K, value: V, share: str | None = None) -> bool:
        """Add or replace; returns ``True`` if an entry for ``key`` already existed."""
        node = self._root
        created = False
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
                created = True
            node = child
        if created:
            self._cache.clear()
            self._tables.clear()
        if share is None:
            table = node.subscribers
        else:
            group = node.groups.get(share)
            if group is None:
                group = node.groups[share] = _Group()
                self._groups += 1
            table = group.members
        existed = key in table
        table[key] = value
        if not existed:
            self._count += 1
        return existed

    def unsubscribe(self, topic_filter: str, key: K, share: str | None = None) -> V | None:
        """Remove an entry; returns its value or ``None`` if there was none."""
        path: list[tuple[_Node[K, V], str]] = []
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            path.append((node, level))
            node = child
        if share is None:
            value = node.subscribers.pop(key, None)
        else:
            group = node.groups.get(share)
            if group is None:
                return None
            value = group.members.pop(key, None)
            if not group.members:
                del node.groups[share]
                self._groups -= 1
        if value is None:
            return None
        self._count -= 1
        # Prune empty nodes bottom-up so the tree never grows without bound.
        pruned = False
        for parent, level in reversed(path):
            child = parent.children[level]
            if not child.empty():
                break
            del parent.children[level]
            pruned = True
        if pruned:
            self._cache.clear()
            self._tables.clear()
        return value

    def get(self, topic_filter: str, key: K, share: str | None = None) -> V | None:
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            node = child
        if share is None:
            return node.subscribers.get(key)
        group = node.groups.get(share)
        return None if group is None else group.members.get(key)

    def _nodes(self, topic: str) -> list[_Node[K, V]]:
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        found: list[_Node[K, V]] = []
        levels = topic.split("/")
        last = len(levels)
        # [MQTT-4.7.2-1] a filter starting with a wildcard must not match a topic
        # name beginning with '$'.
        dollar = topic.startswith("$")

        def walk(node: _Node[K, V], i: int) -> None:
            children = node.children
            if not children:
                return
            wild = not (dollar and i == 0)
            if wild:
                hash_node = children.get("#")
                if hash_node is not None:
                    # '#' matches the remaining levels, and also the parent level
                    # itself: 'sport/#' matches 'sport' (§4.7.1.2).
                    found.append(hash_node)
            if i == last:
                return
            literal = children.get(levels[i])
            if literal is not None:
                if i + 1 == last:
                    found.append(literal)
                walk(literal, i + 1)
            if wild:
                plus = children.get("+")
                if plus is not None:
                    if i + 1 == last:
                        found.append(plus)
                    walk(plus, i + 1)

        walk(self._root, 0)
        if len(self._cache) >= MATCH_CACHE_SIZE:
            self._cache.clear()
        self._cache[topic] = found
        return found

    def subscribers(self, topic: str) -> list[dict[K, V]]:
        """The live ``{key: value}`` tables of the non-shared filters matching ``topic``.

        The broker's hot path: a cached list of dicts, no generator, no copies.
        Tables may be empty and a key may appear in several (overlapping filters).
        """
        tables = self._tables.get(topic)
        if tables is None:
            if len(self._tables) >= MATCH_CACHE_SIZE:
                self._tables.clear()
            tables = self._tables[topic] = [node.subscribers for node in self._nodes(topic)]
        return tables

    def shared(
        self, topic: str, available: Callable[[K], bool] | None = None
    ) -> list[tuple[K, V, str]]:
        """One ``(key, value, share)`` per shared group matching ``topic`` (round robin)."""
        if not self._groups:
            return []
        picked: list[tuple[K, V, str]] = []
        for node in self._nodes(topic):
            if node.groups:
                for share, group in node.groups.items():
                    member = group.pick(available)
                    if member is not None:
                        picked.append((member[0], member[1], share))
        return picked

    def match(
        self, topic: str, available: Callable[[K], bool] | None = None
    ) -> Iterator[tuple[K, V, str | None]]:
        """Yield ``(key, value, share)`` for every subscription matching ``topic``.

        Non-shared subscriptions yield every subscriber (a key may appear several
        times when its filters overlap; the caller merges them).  Each matching
        shared group yields exactly one member, chosen round robin among the
        members for which ``available`` is true.
        """
        for node in self._nodes(topic):
            for key, value in node.subscribers.items():
                yield key, value, None
            if node.groups:
                for share, group in node.groups.items():
                    picked = group.pick(available)
                    if picked is not None:
                        yield picked[0], picked[1], share

    def filters(self) -> Iterator[tuple[str, str | None, K, V]]:
        """Every ``(filter, share, key, value)`` in the tree (for diagnostics/tests)."""
        stack: list[tuple[str, _Node[K, V]]] = [
            (level, child) for level, child in self._root.children.items()
        ]
        while stack:
            path, node = stack.pop()
            for key, value in node.subscribers.items():
                yield path, None, key, value
            for share, group in node.groups.items():
                for key, value in group.members.items():
                    yield path, share, key, value
            stack.extend((f"{path}/{level}", child) for level, child in node.children.items())

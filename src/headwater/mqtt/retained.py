"""Retained messages: at most one per topic name, found by topic filter.

How this works: messages sit in a tree keyed by topic level (like the
subscription tree, but the wildcards are in the query, not the data).  A new
subscription walks the tree with its filter: a literal level follows one
child, ``+`` follows every child, ``#`` takes the whole subtree and the node
itself (``sport/#`` matches ``sport``).  Topics whose first level starts with
``$`` are not reached by a leading wildcard [MQTT-4.7.2-1].

Changes are recorded in ``dirty``/``deleted`` sets so the broker can persist
them in batches (see :class:`~headwater.mqtt.stores.SessionStore`).
Pure: times are passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from headwater.mqtt.session import Message

__all__ = ["DEFAULT_MAX_RETAINED", "RetainedStore"]

#: Retained topics kept at most.  Each is a device's "last known value"; 100,000
#: covers a large site.  A retained PUBLISH for a new topic beyond it is not
#: stored (counted in ``RetainedStore.rejected``); replacing an existing one is.
DEFAULT_MAX_RETAINED = 100_000


@dataclass(slots=True)
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    message: Message | None = None


class RetainedStore:
    __slots__ = ("_count", "_root", "deleted", "dirty", "max_retained", "rejected", "tracked")

    def __init__(self, max_retained: int = DEFAULT_MAX_RETAINED) -> None:
        self._root = _Node()
        self._count = 0
        self.max_retained = max_retained
        #: Topics stored or replaced since the last persistence flush.
        self.dirty: set[str] = set()
        #: Topics deleted since the last persistence flush.
        self.deleted: set[str] = set()
        #: Retained messages refused because the store was full.
        self.rejected = 0
        #: Whether changes are recorded (False: nothing persists them, so the sets
        #: would only grow, a topic per retained message ever cleared).
        self.tracked = True

    def __len__(self) -> int:
        return self._count

    def load(self, messages: Iterable[Message]) -> None:
        """Fill from persisted messages (not marked dirty)."""
        for message in messages:
            self._put(message)

    def _put(self, message: Message) -> bool:
        if self._count >= self.max_retained and self.get(message.topic) is None:
            self.rejected += 1
            return False
        node = self._root
        for level in message.topic.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if node.message is None:
            self._count += 1
        node.message = message
        return True

    def set(self, message: Message) -> bool:
        """Store, replace or (empty payload) delete the retained message of its topic.

        [MQTT-3.3.1-10/11 (3.1.1), MQTT-3.3.1-6/7 (5.0)] a retained PUBLISH with a
        zero-length payload removes the retained message for the topic, and is
        itself not stored.  Returns ``False`` if refused because the store is full.
        """
        topic = message.topic
        if not message.payload:
            if self._remove(topic) and self.tracked:
                self.dirty.discard(topic)
                self.deleted.add(topic)
            return True
        if not self._put(message):
            return False
        if self.tracked:
            self.deleted.discard(topic)
            self.dirty.add(topic)
        return True

    def get(self, topic: str) -> Message | None:
        node: _Node | None = self._root
        for level in topic.split("/"):
            node = node.children.get(level) if node is not None else None
            if node is None:
                return None
        return node.message if node is not None else None

    def _remove(self, topic: str) -> bool:
        path: list[tuple[_Node, str]] = []
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.message is None:
            return False
        node.message = None
        self._count -= 1
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.children or child.message is not None:
                break
            del parent.children[level]
        return True

    def match(self, topic_filter: str, now: float) -> list[Message]:
        """Unexpired retained messages whose topic matches ``topic_filter``.

        Expired messages found on the way are deleted ([MQTT-3.3.2-5 (5.0)]: the
        expiry applies to retained messages too).
        """
        found: list[Message] = []
        levels = topic_filter.split("/")
        last = len(levels)

        def collect(node: _Node) -> Iterator[Message]:
            stack = [node]
            while stack:
                current = stack.pop()
                if current.message is not None:
                    yield current.message
                stack.extend(current.children.values())

        def walk(node: _Node, i: int) -> None:
            if i == last:
                if node.message is not None:
                    found.append(node.message)
                return
            level = levels[i]
            if level == "#":
                # '#' matches the parent level too ('sport/#' matches 'sport').
                if node.message is not None and i > 0:
                    found.append(node.message)
                for name, child in node.children.items():
                    # [MQTT-4.7.2-1] a leading wildcard does not match '$' topics.
                    if i == 0 and name.startswith("$"):
                        continue
                    found.extend(collect(child))
                return
            if level == "+":
                for name, child in node.children.items():
                    if i == 0 and name.startswith("$"):
                        continue
                    walk(child, i + 1)
                return
            literal = node.children.get(level)
            if literal is not None:
                walk(literal, i + 1)

        walk(self._root, 0)
        live = [m for m in found if not m.expired(now)]
        if len(live) != len(found):
            for message in found:
                if message.expired(now) and self._remove(message.topic) and self.tracked:
                    self.dirty.discard(message.topic)
                    self.deleted.add(message.topic)
        return live

    def take_changes(self) -> tuple[list[Message], list[str]]:
        """Messages to upsert and topics to delete since the last call (then cleared)."""
        upserts = [m for t in self.dirty if (m := self.get(t)) is not None]
        deletes = list(self.deleted)
        self.dirty.clear()
        self.deleted.clear()
        return upserts, deletes

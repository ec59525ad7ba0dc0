"""Delivery and acknowledgement bookkeeping of one consumer inside this process.

How this works: the memory and SQLite backends keep one :class:`Cursor` per
consumer used since the log was opened, shared by every reader handle of that
consumer in this process (that is how several readers share the work). ``delivered`` is the highest
offset handed out; ``pending`` the offsets handed out and not yet acked. The
position (the low-water mark, see :mod:`headwater.log.base`) is the smallest
pending offset minus one, or ``delivered`` when nothing is pending; a min-heap
with lazy deletion makes that O(log n) per ack even when acks come out of
order. An offset acked below the top of the heap stays in it until it reaches
the top, so while one early offset stays unacked (a delivery retrying with
backoff for an hour) every later ack would stay too: the heap is rebuilt from
``pending`` once the acked offsets in it outnumber the pending ones (see
:data:`HEAP_SLACK`). Offsets given back by a closing reader wait in
``redeliver`` and are handed out again before anything new.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterable

from headwater.log.base import InvalidAck

# The heap is rebuilt from the pending offsets once it holds more than
# 2 x pending + HEAP_SLACK entries, so it never holds much more than twice what
# is pending (itself bounded by the readers' in-flight limits). Rebuilding costs
# O(pending) and happens only after more than pending + HEAP_SLACK acks left an
# entry behind, so an ack costs O(1) amortised; the slack spares tiny heaps
# from rebuilding every few acks.
HEAP_SLACK = 64


class Cursor:
    __slots__ = ("_heap", "_pending", "delivered", "lock", "position", "redeliver")

    def __init__(self, position: int) -> None:
        self.position = position
        self.delivered = position
        self._pending: set[int] = set()
        self._heap: list[int] = []
        self.redeliver: list[int] = []
        # Held while entries are fetched and handed out, so that two readers of
        # one consumer never take the same entries.
        self.lock = asyncio.Lock()

    def handed_out(self, offsets: Iterable[int]) -> None:
        """Record entries given to a reader (new ones in increasing order, or redeliveries)."""
        pending, heap = self._pending, self._heap
        for offset in offsets:
            if offset not in pending:
                pending.add(offset)
                heapq.heappush(heap, offset)
            if offset > self.delivered:
                self.delivered = offset

    def ack(self, offset: int) -> bool:
        """Acknowledge one offset; true when the position moved."""
        if offset <= self.position:
            return False
        if offset > self.delivered:
            raise InvalidAck(
                f"offset {offset} was never delivered (delivered up to {self.delivered})"
            )
        pending = self._pending
        if offset not in pending:
            return False  # acked before
        pending.discard(offset)
        heap = self._heap
        if heap[0] != offset:
            # Below it is still pending: the position stays. The acked offset
            # stays in the heap until it reaches the top or the heap is rebuilt.
            if len(heap) > 2 * len(pending) + HEAP_SLACK:
                heap[:] = pending
                heapq.heapify(heap)
            return False
        return self._recompute()

    def _recompute(self) -> bool:
        """Drop acked offsets from the top of the heap (after which ``heap[0]``, if
        any, is the lowest pending offset: ``ack`` relies on that) and move the
        position."""
        heap, pending = self._heap, self._pending
        while heap and heap[0] not in pending:
            heapq.heappop(heap)
        position = heap[0] - 1 if heap else self.delivered
        if position != self.position:
            self.position = position
            return True
        return False

    def give_back(self, offsets: Iterable[int]) -> None:
        """A reader closed without acking these: hand them out again first."""
        back = [offset for offset in offsets if offset in self._pending]
        if back:
            self.redeliver = sorted({*self.redeliver, *back})

    def take_redeliveries(self, limit: int) -> list[int]:
        taken, self.redeliver = self.redeliver[:limit], self.redeliver[limit:]
        return taken

"""Recognising a QoS 1/2 PUBLISH that is resent (DUP) after its first copy was appended.

How this works: an MQTT sender that does not see the acknowledgement of a
QoS 1/2 PUBLISH resends it on its next connection with the same packet
identifier and the DUP flag set [MQTT-4.4.0-1, MQTT-3.3.1-1]. When the first
copy was appended and only the ack got lost (the connection dropped between
our append and the PUBACK reaching the sender), appending the resend would
put the same message in the log twice. :class:`Redeliveries` remembers, per
sender, the packet ids of the last appended messages with a fingerprint of
their topic and payload; a DUP resend whose packet id and fingerprint match is
acknowledged without a second append.

Only a resend (DUP=1) is ever suppressed: a packet identifier becomes free once
acknowledged and is reused for new messages, which are always appended even
when topic and payload repeat. The memory is per process and bounded
(:data:`DEFAULT_WINDOW` ids per sender, :data:`DEFAULT_SENDERS` senders, least
recently active forgotten first), so a crash between append and ack can still
produce a duplicate: delivery stays at least once, never at most once.

A resend may arrive while the first copy's append is still under way (the
sender reconnected and took over its session meanwhile); :meth:`begin` marks
that append so the resend waits for its outcome instead of racing it. Only a
resend that meets such a mark costs a future; the common case is a dict entry.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

__all__ = ["DEFAULT_SENDERS", "DEFAULT_WINDOW", "Redeliveries", "fingerprint"]

DEFAULT_WINDOW: Final = 1024
"""Appended packet ids remembered per sender. A sender resends only messages it has
in flight, which its Receive Maximum / our receive maximum bound (1024 for
MqttSource, 100 for devices by default in most clients), so the window covers them."""

DEFAULT_SENDERS: Final = 10_000
"""Senders remembered; beyond it the least recently active one is forgotten (its
resends, if any, are appended again: a duplicate, never a loss). 10,000 x a few
live ids x ~100 bytes stays in the low megabytes."""


def fingerprint(topic: str, payload: bytes) -> int:
    """A process-local fingerprint of a message (Python's hash; bytes cache it)."""
    return hash((topic, payload))


class Redeliveries:
    """Per-sender memory of appended packet ids; see the module docstring."""

    __slots__ = ("_pending", "_senders", "max_senders", "suppressed", "window")

    def __init__(self, window: int = DEFAULT_WINDOW, max_senders: int = DEFAULT_SENDERS) -> None:
        self.window = window
        self.max_senders = max_senders
        self.suppressed = 0
        self._senders: OrderedDict[str, dict[int, int]] = OrderedDict()
        #: Appends under way: (sender, packet id) -> [fingerprint, future of a
        #: resend waiting for it, or None].
        self._pending: dict[tuple[str, int], list[Any]] = {}

    def appended(self, sender: str, packet_id: int, print_: int) -> None:
        """Record that ``sender``'s message ``packet_id`` is in the log."""
        ids = self._senders.get(sender)
        if ids is None:
            if len(self._senders) >= self.max_senders:
                self._senders.popitem(last=False)
            ids = self._senders[sender] = {}
        else:
            self._senders.move_to_end(sender)
            ids.pop(packet_id, None)  # re-insert: newest last
        ids[packet_id] = print_
        if len(ids) > self.window:
            del ids[next(iter(ids))]

    def was_appended(self, sender: str, packet_id: int, print_: int) -> bool:
        """True when this exact message (same id and fingerprint) was appended."""
        ids = self._senders.get(sender)
        return ids is not None and ids.get(packet_id) == print_

    def begin(self, sender: str, packet_id: int, print_: int) -> None:
        """Mark an append under way; :meth:`end` tells how it went."""
        self._pending[(sender, packet_id)] = [print_, None]

    def begin_many(self, sender: str, appends: Sequence[tuple[int, int]]) -> None:
        """:meth:`begin` for every (packet id, fingerprint) of one sender's batch."""
        self._pending.update(((sender, pid), [print_, None]) for pid, print_ in appends)

    def end(self, sender: str, packet_id: int, print_: int, ok: bool) -> None:
        """The append started by :meth:`begin` finished (``ok``: it is in the log)."""
        key = (sender, packet_id)
        entry = self._pending.get(key)
        if entry is not None and entry[0] == print_:
            del self._pending[key]
            waiting = entry[1]
            if waiting is not None and not waiting.done():
                waiting.set_result(ok)
        if ok:
            self.appended(sender, packet_id, print_)

    def end_many(self, sender: str, appends: Sequence[tuple[int, int]], ok: bool) -> None:
        """:meth:`end` for every (packet id, fingerprint) of one sender's batch."""
        pending = self._pending
        for packet_id, print_ in appends:
            entry = pending.get((sender, packet_id))
            if entry is not None and entry[0] == print_:
                del pending[(sender, packet_id)]
                waiting = entry[1]
                if waiting is not None and not waiting.done():
                    waiting.set_result(ok)
        if not ok or not appends:
            return
        ids = self._senders.get(sender)
        if ids is None:
            if len(self._senders) >= self.max_senders:
                self._senders.popitem(last=False)
            ids = self._senders[sender] = {}
        else:
            self._senders.move_to_end(sender)
        for packet_id, print_ in appends:
            ids.pop(packet_id, None)  # re-insert: newest last
            ids[packet_id] = print_
        excess = len(ids) - self.window
        if excess > 0:
            for stale in list(itertools.islice(ids, excess)):
                del ids[stale]

    async def is_resend(self, sender: str, packet_id: int, print_: int) -> bool:
        """For a DUP publish: True when its first copy is (or just became) durable.

        Waits for a first copy whose append is still under way. A True answer
        is counted in :attr:`suppressed`.
        """
        entry = self._pending.get((sender, packet_id))
        if entry is not None and entry[0] == print_:
            if entry[1] is None:
                entry[1] = asyncio.get_running_loop().create_future()
            await asyncio.shield(entry[1])
        if self.was_appended(sender, packet_id, print_):
            self.suppressed += 1
            return True
        return False

    def forget(self, sender: str) -> None:
        """Drop what is known about ``sender`` (its session ended: nothing will be resent)."""
        self._senders.pop(sender, None)

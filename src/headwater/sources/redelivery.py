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
sender reconnected and took over its session meanwhile); :meth:`Redeliveries.begin`
marks the appends of one batch as a :class:`Flight` so that the resend waits
for their outcome instead of racing it. The bookkeeping is per batch, not per
message: one flight per append call, the batch's packet ids recorded with one
dict update when it ends; only a resend that meets a flight costs a future.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from typing import Final

__all__ = ["DEFAULT_SENDERS", "DEFAULT_WINDOW", "Flight", "Redeliveries", "fingerprint"]

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


class Flight:
    """The QoS 1/2 messages of one batch whose append is under way."""

    __slots__ = ("prints", "waiter")

    def __init__(self, prints: dict[int, int]) -> None:
        #: packet id -> fingerprint of each message of the batch.
        self.prints = prints
        #: Resolved (True: appended) when the batch's append ends, if a resend waits.
        self.waiter: asyncio.Future[bool] | None = None


class Redeliveries:
    """Per-sender memory of appended packet ids; see the module docstring."""

    __slots__ = ("_flights", "_senders", "max_senders", "suppressed", "window")

    def __init__(self, window: int = DEFAULT_WINDOW, max_senders: int = DEFAULT_SENDERS) -> None:
        self.window = window
        self.max_senders = max_senders
        self.suppressed = 0
        self._senders: OrderedDict[str, dict[int, int]] = OrderedDict()
        #: The batches of each sender whose appends are under way, oldest first.
        self._flights: dict[str, list[Flight]] = {}

    def appended(self, sender: str, packet_id: int, print_: int) -> None:
        """Record that ``sender``'s message ``packet_id`` is in the log."""
        self._record(sender, {packet_id: print_})

    def reused(self, sender: str, packet_id: int) -> None:
        """``sender`` sent a new message (DUP=0) under ``packet_id``: the one it had
        before was acknowledged and is settled, so a resend of the new one must not
        be matched against it (same topic and payload, say a door that opens twice)."""
        ids = self._senders.get(sender)
        if ids is not None:
            ids.pop(packet_id, None)

    def was_appended(self, sender: str, packet_id: int, print_: int) -> bool:
        """True when this exact message (same id and fingerprint) was appended."""
        ids = self._senders.get(sender)
        return ids is not None and ids.get(packet_id) == print_

    def begin(self, sender: str, prints: dict[int, int]) -> Flight:
        """Mark the appends of one batch under way (``prints``: packet id -> fingerprint,
        handed over); :meth:`end` tells how they went."""
        flight = Flight(prints)
        flights = self._flights.get(sender)
        if flights is None:
            self._flights[sender] = [flight]
        else:
            flights.append(flight)
        return flight

    def end(self, sender: str, flight: Flight, appended: dict[int, int]) -> None:
        """The batch of ``flight`` is done: ``appended`` (its ``prints`` when all of it,
        else those of them) is in the log, the rest is not."""
        flights = self._flights.get(sender)
        if flights is not None:
            if flights[0] is flight:
                del flights[0]
            elif flight in flights:
                flights.remove(flight)
            if not flights:
                del self._flights[sender]
        waiter = flight.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(bool(appended))  # each waiter looks up its own id below
        if appended:
            self._record(sender, appended)

    def _record(self, sender: str, appended: dict[int, int]) -> None:
        ids = self._senders.get(sender)
        if ids is None:
            if len(self._senders) >= self.max_senders:
                self._senders.popitem(last=False)
            ids = self._senders[sender] = {}
        else:
            self._senders.move_to_end(sender)
            for packet_id in ids.keys() & appended.keys():
                del ids[packet_id]  # re-inserted below: reused ids are the newest
        ids.update(appended)
        excess = len(ids) - self.window
        if excess > 0:
            for stale in list(itertools.islice(ids, excess)):
                del ids[stale]

    async def is_resend(self, sender: str, packet_id: int, print_: int) -> bool:
        """For a DUP publish: True when its first copy is (or just became) durable.

        Waits for a first copy whose append is still under way. A True answer
        is counted in :attr:`suppressed`.
        """
        for flight in self._flights.get(sender, ()):
            if flight.prints.get(packet_id) == print_:
                if flight.waiter is None:
                    flight.waiter = asyncio.get_running_loop().create_future()
                await asyncio.shield(flight.waiter)
                break
        if self.was_appended(sender, packet_id, print_):
            self.suppressed += 1
            return True
        return False

    def forget(self, sender: str) -> None:
        """Drop what is known about ``sender`` (its session ended: nothing will be resent)."""
        self._senders.pop(sender, None)

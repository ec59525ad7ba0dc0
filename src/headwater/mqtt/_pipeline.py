"""The PUBLISHes of one connection that are with the publish hook, settled in arrival order.

How this works: the connection handler (:mod:`headwater.mqtt._handler`)
collects the PUBLISHes of one socket read that the hook selects in
:attr:`Pipeline.batch` (the hot path appends there directly) and calls
:meth:`Pipeline.start` at the end of the read, or when the batch reaches
:data:`MAX_BATCH`: the batch goes to the hook as one task (one durable append
for the Broker source). Batches are pipelined: the next read is decoded while
earlier batches are with the hook, up to ``receive_maximum`` messages in all,
then :meth:`start` returns an awaitable that the reader waits on. Each task's
outcomes are applied strictly in arrival order (:meth:`settle`, a done
callback): an accepted message is routed and acknowledged, a refused one is
answered with its reason code (MQTT 5) or, for 3.1.1, which cannot say "not
now", the connection is closed without an ack so that the client resends
[MQTT-4.4.0-1]. A hook that fails or answers the wrong number of outcomes
refuses the whole batch (0x80), never acknowledges it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from headwater.mqtt.config import Hooked, Outcome, Refusal
from headwater.mqtt.packets import Publish, ReasonCode
from headwater.mqtt.session import Message

if TYPE_CHECKING:
    from headwater.mqtt._handler import ClientHandler

__all__ = ["MAX_BATCH", "Pipeline"]

logger = logging.getLogger("headwater.mqtt.broker")

#: The selected PUBLISHes of one read at most per hook call: a batch large enough
#: to amortise the hook's fixed costs, small enough to start appending early.
MAX_BATCH = 256

InFlight = tuple["asyncio.Task[Sequence[Outcome]]", list[Hooked], list[Publish]]
"""A batch with the hook: its task, its messages and their packets."""


class Pipeline:
    """The batches of one connection with the hook; see the module docstring."""

    __slots__ = ("batch", "handler", "in_flight", "messages", "packets")

    def __init__(self, handler: ClientHandler) -> None:
        self.handler = handler
        #: Batches with the hook, oldest first, and how many messages they hold.
        self.in_flight: deque[InFlight] = deque()
        self.messages = 0
        #: The batch being collected from the current read, and its packets.
        self.batch: list[Hooked] = []
        self.packets: list[Publish] = []

    def start(self) -> Awaitable[None] | None:
        """Hand the collected batch to the hook; an awaitable when the window is full."""
        handler = self.handler
        assert handler.hook is not None and handler.info is not None
        batch, self.batch = self.batch, []
        packets, self.packets = self.packets, []
        task = asyncio.ensure_future(handler.hook(handler.info, batch))
        self.in_flight.append((task, batch, packets))
        self.messages += len(batch)
        task.add_done_callback(self.settle)
        if self.messages >= handler.config.receive_maximum:
            # Bounded pipeline: read nothing more until the oldest is settled.
            return self.settled(one=True)
        return None

    async def settled(self, *, one: bool = False) -> None:
        """Wait until every batch (``one``: the oldest) has been settled."""
        while self.in_flight:
            oldest = self.in_flight[0]
            await asyncio.wait((oldest[0],))
            self.settle()
            if one:
                return

    def close(self) -> None:
        """The connection is gone: stop what is still with the hook, and let go of
        the handler (a reference cycle otherwise, which only a full garbage
        collection would free, with the buffers of the handler's connection)."""
        for task, _, _ in self.in_flight:
            task.cancel()
        self.in_flight.clear()
        self.batch.clear()
        self.packets.clear()
        del self.handler  # the cancelled tasks' callbacks find nothing to settle

    def settle(self, _: object = None) -> None:
        """Apply the outcomes of the finished batches at the head, in arrival order."""
        in_flight = self.in_flight
        while in_flight and in_flight[0][0].done():
            handler = self.handler
            task, batch, packets = in_flight.popleft()
            self.messages -= len(batch)
            outcomes: Sequence[Outcome] | None = None
            if task.cancelled():
                pass
            elif (exc := task.exception()) is not None:
                logger.error("the publish hook failed for %s", handler.client_id, exc_info=exc)
            else:
                outcomes = task.result()
                if len(outcomes) != len(batch):
                    logger.error("the publish hook answered %d of %d", len(outcomes), len(batch))
                    outcomes = None
            if outcomes is None:
                outcomes = [ReasonCode.UNSPECIFIED_ERROR] * len(batch)
            route = handler.broker.route
            ack = handler.conn.ack
            for item, packet, code in zip(batch, packets, outcomes, strict=True):
                if handler.closing:
                    break  # a refusal closed the connection: the rest is resent later
                if code is None:  # accepted: the common case, inline
                    route(item.message)
                    ack(packet)
                else:
                    self._outcome(item.message, packet, code)
            handler.wake()

    def _outcome(
        self, message: Message, packet: Publish, code: ReasonCode | Refusal | None
    ) -> None:
        handler = self.handler
        reason = code.code if isinstance(code, Refusal) else code
        if reason is None or reason < 0x80:
            handler.broker.route(message)
            handler.conn.ack(packet)
            handler.wake()
            return
        handler.broker.stats.hook_failures += 1
        if not packet.qos:
            return  # nothing to tell a QoS 0 publisher
        if handler.v5 or isinstance(code, Refusal):
            handler.refuse_publish(packet, ReasonCode(reason))
        else:
            # 3.1.1 cannot say "not now": close without acknowledging, so that
            # the client resends the message on its next connection [MQTT-4.4.0-1].
            handler.broker.throttle.warning(
                ("refused-311", reason),
                "closing %s: publish refused for now (%s); it will resend",
                handler.client_id,
                ReasonCode(reason).name,
            )
            handler.close()

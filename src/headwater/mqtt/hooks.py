"""The broker's publish hook for a per-message callback, and a will waiting to be published.

How this works: :class:`EachPublish` turns an ``on_publish`` callback (one
message at a time) into a :class:`~headwater.mqtt.config.PublishHook` (a
batch at a time): the messages of a batch are hooked concurrently, and a
callback that raises refuses its own message only. A :class:`PendingWill` is
a will the broker holds for its Will Delay: the message, who sent it, the
ACL it is checked against when published; :meth:`PendingWill.as_json` is
what a session store shared by several processes keeps of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from headwater.mqtt.auth import Acl
from headwater.mqtt.config import ClientInfo, Hooked, OnPublish, Outcome
from headwater.mqtt.packets import ReasonCode
from headwater.mqtt.session import Message

__all__ = ["EachPublish", "PendingWill", "info_json"]

logger = logging.getLogger("headwater.mqtt.broker")


class EachPublish:
    """A per-message ``on_publish`` callback as a :class:`PublishHook`.

    Every message is selected; the messages of a batch are hooked concurrently,
    one task each, and a callback that raises refuses its message only.
    """

    def __init__(self, on_publish: OnPublish) -> None:
        self.on_publish = on_publish

    def selects(self, topic: str) -> bool:
        return True

    async def __call__(self, info: ClientInfo, batch: Sequence[Hooked]) -> Sequence[Outcome]:
        fn = self.on_publish
        if len(batch) == 1:
            item = batch[0]
            return [await fn(info, item.message, item.packet_id, item.dup)]
        results = await asyncio.gather(
            *(fn(info, h.message, h.packet_id, h.dup) for h in batch), return_exceptions=True
        )
        outcomes: list[Outcome] = []
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                logger.error("on_publish hook failed for %s", info.client_id, exc_info=result)
                outcomes.append(ReasonCode.UNSPECIFIED_ERROR)
            else:
                outcomes.append(result)
        return outcomes


def info_json(info: ClientInfo) -> dict[str, Any]:
    """What a shared store keeps of who sent a will (read back as a ClientInfo)."""
    return {
        "client_id": info.client_id,
        "username": info.username,
        "version": int(info.protocol_version),
        "listener": info.listener,
        "peer": info.peer,
        "user": info.user,
    }


@dataclass(slots=True)
class PendingWill:
    """A will held for its Will Delay (``handle``: the timer that publishes it)."""

    message: Message
    info: ClientInfo
    acl: Acl | None
    handle: asyncio.TimerHandle | None = None

    def as_json(self) -> dict[str, Any]:
        return {"message": self.message.to_json(), "info": info_json(self.info)}

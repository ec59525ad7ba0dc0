"""A cancel that lands while a connect fails is a cancel, not the connect's error.

Python 3.11's ``asyncio.wait_for`` returns (or raises) the inner result when
the inner awaitable finished in the same loop iteration as the cancel
(gh-86296), so a task cancelled while its connect was being refused went on
as if the connect had failed: an MqttSource retried forever and its stop
never returned.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from headwater.mqtt.client import Client, ClientConfig
from headwater.mqtt.packets import ProtocolVersion
from headwater.sources.mapping import Mapping
from headwater.sources.mqtt import MqttSourceRunner

CONFIG = ClientConfig("127.0.0.1", 9, "c", ProtocolVersion.MQTT5)


class Refusal:
    """A connect that waits; :meth:`refuse_and_cancel` refuses it and cancels its
    caller in one step, as a refused connect and a stop may land together."""

    def __init__(self) -> None:
        self.gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting = asyncio.Event()

    async def connect(self, client: Client) -> None:
        self.waiting.set()
        await self.gate

    def refuse_and_cancel(self, task: asyncio.Task[Any]) -> None:
        self.gate.set_exception(ConnectionRefusedError("refused"))
        task.cancel()


async def test_a_cancelled_connect_raises_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    refusal = Refusal()
    monkeypatch.setattr(Client, "_connect", lambda client: refusal.connect(client))
    task = asyncio.ensure_future(Client(CONFIG).__aenter__())
    await asyncio.wait_for(refusal.waiting.wait(), 5)
    refusal.refuse_and_cancel(task)
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_mqtt_source_stops_when_cancelled_during_a_refused_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refusal = Refusal()
    monkeypatch.setattr(Client, "_connect", lambda client: refusal.connect(client))

    async def emit(event: object) -> None:
        return None

    runner = MqttSourceRunner(CONFIG, [("a/#", 1)], Mapping.compile(), emit)
    task = asyncio.ensure_future(runner.run())
    await asyncio.wait_for(refusal.waiting.wait(), 5)
    refusal.refuse_and_cancel(task)
    await asyncio.wait({task}, timeout=5)
    try:
        assert task.done(), "the source went on retrying"
        assert task.cancelled()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

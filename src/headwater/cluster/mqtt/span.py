"""An embedded broker's router and session store for a mesh, as one object.

How this works: :class:`MqttMesh` makes the
:class:`~headwater.cluster.mqtt.sessions.MeshSessions` and the
:class:`~headwater.cluster.mqtt.router.NatsRouter` of one MqttBrokerSource on
one :class:`~headwater.cluster.mqtt.link.MeshLink`, introduces them to each
other, and opens and closes the link (the runtime's
:class:`~headwater.runtime.context.MqttSpan`).
"""

from __future__ import annotations

from typing import Any

from headwater.cluster.mqtt.link import MeshLink
from headwater.cluster.mqtt.router import NatsRouter
from headwater.cluster.mqtt.sessions import MeshSessions

__all__ = ["MqttMesh"]


class MqttMesh:
    """An embedded broker's router and store for a mesh (see the module docstring)."""

    def __init__(self, link: MeshLink) -> None:
        self.link = link
        self.sessions = MeshSessions(link)
        self.router = NatsRouter(link, self.sessions)
        self.sessions.router = self.router

    async def open(self) -> None:
        await self.link.open()

    async def close(self) -> None:
        await self.link.close()

    def status(self) -> dict[str, Any]:
        return {"mesh": {**self.router.stats(), **self.sessions.stats()}}

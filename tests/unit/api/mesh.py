"""A runtime with the admin API and the Broker ingress, and a subscriber that fails on demand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient

from headwater.runtime import Runtime
from tests.helpers import Receiver


@dataclass
class Mesh:
    runtime: Runtime
    client: TestClient  # type: ignore[type-arg]
    subscriber: Receiver
    """Answers 503 until a test sets its ``status``."""

    async def apply(self, text: str) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/resources", data=text, headers={"Content-Type": "application/yaml"}
        )
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body

    async def send(self, event_id: str, data: object, **attributes: str) -> None:
        headers = {
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "/test",
            "ce-type": "dev.headwater.test",
            **{f"ce-{k}": v for k, v in attributes.items()},
        }
        response = await self.client.post("/default/default", json=data, headers=headers)
        assert response.status == 202, await response.text()

    async def json(self, method: str, path: str) -> tuple[int, Any]:
        response = await self.client.request(method, path)
        return response.status, await response.json()

"""A runtime with the admin API and the Broker ingress, and a subscriber that fails on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from headwater.runtime import Runtime


@dataclass
class Subscriber:
    """An HTTP subscriber answering ``status``; ``received`` keeps the ids it accepted."""

    status: int = 503
    received: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        if self.status < 300:
            self.received.append(request.headers.get("ce-id", ""))
        return web.Response(status=self.status, text="subscriber says no")


@dataclass
class Mesh:
    runtime: Runtime
    client: TestClient  # type: ignore[type-arg]
    subscriber: Subscriber

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


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - polls the API
            await asyncio.sleep(0.02)

"""Fixtures of the admin API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from headwater.api import add_ingress, create_app
from headwater.runtime import Runtime
from tests.helpers import Receiver
from tests.unit.api.mesh import Mesh


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    async with Receiver.serving(status=503, error_body=b"subscriber says no") as subscriber:
        runtime = Runtime()
        app = create_app(runtime)
        add_ingress(app, runtime)
        try:
            async with TestClient(TestServer(app)) as client:
                yield Mesh(runtime, client, subscriber)
        finally:
            await runtime.close()

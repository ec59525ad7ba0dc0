"""Fixtures of the admin API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from headwater.api import add_ingress, create_app
from headwater.runtime import Runtime
from tests.unit.api.mesh import Mesh, Subscriber


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    subscriber = Subscriber()
    sub_app = web.Application()
    sub_app.router.add_post("/", subscriber.handle)
    async with TestServer(sub_app) as sub_server:
        subscriber.url = str(sub_server.make_url("/"))
        runtime = Runtime()
        app = create_app(runtime)
        add_ingress(app, runtime)
        try:
            async with TestClient(TestServer(app)) as client:
                yield Mesh(runtime, client, subscriber)
        finally:
            await runtime.close()

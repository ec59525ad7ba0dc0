"""A Broker's own bearer token is checked by its ingress, not by the admin API's middleware."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from headwater.cloudevents import CloudEvent
from headwater.eventing import Ingress

EVENT = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}


class Accepting:
    max_event_size = 1024

    def __init__(self) -> None:
        self.accepted: list[CloudEvent] = []

    async def accept(self, events: Sequence[CloudEvent]) -> list[int]:
        self.accepted.extend(events)
        return list(range(len(events)))


@pytest.mark.parametrize(
    ("path", "authorization", "status"),
    [
        pytest.param("/default/locked", None, 401, id="none"),
        pytest.param("/default/locked", "Bearer nope", 401, id="wrong"),
        pytest.param("/default/locked", "Basic dDBrZW4=", 401, id="not-bearer"),
        pytest.param("/default/locked", "Bearer t0ken", 202, id="right"),
        pytest.param("/default/locked", "bearer t0ken", 202, id="scheme-any-case"),
        pytest.param("/default/open", None, 202, id="open-broker"),
    ],
)
async def test_a_broker_token_is_required_by_its_ingress(
    path: str, authorization: str | None, status: int
) -> None:
    broker = Accepting()
    tokens = {"locked": "t0ken"}
    ingress = Ingress(lambda ns, name: broker, token=lambda ns, name: tokens.get(name))
    app = web.Application()  # no middleware: the ingress alone decides
    ingress.add_routes(app)
    headers = EVENT if authorization is None else {**EVENT, "Authorization": authorization}
    async with TestClient(TestServer(app)) as client:
        response = await client.post(path, headers=headers)
        assert response.status == status, await response.text()
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "needs its bearer token" in await response.text()
    assert len(broker.accepted) == (1 if status == 202 else 0)

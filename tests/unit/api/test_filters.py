"""CESQL filters from the dashboard: checked before a tail opens, refused by the tail too."""

from __future__ import annotations

import pytest

from tests.unit.api.mesh import Mesh

BROKER = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
"""


async def test_a_valid_filter(mesh: Mesh) -> None:
    response = await mesh.client.post("/api/v1/filters/check", json={"filter": "type = 'x'"})
    assert response.status == 200
    assert await response.json() == {"valid": True, "error": None, "line": None, "column": None}


async def test_an_invalid_filter_gets_its_parse_error(mesh: Mesh) -> None:
    response = await mesh.client.post("/api/v1/filters/check", json={"filter": "type =\n  AND"})
    assert response.status == 200
    body = await response.json()
    assert body["valid"] is False
    assert (body["line"], body["column"]) == (2, 3)
    assert body["error"] == "line 2, column 3: expected a value, found 'AND'\n    AND\n    ^"


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        pytest.param({"data": b"{"}, 400, id="not-json"),
        pytest.param({"json": ["type = 'x'"]}, 400, id="not-an-object"),
        pytest.param({"json": {"filter": 3}}, 400, id="filter-not-a-string"),
        pytest.param({"json": {}}, 400, id="no-filter"),
        pytest.param({"json": {"filter": "x" * 70_000}}, 413, id="too-large"),
    ],
)
async def test_bad_check_requests(mesh: Mesh, kwargs: dict, status: int) -> None:  # type: ignore[type-arg]
    response = await mesh.client.post("/api/v1/filters/check", **kwargs)
    assert response.status == status
    assert (await response.json())["error"]


async def test_the_tail_refuses_an_invalid_filter_before_streaming(mesh: Mesh) -> None:
    await mesh.apply(BROKER)
    response = await mesh.client.get(
        "/api/v1/brokers/default/default/events", params={"filter": "type = "}
    )
    assert response.status == 400
    assert response.content_type == "application/json"
    assert (await response.json())["error"].startswith("invalid filter: line 1, column 8: ")

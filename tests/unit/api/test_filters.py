"""CESQL filters from the dashboard: checked before a tail opens, refused by the tail too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
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


async def _chunks(body: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_a_chunked_body_over_the_limit_is_refused_as_it_is_read(mesh: Mesh) -> None:
    # No Content-Length to check: the limit holds on the bytes read. Before, a
    # 3 MB expression sent so was read whole and compiled on the event loop.
    expression = "a IN (" + ",".join(["1"] * 1_500_000) + ")"
    response = await mesh.client.post(
        "/api/v1/filters/check",
        data=_chunks(orjson.dumps({"filter": expression})),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 413
    assert (await response.json())["error"] == "request body over 65536 bytes"


async def test_a_chunked_apply_over_the_limit_is_refused(mesh: Mesh) -> None:
    body = BROKER.encode() + b"# " + b"x" * (5 * 1024 * 1024) + b"\n"
    response = await mesh.client.post(
        "/api/v1/resources", data=_chunks(body), headers={"Content-Type": "application/yaml"}
    )
    assert response.status == 413
    assert mesh.runtime.get(("Broker", "default", "default")) is None


async def test_a_huge_integer_literal_is_a_parse_error_with_its_position(mesh: Mesh) -> None:
    # Python's int() refuses more than 4,300 digits: this was a 500.
    response = await mesh.client.post("/api/v1/filters/check", json={"filter": "x = " + "9" * 4301})
    assert response.status == 200
    body = await response.json()
    assert (body["valid"], body["line"], body["column"]) == (False, 1, 5)
    assert (
        "integer literal 999999999999...(4301 digits) is outside the 32-bit range"
        in (body["error"])
    )
    await mesh.apply(BROKER)
    tail = await mesh.client.get(
        "/api/v1/brokers/default/default/events", params={"filter": "x = " + "9" * 4301}
    )
    assert tail.status == 400
    assert "outside the 32-bit range" in (await tail.json())["error"]


async def test_a_decimal_is_refused_with_the_reason(mesh: Mesh) -> None:
    response = await mesh.client.post(
        "/api/v1/filters/check", json={"filter": "temperature > 23.5"}
    )
    body = await response.json()
    assert body["valid"] is False
    assert "CESQL v1 has only integers" in body["error"]


async def _tail_lines(mesh: Mesh, filter_: str, until: bytes) -> list[bytes]:
    response = await mesh.client.get(
        "/api/v1/brokers/default/default/events", params={"filter": filter_, "start": "earliest"}
    )
    assert response.status == 200
    lines: list[bytes] = []
    while not lines or not lines[-1].startswith(until):
        lines.append(await asyncio.wait_for(response.content.readline(), 30))
    response.close()
    return lines


async def test_a_tail_filter_reading_an_attribute_no_event_has_is_warned_about_once(
    mesh: Mesh,
) -> None:
    await mesh.apply(BROKER)
    for i in range(12):
        await mesh.send(f"e{i}", {"n": i}, temperature="25")
    lines = await _tail_lines(mesh, "temprature > 23", b"data: none of")
    assert lines[-2] == b"event: warning\n"
    assert lines[-1] == (
        b"data: none of the first 10 events has the attribute 'temprature': the filter cannot "
        b"match them (MissingAttributeError); did you mean 'temperature'?\n"
    )
    assert not [line for line in lines if line.startswith(b"id:")]  # nothing matched


async def test_a_tail_filter_whose_attributes_exist_has_no_warning(mesh: Mesh) -> None:
    await mesh.apply(BROKER)
    for i in range(12):
        await mesh.send(f"e{i}", {"n": i}, temperature="25")
    await mesh.send("last", {}, temperature="30", subject="end")
    lines = await _tail_lines(
        mesh, "temperature > 23 AND NOT EXISTS nothere", b'data: {"specversion":"1.0","id":"last"'
    )
    assert len([line for line in lines if line.startswith(b"data: {")]) == 13
    assert b"event: warning\n" not in lines


@pytest.mark.parametrize("start", ["offset:100000000000000000000", "offset:\u00b2"])
async def test_a_start_no_log_can_hold_is_a_400(mesh: Mesh, start: str) -> None:
    """Refused before the stream opens (an offset past SQLite's INTEGER broke the tail
    after its 200, and a replay job after its 202)."""
    await mesh.apply(BROKER)
    tail = await mesh.client.get("/api/v1/brokers/default/default/events", params={"start": start})
    assert tail.status == 400, await tail.text()
    replay = await mesh.client.post(
        "/api/v1/replays",
        json={"broker": "default", "start": start, "destination": {"uri": "http://127.0.0.1:9/"}},
    )
    assert replay.status == 400, await replay.text()


async def test_a_log_that_cannot_be_read_is_a_503(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headwater.log import LogUnavailable

    await mesh.apply(BROKER)

    async def away(*args: object, **kwargs: object) -> None:
        raise LogUnavailable("NATS is away")

    monkeypatch.setattr(mesh.runtime.log, "info", away)
    stream = await mesh.client.get("/api/v1/brokers/default/default/stream")
    assert stream.status == 503 and "NATS is away" in (await stream.json())["error"]
    replay = await mesh.client.post(
        "/api/v1/replays",
        json={"broker": "default", "destination": {"uri": "http://127.0.0.1:9/"}},
    )
    assert replay.status == 503, await replay.text()

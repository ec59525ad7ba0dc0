"""The admin API against an in-process runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from headwater.api import add_ingress, create_app
from headwater.runtime import Runtime

DISPLAY = """\
apiVersion: sinks.headwater.dev/v1alpha1
kind: EventDisplay
metadata: {name: display}
"""

PING = """\
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {name: beat}
spec:
  schedule: "* * * * *"
  sink:
    ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: EventDisplay, name: display}
"""


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    runtime = Runtime()
    async with TestClient(TestServer(create_app(runtime))) as client:
        yield client
    await runtime.close()


async def _apply(client: TestClient, text: str) -> dict:  # type: ignore[type-arg]
    response = await client.post(
        "/api/v1/resources", data=text, headers={"Content-Type": "application/yaml"}
    )
    return {"status": response.status, **(await response.json())}


async def test_apply_list_get_delete(client: TestClient) -> None:  # type: ignore[type-arg]
    result = await _apply(client, DISPLAY + "---\n" + PING)
    assert result["status"] == 200
    assert {k["kind"] for k in result["created"]} == {"EventDisplay", "PingSource"}
    again = await _apply(client, PING)
    assert [k["name"] for k in again["unchanged"]] == ["beat"]

    listed = await (await client.get("/api/v1/resources/pingsources")).json()
    (item,) = listed["items"]
    assert item["spec"]["schedule"] == "* * * * *"
    assert item["status"]["conditions"][0] == {
        "type": "Ready",
        "status": "True",
        "reason": "",
        "message": "",
    }
    one = await client.get("/api/v1/resources/PingSource/default/beat")
    assert one.status == 200

    # The display is still referenced by the PingSource: deleting it is a conflict.
    conflict = await client.delete("/api/v1/resources/eventdisplay/default/display")
    assert conflict.status == 409
    assert (await client.delete("/api/v1/resources/pingsource/default/beat")).status == 200
    assert (await client.get("/api/v1/resources/pingsource/default/beat")).status == 404


async def test_invalid_resources_get_422_with_located_problems(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    result = await _apply(client, PING.replace("schedule", "schedul"))
    assert result["status"] == 422
    texts = [p["text"] for p in result["problems"]]
    assert (
        "request:5: PingSource beat: spec.schedul: unknown field `schedul` (did you mean "
        "`schedule`?)" in texts
    )
    missing_ref = await _apply(client, PING)
    assert missing_ref["status"] == 422
    assert missing_ref["problems"][0]["field"] == "spec.sink.ref"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        pytest.param("GET", "/api/v1/resources/gizmos", {}, 404, id="unknown-kind"),
        pytest.param("GET", "/api/v1/resources/broker/default/none", {}, 404, id="unknown-name"),
        pytest.param(
            "POST",
            "/api/v1/resources",
            {"data": "x", "headers": {"Content-Type": "text/plain"}},
            415,
            id="wrong-media-type",
        ),
        pytest.param(
            "POST",
            "/api/v1/resources",
            {"data": b"\xff\xfe", "headers": {"Content-Type": "application/yaml"}},
            400,
            id="not-utf8",
        ),
        pytest.param(
            "POST",
            "/api/v1/resources",
            {"data": "", "headers": {"Content-Type": "application/yaml"}},
            422,
            id="empty",
        ),
    ],
)
async def test_bad_requests_get_clear_errors(
    client: TestClient,  # type: ignore[type-arg]
    method: str,
    path: str,
    kwargs: dict,  # type: ignore[type-arg]
    status: int,
) -> None:
    response = await client.request(method, path, **kwargs)
    assert response.status == status
    assert (await response.json())["error"]


async def test_token_required_when_configured() -> None:
    runtime = Runtime()
    async with TestClient(TestServer(create_app(runtime, token="s3cret"))) as client:
        assert (await client.get("/api/v1/status")).status == 401
        bad = await client.get("/api/v1/status", headers={"Authorization": "Bearer nope"})
        assert bad.status == 401
        assert bad.headers["WWW-Authenticate"].startswith("Bearer")
        good = await client.get("/api/v1/status", headers={"Authorization": "Bearer s3cret"})
        assert good.status == 200
        assert (await good.json())["version"]
    await runtime.close()


async def test_broker_ingress_token(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("HW_TEST_INGRESS_TOKEN", "t0ken")
    runtime = Runtime()
    await runtime.apply_text(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: locked\n"
        "  annotations: {headwater.dev/ingress-token: '${HW_TEST_INGRESS_TOKEN}'}\n---\n"
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: open}\n",
        "b.yaml",
    )
    app = create_app(runtime)
    add_ingress(app, runtime)
    event = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
    async with TestClient(TestServer(app)) as client:
        assert (await client.post("/default/locked", headers=event)).status == 401
        wrong = {**event, "Authorization": "Bearer nope"}
        assert (await client.post("/default/locked", headers=wrong)).status == 401
        right = {**event, "Authorization": "Bearer t0ken"}
        assert (await client.post("/default/locked", headers=right)).status == 202
        assert (await client.post("/default/open", headers=event)).status == 202
    await runtime.close()

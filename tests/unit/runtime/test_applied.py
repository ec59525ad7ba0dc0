"""Resources applied through the API: kept in the state store, ownership, resourceVersion."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from headwater.api import create_app
from headwater.resources import LoadResult, collect_text
from headwater.runtime import Runtime
from headwater.runtime.applied import RESOURCES_BUCKET, OwnedByFile
from headwater.state import MemoryStore, SqliteStore

BROKER = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
"""

DISPLAY = """\
apiVersion: sinks.headwater.dev/v1alpha1
kind: EventDisplay
metadata: {name: display}
"""

TRIGGER = """\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: hot
  annotations: {headwater.dev/ingress-token: "${HOT_TOKEN}"}
spec:
  broker: default
  subscriber:
    ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: EventDisplay, name: display}
"""


async def test_what_the_api_applied_runs_again_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOT_TOKEN", "s3cret")
    runtime = Runtime(state=await SqliteStore.open(tmp_path / "state.db"))
    await runtime.start(collect_text(BROKER + "---\n" + DISPLAY, "mesh.yaml"))
    await runtime.apply_text(TRIGGER, "hot.yaml")
    stored = await (await runtime.state.bucket(RESOURCES_BUCKET)).get("Trigger/default/hot")
    assert stored is not None
    value = orjson.loads(stored.value)
    # As written: the secret from the environment is not kept, its reference is.
    assert value["document"]["metadata"]["annotations"] == {
        "headwater.dev/ingress-token": "${HOT_TOKEN}"
    }
    assert b"s3cret" not in stored.value
    assert (value["file"], value["line"]) == ("hot.yaml", 1)
    await runtime.close()

    monkeypatch.setenv("HOT_TOKEN", "rotated")
    runtime = Runtime(state=await SqliteStore.open(tmp_path / "state.db"))
    try:
        await runtime.start(collect_text(BROKER + "---\n" + DISPLAY, "mesh.yaml"))
        trigger = runtime.get(("Trigger", "default", "hot"))
        assert trigger is not None
        assert trigger.metadata.annotations["headwater.dev/ingress-token"] == "rotated"
        origin = runtime.origin(("Trigger", "default", "hot"))
        assert origin is not None and (origin.source, origin.file) == ("api", "hot.yaml")
        assert runtime.status(("Trigger", "default", "hot"))["conditions"][0]["status"] == "True"
    finally:
        await runtime.close()


async def test_reapplying_the_same_document_keeps_its_revision() -> None:
    runtime = Runtime()
    try:
        await runtime.start(LoadResult())
        await runtime.apply_text(BROKER, "b.yaml")
        first = runtime.origin(("Broker", "default", "default"))
        result = await runtime.apply_text(BROKER, "b.yaml")
        assert result.unchanged == [("Broker", "default", "default")]
        assert runtime.origin(("Broker", "default", "default")) == first
    finally:
        await runtime.close()


async def test_a_file_owned_resource_refuses_the_api_and_nothing_is_stored() -> None:
    state = MemoryStore()
    runtime = Runtime(state=state)
    try:
        await runtime.start(collect_text(BROKER, "mesh.yaml"))
        with pytest.raises(OwnedByFile, match=r"edit mesh\.yaml:1 instead"):
            await runtime.apply_text(BROKER.replace("default}", "default, labels: {a: b}}"), "x")
        with pytest.raises(OwnedByFile, match="cannot delete Broker default/default"):
            await runtime.delete_applied([("Broker", "default", "default")])
        assert await (await state.bucket(RESOURCES_BUCKET)).keys() == []
    finally:
        await runtime.close()


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    runtime = Runtime()
    await runtime.start(collect_text(DISPLAY, "mesh.yaml"))
    async with TestClient(TestServer(create_app(runtime))) as client:
        yield client
    await runtime.close()


async def _send(
    client: TestClient,  # type: ignore[type-arg]
    method: str,
    path: str,
    text: str,
) -> tuple[int, dict]:  # type: ignore[type-arg]
    response = await client.request(
        method, path, data=text, headers={"Content-Type": "application/yaml"}
    )
    return response.status, await response.json()


async def test_put_replaces_only_the_version_it_read(client: TestClient) -> None:  # type: ignore[type-arg]
    path = "/api/v1/resources/broker/default/default"
    assert (await _send(client, "POST", "/api/v1/resources", BROKER))[0] == 200
    current = await (await client.get(path)).json()
    version = current["metadata"]["resourceVersion"]
    assert current["status"]["origin"] == {
        "source": "api",
        "file": "request",
        "line": 1,
        "resourceVersion": version,
        "applied": current["status"]["origin"]["applied"],
    }
    changed = BROKER.replace("{name: default}", f"{{name: default, resourceVersion: '{version}'}}")
    status, body = await _send(client, "PUT", path, changed + "spec: {delivery: {retry: 2}}\n")
    assert status == 200 and body["updated"] == [
        {"kind": "Broker", "namespace": "default", "name": "default"}
    ]
    status, body = await _send(client, "PUT", path, changed)  # the version it read is gone
    assert status == 409
    assert "Broker/default/default was changed meanwhile" in body["error"]
    assert "read it again" in body["error"]
    now = await (await client.get(path)).json()
    assert now["spec"]["delivery"] == {"retry": 2}
    assert int(now["metadata"]["resourceVersion"]) > int(version)


async def test_put_answers_clearly_for_what_it_cannot_do(client: TestClient) -> None:  # type: ignore[type-arg]
    missing = BROKER.replace("name: default", "name: none")
    status, body = await _send(client, "PUT", "/api/v1/resources/broker/default/none", missing)
    assert status == 404 and "create it with POST /api/v1/resources" in body["error"]
    await _send(client, "POST", "/api/v1/resources", BROKER)
    status, body = await _send(
        client, "PUT", "/api/v1/resources/broker/default/default", BROKER + "---\n" + DISPLAY
    )
    assert status == 422 and "the body must be Broker/default/default alone" in str(body)
    status, body = await _send(
        client, "PUT", "/api/v1/resources/eventdisplay/default/display", DISPLAY
    )
    assert status == 409 and "defined by file mesh.yaml:1" in body["error"]


async def test_every_yaml_scalar_is_kept_and_loads_again(tmp_path: Path) -> None:
    """Floats, integers, booleans and timestamps as YAML writes them (ruamel's own types)."""
    source = """\
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttSource
metadata: {name: m, creationTimestamp: 2026-01-01T00:00:00Z}
spec:
  broker: mqtt://127.0.0.1:9
  topics: [{filter: "a/#", qos: 1}]
  maxBackoff: 1.5
  keepAlive: 30
  sink: {uri: "http://127.0.0.1:9/"}
"""
    runtime = Runtime(state=await SqliteStore.open(tmp_path / "state.db"))
    await runtime.start(LoadResult())
    await runtime.apply_text(source, "m.yaml")
    before = runtime.get(("MqttSource", "default", "m"))
    await runtime.close()
    runtime = Runtime(state=await SqliteStore.open(tmp_path / "state.db"))
    try:
        await runtime.start(LoadResult())
        after = runtime.get(("MqttSource", "default", "m"))
        assert before is not None and after is not None
        assert after.spec == before.spec  # type: ignore[attr-defined]
        # A YAML timestamp is kept as its RFC 3339 text (Kubernetes' own form of it).
        assert after.metadata.creation_timestamp == "2026-01-01T00:00:00+00:00"
    finally:
        await runtime.close()

"""The HttpSink kind: headers, a token from the environment, content modes and TLS."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from headwater.cloudevents import CloudEvent
from headwater.eventing import DeliveryError
from headwater.resources import ConfigError, load_text
from headwater.runtime import Runtime
from tests.certs import self_signed
from tests.helpers import Receiver

EVENT = CloudEvent(
    {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "subject": "x"},
    {"v": 1},
)


def sink_yaml(uri: str, extra: str = "") -> str:
    return (
        "apiVersion: sinks.headwater.dev/v1alpha1\nkind: HttpSink\nmetadata: {name: cloud}\n"
        f"spec:\n  uri: {uri}\n{extra}"
    )


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    runtime = Runtime()
    yield runtime
    await runtime.close()


def component(runtime: Runtime) -> Any:
    return runtime.reconciler.component(("HttpSink", "default", "cloud"))


async def test_token_from_env_headers_and_structured_mode(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUD_TOKEN", "s3cret-token")
    async with Receiver.serving() as receiver:
        extra = "  tokenEnv: CLOUD_TOKEN\n  headers: {X-Site: greenhouse}\n  format: json\n"
        await runtime.apply_text(sink_yaml(receiver.url, extra), "sink.yaml")
        assert await component(runtime).sink.deliver(EVENT) is None
    headers, body = receiver.requests[0].headers, receiver.requests[0].body
    assert headers["Authorization"] == "Bearer s3cret-token"
    assert headers["X-Site"] == "greenhouse"
    assert headers["Content-Type"] == "application/cloudevents+json"
    assert b'"id":"1"' in body
    status = runtime.status(("HttpSink", "default", "cloud"))
    assert "s3cret-token" not in repr(status)
    assert "s3cret-token" not in repr(runtime.get(("HttpSink", "default", "cloud")))


async def test_binary_mode_is_the_default(runtime: Runtime) -> None:
    async with Receiver.serving() as receiver:
        await runtime.apply_text(sink_yaml(receiver.url), "sink.yaml")
        await component(runtime).sink.deliver(EVENT)
    headers = receiver.requests[0].headers
    assert headers["ce-id"] == "1" and "Authorization" not in headers


async def test_missing_token_variable_keeps_the_sink_not_ready(runtime: Runtime) -> None:
    await runtime.apply_text(
        sink_yaml("http://127.0.0.1:9/", "  tokenEnv: HEADWATER_TEST_UNSET_VARIABLE\n"), "s.yaml"
    )
    assert component(runtime) is None
    (condition,) = runtime.status(("HttpSink", "default", "cloud"))["conditions"]
    assert condition["status"] == "False"
    assert "HEADWATER_TEST_UNSET_VARIABLE is not set" in condition["message"]


def test_credentials_in_headers_are_refused() -> None:
    with pytest.raises(ConfigError, match="tokenEnv"):
        load_text(sink_yaml("http://x/", "  headers: {Authorization: Bearer abc}\n"), "s.yaml")


async def test_tls_with_a_private_ca_and_without(runtime: Runtime, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with Receiver.serving(ssl_context=context) as receiver:
        url = receiver.url
        assert url.startswith("https://")
        await runtime.apply_text(sink_yaml(url), "s.yaml")
        with pytest.raises(DeliveryError) as untrusted:
            await component(runtime).sink.deliver(EVENT)
        assert untrusted.value.retryable and "certificate" in untrusted.value.reason.lower()

        await runtime.apply_text(sink_yaml(url, f"  tls: {{caFile: {cert}}}\n"), "s.yaml")
        assert await component(runtime).sink.deliver(EVENT) is None

        await runtime.apply_text(sink_yaml(url, "  tls: {insecureSkipVerify: true}\n"), "s.yaml")
        assert await component(runtime).sink.deliver(EVENT) is None
    assert len(receiver.requests) == 2


async def test_a_trigger_delivers_to_the_kind_by_ref(runtime: Runtime) -> None:
    async with Receiver.serving() as receiver:
        mesh = (
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default}\n---\n"
            + sink_yaml(receiver.url)
            + "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: up}\n"
            "spec:\n  broker: default\n  subscriber:\n"
            "    ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: HttpSink, name: cloud}\n"
        )
        await runtime.apply_text(mesh, "mesh.yaml")
        await runtime.broker("default", "default").accept([EVENT])
        (event,) = await receiver.wait_for(1)
    assert event.id == "1"


async def test_mutual_tls_with_a_client_certificate(runtime: Runtime, tmp_path: Path) -> None:
    server_dir, client_dir = tmp_path / "server", tmp_path / "client"
    server_dir.mkdir()
    client_dir.mkdir()
    server_cert, server_key = self_signed(server_dir)
    client_cert, client_key = self_signed(client_dir)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_cert, server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client_cert)
    async with Receiver.serving(ssl_context=context) as receiver:
        url = receiver.url
        await runtime.apply_text(sink_yaml(url, f"  tls: {{caFile: {server_cert}}}\n"), "s.yaml")
        with pytest.raises(DeliveryError):  # no client certificate: the handshake fails
            await component(runtime).sink.deliver(EVENT)
        tls = f"  tls: {{caFile: {server_cert}, certFile: {client_cert}, keyFile: {client_key}}}\n"
        await runtime.apply_text(sink_yaml(url, tls), "s.yaml")
        assert await component(runtime).sink.deliver(EVENT) is None
    assert len(receiver.requests) == 1

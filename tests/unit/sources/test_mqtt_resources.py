"""MQTT resources: valid YAML loads, invalid mappings and settings fail at apply time."""

from __future__ import annotations

import textwrap

import pytest

from headwater.resources import ConfigError, load_text
from headwater.resources.mqtt import MqttBrokerSource, MqttSink, MqttSource, parse_broker_url

SINK = "  sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}\n"


def load(text: str) -> object:
    (loaded,) = load_text(textwrap.dedent(text), "r.yaml")
    return loaded.resource


def problems(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(textwrap.dedent(text), "r.yaml")
    return str(info.value)


def test_broker_source_loads_with_defaults() -> None:
    r = load(
        "apiVersion: sources.headwater.dev/v1alpha1\nkind: MqttBrokerSource\n"
        "metadata: {name: devices}\nspec:\n" + SINK
    )
    assert isinstance(r, MqttBrokerSource)
    assert r.spec.topics == ["#"]
    assert r.spec.listeners[0].port == 1883
    assert r.spec.mapping.compile().topic_filter == "#"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            "  mapping: {topicPattern: 'a/{id}'}\n", "r.yaml:6", id="reserved-capture-line"
        ),
        pytest.param("  mapping: {type: 'x.{nope}'}\n", "unknown variable {nope}", id="template"),
        pytest.param("  mapping: {extensions: {t: 'a[['}}\n", "invalid JMESPath", id="jmespath"),
        pytest.param("  topics: ['a/#/b']\n", "topic filter 'a/#/b'", id="filter"),
        pytest.param("  listeners: [{port: 1, tls: {}}]\n", "certFile", id="tls"),
        pytest.param("  mapping: {tpye: x}\n", "tpye", id="typo"),
    ],
)
def test_broker_source_rejects(spec: str, expected: str) -> None:
    text = (
        "apiVersion: sources.headwater.dev/v1alpha1\nkind: MqttBrokerSource\n"
        "metadata: {name: devices}\nspec:\n" + SINK + spec
    )
    assert expected in problems(text)


def test_mqtt_source() -> None:
    r = load(
        "apiVersion: sources.headwater.dev/v1alpha1\nkind: MqttSource\nmetadata: {name: ext}\n"
        "spec:\n  broker: mqtts://user@broker.example:8883\n"
        "  topics: [{filter: '$share/hw/sensors/#', qos: 2}]\n" + SINK
    )
    assert isinstance(r, MqttSource)
    assert r.spec.topics[0].qos == 2
    assert parse_broker_url(r.spec.broker) == (True, "broker.example", 8883, "user", None)
    assert parse_broker_url("mqtt://h") == (False, "h", 1883, None, None)
    bad = (
        "apiVersion: sources.headwater.dev/v1alpha1\nkind: MqttSource\nmetadata: {name: ext}\n"
        "spec:\n  broker: http://x\n  topics: [{filter: a}]\n" + SINK
    )
    assert "broker address" in problems(bad)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("  topic: 'd/{subject}/c'\n", None, id="ok"),
        pytest.param("  topic: 'd/{ext.room}/c'\n", None, id="extension"),
        pytest.param("  topic: 'd/+/c'\n", "wildcards", id="wildcard"),
        pytest.param("  topic: 'd/{data}'\n", "unknown variable {data}", id="variable"),
        pytest.param(
            "  topic: t\n  protocolVersion: 4\n", "only `mode: structured`", id="311-binary"
        ),
        pytest.param("  topic: t\n  clientId: x\n", "external `broker` only", id="embedded"),
    ],
)
def test_mqtt_sink(spec: str, expected: str | None) -> None:
    text = "apiVersion: sinks.headwater.dev/v1alpha1\nkind: MqttSink\nmetadata: {name: s}\nspec:\n"
    if expected is None:
        assert isinstance(load(text + spec), MqttSink)
    else:
        assert expected in problems(text + spec)

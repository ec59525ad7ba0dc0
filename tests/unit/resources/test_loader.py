"""The resource loader: Knative YAML loads unchanged; every mistake is located."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from headwater.resources import (
    ADDRESSABLE_KINDS,
    KINDS,
    Broker,
    ConfigError,
    Trigger,
    check_references,
    load_paths,
    load_text,
)

KNATIVE_BROKER_AND_TRIGGER = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: greenhouse
  annotations:
    eventing.knative.dev/broker.class: MTChannelBasedBroker
  uid: 5f8c1d2e-0000-4000-8000-000000000000
  resourceVersion: "1234"
  generation: 1
  creationTimestamp: "2024-01-01T00:00:00Z"
spec:
  delivery:
    retry: 5
    backoffPolicy: exponential
    backoffDelay: PT0.2S
    deadLetterSink:
      uri: http://dls.example.com/
status:
  conditions:
    - type: Ready
      status: "True"
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: hot
  namespace: greenhouse
spec:
  broker: default
  filter:
    attributes:
      type: dev.headwater.telemetry
      source: ""
  subscriber:
    uri: http://display.example.com/
  delivery:
    timeout: PT10S
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(textwrap.dedent(text), "r.yaml")
    return [str(p) for p in info.value.problems]


def test_knative_yaml_loads_unchanged() -> None:
    loaded = load_text(KNATIVE_BROKER_AND_TRIGGER, "k.yaml")
    broker, trigger = (item.resource for item in loaded)
    assert isinstance(broker, Broker) and isinstance(trigger, Trigger)
    assert broker.key == ("Broker", "greenhouse", "default")
    assert broker.spec.delivery is not None
    assert broker.spec.delivery.backoff_delay == "PT0.2S"
    assert trigger.spec.filter is not None
    assert trigger.spec.filter.attributes == {"type": "dev.headwater.telemetry", "source": ""}
    assert [item.line for item in loaded] == [1, 24]
    check_references(loaded)


def test_json_arrays_and_kubectl_lists_load() -> None:
    broker = (
        '{"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": "%s"}}'
    )
    as_array = load_text(f"[{broker % 'a'}, {broker % 'b'}]")
    assert [i.resource.name for i in as_array] == ["a", "b"]
    as_list = load_text(f'{{"apiVersion": "v1", "kind": "List", "items": [{broker % "c"}]}}')
    assert [i.resource.name for i in as_list] == ["c"]


def test_namespace_defaults_to_default() -> None:
    (item,) = load_text("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n")
    assert item.resource.namespace == "default"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Broker
            metadata: {name: b}
            spec:
              delivery:
                backofDelay: PT1S
            """,
            "r.yaml:6: Broker b: spec.delivery.backofDelay: unknown field `backofDelay` "
            "(did you mean `backoffDelay`?)",
            id="unknown-field-with-suggestion",
        ),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Trigger
            metadata: {name: t}
            spec:
              broker: b
            """,
            "r.yaml:4: Trigger t: spec.subscriber: required field is missing",
            id="missing-required-field",
        ),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Broker
            metadata: {name: b}
            spec:
              delivery:
                timeout: 10s
            """,
            "r.yaml:6: Broker b: spec.delivery.timeout: '10s' is not an ISO 8601 duration "
            "(e.g. PT0.2S, PT10S, PT1M)",
            id="bad-duration",
        ),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Broker
            metadata: {name: b}
            spec:
              delivery:
                retry: -1
            """,
            "r.yaml:6: Broker b: spec.delivery.retry: Input should be greater than or equal to 0",
            id="negative-retry",
        ),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Broker
            metadata: {name: b}
            spec:
              delivery:
                backoffPolicy: quadratic
            """,
            "r.yaml:6: Broker b: spec.delivery.backoffPolicy: Input should be 'linear' or "
            "'exponential'",
            id="bad-enum",
        ),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Broker
            metadata: {name: Bad_Name}
            """,
            "r.yaml:3: Broker Bad_Name: metadata.name: 'Bad_Name' is not a valid name: use "
            "lower-case letters, digits, '-' and '.', starting and ending with a letter or digit",
            id="bad-name",
        ),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1beta1
            kind: Broker
            metadata: {name: b}
            """,
            "r.yaml:1: Broker b: apiVersion: Broker has apiVersion eventing.knative.dev/v1, "
            "not 'eventing.knative.dev/v1beta1'",
            id="wrong-api-version",
        ),
        pytest.param(
            """\
            apiVersion: example.com/v1
            kind: Gizmo
            metadata: {name: g}
            """,
            f"r.yaml:2: kind: unknown kind 'Gizmo'; Headwater knows {', '.join(sorted(KINDS))}",
            id="unknown-kind",
        ),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Trigger
            metadata: {name: t}
            spec:
              broker: b
              filters:
                - exact: {type: a}
                  prefix: {type: b}
              subscriber: {uri: http://x/}
            """,
            "r.yaml:7: Trigger t: spec.filters[0]: a filter needs exactly one dialect of exact, "
            "prefix, suffix, all, any, not, cesql; found 2",
            id="two-dialects-in-one-filter",
        ),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Trigger
            metadata: {name: t}
            spec:
              broker: b
              subscriber: {}
            """,
            "r.yaml:6: Trigger t: spec.subscriber: a destination needs `ref` or `uri` (or both)",
            id="empty-destination",
        ),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Trigger
            metadata: {name: t}
            spec:
              broker: b
              subscriber: {uri: /relative}
            """,
            "r.yaml:6: Trigger t: spec.subscriber: `uri` '/relative' must be absolute when "
            "there is no `ref`",
            id="relative-uri-without-ref",
        ),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Trigger
            metadata:
              name: t
              annotations:
                headwater.dev/start: yesterday
            spec:
              broker: b
              subscriber: {uri: http://x/}
            """,
            "r.yaml:1: Trigger t: start 'yesterday' must be earliest, latest, offset:N or "
            "time:<RFC 3339 timestamp>",
            id="bad-start-annotation",
        ),
        pytest.param(
            """\
            apiVersion: sources.knative.dev/v1
            kind: PingSource
            metadata: {name: p}
            spec:
              schedule: "every minute"
              sink: {uri: http://x/}
            """,
            "r.yaml:5: PingSource p: spec.schedule: 'every minute' is not a 5-field cron "
            "schedule (e.g. '*/1 * * * *')",
            id="bad-cron",
        ),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Broker
            metadata: {name: b
            """,
            "r.yaml:4: invalid YAML: expected ',' or '}', but got '<stream end>'",
            id="invalid-yaml",
        ),
        pytest.param(
            "- just\n- a list\n",
            "r.yaml:1: a resource must be a YAML mapping",
            id="not-a-mapping",
        ),
        pytest.param("42\n", "r.yaml:1: a resource must be a YAML mapping", id="scalar"),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Broker
            metadata: {name: b}
            ---
            apiVersion: eventing.knative.dev/v1
            kind: Broker
            metadata: {name: b}
            """,
            "r.yaml:5: Broker b: defined twice; first at r.yaml:1",
            id="duplicate",
        ),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Trigger
            metadata: {name: t}
            spec:
              broker: b
              subscriber:
                uri: ${HEADWATER_TEST_UNSET_VARIABLE}/path
            """,
            "r.yaml:7: Trigger t: spec.subscriber.uri: environment variable "
            "HEADWATER_TEST_UNSET_VARIABLE is not set",
            id="unset-env-var",
        ),
    ],
)
def test_config_errors_name_file_line_and_field(text: str, expected: str) -> None:
    assert expected in _problems(text)


def test_all_problems_are_reported_at_once() -> None:
    problems = _problems(
        """\
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {name: a}
        spec: {delivery: {retrys: 1}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {name: b}
        spec: {delivery: {timeout: soon}}
        """
    )
    assert len(problems) == 2


def test_env_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HW_SINK", "http://sink.example:8080")
    (item,) = load_text(
        textwrap.dedent(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Trigger
            metadata: {name: t}
            spec:
              broker: b
              subscriber: {uri: "${HW_SINK}/in?x=$${literal}&y=${HW_UNSET:-dflt}"}
            """
        )
    )
    assert isinstance(item.resource, Trigger)
    assert item.resource.spec.subscriber.uri == "http://sink.example:8080/in?x=${literal}&y=dflt"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Trigger
            metadata: {name: t}
            spec:
              broker: missing
              subscriber: {uri: http://x/}
            """,
            "r.yaml:1: Trigger t: spec.broker: no Broker 'missing' in namespace 'default'",
            id="trigger-broker",
        ),
        pytest.param(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Broker
            metadata: {name: b}
            spec:
              delivery:
                deadLetterSink:
                  ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: dls}
            """,
            "r.yaml:1: Broker b: spec.delivery.deadLetterSink.ref.kind: Headwater cannot "
            f"address a Service; use one of {', '.join(sorted(ADDRESSABLE_KINDS))}, or a `uri`",
            id="unaddressable-kind",
        ),
        pytest.param(
            """\
            apiVersion: messaging.knative.dev/v1
            kind: Subscription
            metadata: {name: s}
            spec:
              channel: {apiVersion: messaging.knative.dev/v1, kind: Channel, name: nope}
              subscriber:
                ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: EventDisplay, name: d}
            """,
            "r.yaml:1: Subscription s: spec.channel: no Channel 'nope' in namespace 'default'",
            id="subscription-channel",
        ),
    ],
)
def test_reference_errors(text: str, expected: str) -> None:
    loaded = load_text(textwrap.dedent(text), "r.yaml")
    with pytest.raises(ConfigError) as info:
        check_references(loaded)
    assert expected in [str(p) for p in info.value.problems]


def test_load_paths_reads_directories_and_reports_missing(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(KNATIVE_BROKER_AND_TRIGGER)
    (tmp_path / "notes.txt").write_text("not yaml")
    assert len(load_paths([tmp_path])) == 2
    with pytest.raises(ConfigError, match="no such file or directory"):
        load_paths([tmp_path / "missing.yaml"])


MISTAKES = """\
apiVersion: eventing.knative.dev/v1
kind: Triger
metadata: {name: typo}
spec:
  broker: default
  subscriber: {uri: http://x/}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
spec: {delivery: {retrys: 1}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: hot}
spec:
  broker: defualt
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: cold}
spec:
  broker: defualt
  subscriber: {uri: http://x/}
"""


def test_schema_fields_and_references_come_in_one_report_with_suggestions() -> None:
    with pytest.raises(ConfigError) as info:
        load_text(MISTAKES, "mesh.yaml", known=[])
    assert [str(p) for p in info.value.problems] == [
        "mesh.yaml:2: kind: unknown kind 'Triger' (did you mean `Trigger`?); Headwater knows "
        + ", ".join(sorted(KINDS)),
        "mesh.yaml:11: Broker default: spec.delivery.retrys: unknown field `retrys` "
        "(did you mean `retry`?)",
        "mesh.yaml:16: Trigger hot: spec.subscriber: required field is missing",
        "mesh.yaml:19: Trigger cold: spec.broker: no Broker 'defualt' in namespace 'default' "
        "(did you mean `default`?)",
    ]


def test_a_resource_with_problems_of_its_own_still_counts_for_references() -> None:
    """The Broker has a typo and its Trigger refers to it: one problem, not two."""
    text = MISTAKES.split("---\n")[1] + "---\n" + MISTAKES.split("---\n")[3]
    with pytest.raises(ConfigError) as info:
        load_text(text.replace("defualt", "default"), "mesh.yaml", known=[])
    assert len(info.value.problems) == 1
    assert "retrys" in str(info.value.problems[0])


def test_a_misspelt_kind_counts_as_the_kind_it_means() -> None:
    text = MISTAKES.split("---\n")[0].replace("kind: Triger", "kind: Brokr")
    text += "---\n" + MISTAKES.split("---\n")[3].replace("defualt", "typo")
    with pytest.raises(ConfigError) as info:
        load_text(text, "mesh.yaml", known=[])
    assert [p.message.split(";")[0] for p in info.value.problems] == [
        "unknown kind 'Brokr' (did you mean `Broker`?)"
    ]


def test_knative_fields_headwater_ignores_load_with_a_warning() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata:
          name: default
          annotations: {eventing.knative.dev/broker.class: Kafka}
        spec:
          config: {apiVersion: v1, kind: ConfigMap, name: kafka-broker-config}
          delivery:
            deadLetterSink: {uri: "https://dls.example/", CACerts: "-----BEGIN..."}
        """
    )
    [item] = load_text(text, "b.yaml")
    assert [str(w) for w in item.warnings] == [
        "b.yaml:1: Broker default: spec.config: ignored: Knative points a Broker at the "
        "configuration of its implementation (a ConfigMap, a Kafka cluster); every Headwater "
        "Broker keeps its events in Headwater's own event log",
        "b.yaml:1: Broker default: metadata.annotations[eventing.knative.dev/broker.class]: "
        "ignored: Headwater has one Broker class (its durable event log), not Kafka",
        "b.yaml:1: Broker default: spec.delivery.deadLetterSink.CACerts: ignored: Headwater "
        "checks a `uri` destination's certificate against the system's CAs; for your own CA "
        "use an HttpSink with `tls.caFile`",
    ]
    [plain] = load_text(KNATIVE_BROKER_AND_TRIGGER.split("---")[1], "t.yaml")
    assert plain.warnings == ()
